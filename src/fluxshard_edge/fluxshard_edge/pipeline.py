"""Edge-side per-frame logic without ROS (paper Algorithm 1):

1. pause the background refresh;
2. extract motion blocks against the local state (LABs) and the proxy of the server's state
   (COBs), sorted by D x salience;
3. schedule: closed-form k* for edge and cloud, pick the higher effective accuracy;
4. local sparse inference on the top k_edge LABs (and opportunistic COB upload), or offload
   the top k_cloud COBs with the MV field;
5. update the proxy with exactly what was sent;
6. resume or restart the background refresh.

The node (``edge_node.py``) feeds frames in and publishes what comes out.
"""

from dataclasses import dataclass, field
from functools import partial
import math
import os
import time
from typing import Callable, Optional

import numpy as np

from fluxshard_edge.scheduler import (BandwidthEstimator, Decision, LatencyModel, PROFILES,
                                      Scheduler)
from fluxshard_edge.skip import SkipGate
from fluxshard_kernels import metrics, motion, proxy, salience
from fluxshard_kernels.blocks import block_dissimilarity, BlockGrid  # noqa: F401 (re-export)
from fluxshard_kernels.codec_mv import LARGE_AREA, object_roi, RoiMap
from fluxshard_kernels.profile import DeviceProfile, resolve_device


#: Local inference paths: the incremental engine, onnxruntime dense, or per frame the one
#: measured faster (``auto``, as the server's backend).
LOCAL_BACKENDS = ('auto', 'incremental', 'onnxruntime')
#: '' = the EA decides; 'edge' / 'cloud' pin the side; 'offline' computes every frame on the
#: robot and sends nothing (no server needed: Edge-only)
FORCE_STRATEGIES = ('', 'edge', 'cloud', 'offline')
#: ``overlap_local``: local inference beside the critical path ('auto': where it runs on CUDA)
OVERLAP_MODES = ('auto', 'always', 'never')
#: The local block search runs on a worker thread beside the proxy's where the process may use
#: more than one core (the same fields either way; tests switch it off to compare).
MOTION_THREAD = True


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS reports one)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _on_cuda(device: str) -> bool:
    return str(resolve_device(device)).startswith('cuda')


@dataclass(frozen=True)
class EdgeConfig:
    """Edge parameters (see config/edge.yaml for units and meaning)."""

    edge_id: str = 'edge0'
    block_size: int = 16
    tau: float = 10.0
    independent_px: float = 0.0
    mixed_px: float = motion.MIXED_PX
    codec: str = 'h264'
    quality: int = 90
    crf: int = 23
    max_crf: int = 30
    roi_qoffset: float = 0.2
    roi_large_qoffset: float = 0.0
    target_retention: float = 0.0
    probe_interval: int = 10
    send_motion: bool = False
    skip_target: float = 0.0
    skip_max: int = 2
    bridge_target: float = 0.9
    bridge_max: int = 2
    key_interval: int = 0
    motion: bool = True
    local_inference: bool = True
    task: str = 'detect'
    model_path: str = ''
    conf: float = 0.25
    lam: float = 10.0
    deadline_ms: float = 100.0
    bandwidth_mbps: float = 56.0
    edge_profile: str = 'xavier_nx'
    cloud_profile: str = 'rtx3080'
    accuracy_edge: float = 1.0
    accuracy_cloud: float = 1.0
    refresh_interval: int = 10
    use_salience: bool = True
    force_strategy: str = ''
    overlap_local: str = 'auto'
    fit_latency: bool = True
    task_allocation: bool = True
    profile_file: str = ''
    device: str = 'cpu'
    backend: str = 'auto'

    def __post_init__(self):
        if self.block_size not in (8, 16, 32):
            raise ValueError(f'block_size must be 8, 16 or 32, got {self.block_size}')
        if self.codec not in proxy.CODEC_NAMES:
            raise ValueError(f'codec must be one of {sorted(proxy.CODEC_NAMES)}, '
                             f'got {self.codec!r}')
        if not 1 <= self.quality <= 100:
            raise ValueError(f'quality must be in 1..100, got {self.quality}')
        if not 0 <= self.crf <= 51:
            raise ValueError(f'crf must be in 0..51, got {self.crf}')
        if not 0 <= self.max_crf <= 51:
            raise ValueError(f'max_crf must be in 0..51, got {self.max_crf}')
        if not 0 <= self.roi_qoffset <= 1:
            raise ValueError(f'roi_qoffset must be in 0..1, got {self.roi_qoffset}')
        if not 0 <= self.roi_large_qoffset <= 1:
            raise ValueError(f'roi_large_qoffset must be in 0..1, got {self.roi_large_qoffset}')
        if self.tau < 0:
            raise ValueError(f'tau must be >= 0, got {self.tau}')
        if not 0 <= self.target_retention <= 1:
            raise ValueError(f'target_retention must be in 0..1, got {self.target_retention}')
        if self.probe_interval < 1:
            raise ValueError(f'probe_interval must be >= 1, got {self.probe_interval}')
        if not 0 <= self.skip_target <= 1:
            raise ValueError(f'skip_target must be in 0..1, got {self.skip_target}')
        if self.skip_max < 0:
            raise ValueError(f'skip_max must be >= 0, got {self.skip_max}')
        if not 0 <= self.bridge_target <= 1:
            raise ValueError(f'bridge_target must be in 0..1, got {self.bridge_target}')
        if self.bridge_max < 0:
            raise ValueError(f'bridge_max must be >= 0, got {self.bridge_max}')
        for p in (self.edge_profile, self.cloud_profile):
            if p not in PROFILES:
                raise ValueError(f'unknown latency profile {p!r}; one of {sorted(PROFILES)}')
        if self.profile_file:
            try:
                DeviceProfile.load(self.profile_file)
            except OSError as e:
                raise ValueError(f'profile_file {self.profile_file!r}: {e.strerror}') from None
        if self.device not in ('cpu', 'cuda', 'auto') and not self.device.startswith('cuda:'):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got "
                             f"{self.device!r}")
        if self.backend not in LOCAL_BACKENDS:
            raise ValueError(f'backend must be one of {", ".join(LOCAL_BACKENDS)}, got '
                             f'{self.backend!r}')
        if self.force_strategy not in FORCE_STRATEGIES:
            raise ValueError("force_strategy must be '', 'edge', 'cloud' or 'offline'")
        if self.overlap_local not in OVERLAP_MODES:
            raise ValueError(f"overlap_local must be 'auto', 'always' or 'never', got "
                             f"{self.overlap_local!r}")
        if self.force_strategy == 'offline' and not self.local_inference:
            raise ValueError("force_strategy 'offline' needs local_inference")


@dataclass
class EdgeStep:
    """What one frame produced."""

    seq: int = 0
    update: Optional[proxy.ProxyUpdate] = None
    payload: bytes = b''
    dissimilarity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    digest: bytes = b''
    key: bool = False
    codec: int = 0
    quality: int = 0
    key_reason: str = ''
    sparse_inference_requested: bool = False
    decision: Optional[Decision] = None
    local_result: object = None
    #: per block (row-major): 0 hit (reused), 1 recomputed on the edge, 2 offloaded
    block_map: Optional[np.ndarray] = None
    hit_ratio: float = 1.0
    timings: dict = field(default_factory=dict)
    #: the dense local runtime served the frame without block motion (``_dense_wins``)
    motion_skipped: bool = False
    #: the local device was busy and waiting for it beats offloading: nothing was computed,
    #: sent or changed; the caller hands this frame (or a newer one) over once it is free
    deferred: bool = False
    #: overlapped local inference (``EdgePipeline.overlap``): the local computation of this
    #: frame, for the caller to run on the device's thread (it sets ``local_result``, then
    #: runs the background refresh step); ``local_eta_s``: its predicted duration
    local_job: Optional[Callable[[], float]] = None
    local_eta_s: float = 0.0
    #: not sent (``payload.skip_target``): ``local_result`` is the proxy frame's result moved
    #: by the block field; None while that result is on its way, then the pipeline's
    #: ``skip.result`` hands it over with ``skip_token``
    skipped: bool = False
    skip_token: int = 0
    #: bridged (``bridge_target``): the local device was busy with an earlier frame; this
    #: frame's result is that frame's result moved by the block field (``local_result``, or
    #: None until the device's job is done: ``bridge_done`` then hands it over with
    #: ``skip_token``)
    bridged: bool = False
    #: a local job's frame number, for ``bridge_done``
    job_frame: int = 0

    @property
    def sends(self) -> bool:
        return self.update is not None


class EdgePipeline:
    """Per-edge state: local incremental model and refresh, proxy of the server's reference,
    scheduler, batch sequence."""

    def __init__(self, config: EdgeConfig, model=None, profile: Optional[DeviceProfile] = None):
        self.config = config
        self.proxy: Optional[np.ndarray] = None
        self.seq = 0
        self.frames = 0
        self.last_key_seq = 0
        self._key_reason = 'first frame'
        self._prev_mv_proxy = None
        self._prev_mv_local = None
        self._pool = None  # the motion thread (_motion_pool)
        self.last_result = None  # latest Detections (local or server), for salience and ROI
        #: frames the server does not need are not sent (skip.py; ``skip_target`` > 0)
        self.skip = SkipGate(config.skip_target, config.skip_max)
        #: frames that arrive while the local device is busy get its frame's result moved
        #: (``bridge_target`` > 0; the same measured gate, calibrated on local results, and
        #: on the server's where it has not measured a gap yet: a faster start)
        self.bridge = SkipGate(config.bridge_target, config.bridge_max, prior=self.skip)
        self._device_frame = None  # (frame number, image) of the overlapped local job
        self.last_roi = None  # the RoiMap of the last H.264 payload (roi_qoffset > 0)
        self.cloud_available = True
        bw = BandwidthEstimator(config.bandwidth_mbps * 1e6 / 8)
        if profile is None and config.profile_file:
            profile = DeviceProfile.load(config.profile_file)
        seeds = [PROFILES[config.edge_profile], PROFILES[config.cloud_profile]]
        caps = [None, None]
        if profile is not None:  # measured seeds (the '_dense' names keep dense-only times)
            seeds = [(0.0, 0.0, r.dense_s) if name.endswith('_dense') else r.abc
                     for r, name in ((profile.edge, config.edge_profile),
                                     (profile.server, config.cloud_profile))]
            # never more than the dense runtime each side falls back to: onnxruntime here too
            # unless the local path is pinned to the engine (its own dense pass), the faster
            # of both paths on a server with model.backend auto
            caps = [profile.edge.engine_s if config.backend == 'incremental' else
                    min(profile.edge.engine_s, profile.edge.dense_s), profile.server.dense_s]
        self.profile = profile
        self.scheduler = Scheduler(LatencyModel(*seeds[0], cap=caps[0]),
                                   LatencyModel(*seeds[1], cap=caps[1]), bw,
                                   config.lam, config.accuracy_edge, config.accuracy_cloud)
        #: local inference runs beside the critical path (``overlap_local``; 'auto': where it
        #: runs on CUDA, a GPU beside the CPU front end)
        self.overlap = config.local_inference and (config.overlap_local == 'always' or (
            config.overlap_local == 'auto' and _on_cuda(config.device)))
        self.scheduler.overlap = self.overlap
        self.n_blocks = 0  # camera blocks of the last frame
        self.runner = self.refresh = None
        self.onnx = self.paths = None  # onnxruntime dense and the auto choice (local path)
        #: seconds a full step costs beside its local inference (block motion against the
        #: proxy and the local state, the decision, opportunistic uploads): what the engine's
        #: path costs and a dense-only step does not (the profile's edge overhead, then
        #: measured when ``fit_latency``)
        self.front_s = 0.0
        self.last_path = ''
        self._inter = None          # proxy.InterEncoder of CODEC_H264 payloads
        self._inter_at = (-1, None)  # (seq, (shape, crf)) of the stream's last unit
        self.crf = config.crf         # the payload's effective CRF (the link's; see _link_crf)
        self.last_decision_full = None  # the last decision of a full step (motion + EA)
        #: camera frame of the last full step, and between full steps (``_next_full_every``)
        self._last_full = 0
        self._full_every = self.FULL_EVERY
        self._camera_index: Optional[int] = None  # this step's camera frame (``step``)
        self._unit = None            # (EMA of an inter unit's bytes, at this CRF)
        self.model = model
        if config.local_inference:
            from fluxshard_kernels.incremental import IncrementalYOLO
            from fluxshard_kernels.refresh import Refresh
            from fluxshard_kernels.yolo import model as M
            if self.model is None:
                from fluxshard_kernels.profile import resolve_device
                self.model = M.load(config.task, config.model_path,
                                    resolve_device(config.device))
            self.runner = IncrementalYOLO(self.model, 16)
            self.refresh = Refresh(self.runner)
            self._dense_runtime(config, profile)
        #: the CRF floor from the results (QualityControl; target_retention > 0)
        self.quality = self._quality(config) if config.target_retention else None
        self._since_refresh = 0
        #: agreement of the engine's incremental results with its own dense refresh of the
        #: same frame (EMA, object F1 at IoU 0.5): the edge's accuracy A in the scheduler's EA
        self.edge_accuracy = 1.0
        self._local_det = None      # this frame's incremental result (None: not computed so)
        self._check = None          # the result the running refresh will be compared with
        self._refresh_seen = 0

    def _quality(self, config):
        """The CRF floor from the results (``target_retention`` > 0, h264 payloads): the
        references on the robot's dense runtime: its onnxruntime, its own session of the
        task's ONNX model when the local path has none, torch for a model_path that is not
        ONNX."""
        from fluxshard_edge.quality import QualityControl
        from fluxshard_kernels.profile import resolve_device
        detect = self.onnx
        if detect is None and config.model_path and not config.model_path.endswith('.onnx'):
            import torch
            from fluxshard_kernels.yolo import model as M
            from fluxshard_kernels.yolo.processing import letterbox
            model = self.model or M.load(config.task, config.model_path,
                                         resolve_device(config.device))
            dev = next(model.parameters()).device

            def detect(img):
                x, lb = letterbox(img, 640)
                with torch.no_grad():
                    raw = model(torch.from_numpy(x).to(dev))
                return model.decode(raw, lb, config.conf)
        elif detect is None:
            from fluxshard_kernels import data
            from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
            detect = OnnxYolo(config.model_path or str(data.model_path(config.task)),
                              config.conf, device=resolve_device(config.device))
        return QualityControl(detect, config.target_retention, config.crf,
                              max(config.crf, config.max_crf), config.probe_interval)

    def reconfigure(self, **changes):
        """Apply changed EdgeConfig fields from the next frame on (live parameters); the
        scheduler's coefficients and the bandwidth estimate follow. ValueError on a bad value
        (nothing changed)."""
        from dataclasses import replace
        cfg = replace(self.config, **changes)
        fixed = {'edge_id', 'block_size', 'local_inference', 'task', 'model_path',
                 'edge_profile', 'cloud_profile', 'profile_file', 'device',
                 'backend', 'target_retention', 'probe_interval', 'overlap_local'} & set(changes)
        if fixed:
            raise ValueError(f'{sorted(fixed)} cannot change while running')
        self.config = cfg
        s = self.scheduler
        s.lam, s.acc_e, s.acc_c = cfg.lam, cfg.accuracy_edge, cfg.accuracy_cloud
        if 'bandwidth_mbps' in changes:
            s.bw.bps = cfg.bandwidth_mbps * 1e6 / 8
        self.skip.configure(cfg.skip_target, cfg.skip_max)
        self.bridge.configure(cfg.bridge_target, cfg.bridge_max)
        if self.quality is not None and {'crf', 'max_crf'} & set(changes):
            self.quality.bounds(cfg.crf, max(cfg.crf, cfg.max_crf))

    def observe_server_result(self, seq: int, det) -> list:
        """The server's result for the batch ``seq`` (the payload quality's probes, the skip
        gate's calibration). Returns (token, result) of the skipped frames that waited for it."""
        if self.quality is not None:
            self.quality.observe(int(seq), det)
        return self.skip.result(int(seq), det)

    def compute_locally(self, frame: np.ndarray):
        """A dense local result for ``frame`` (an offloaded frame whose server went away)."""
        if self.runner is None or frame.shape[2] != 3:
            return None
        return self._local(frame, None, np.zeros(0, np.int64), False, dense_runtime=True)

    def request_resync(self, reason: str, failed_seq: Optional[int] = None) -> bool:
        """Make the next batch a key batch; False when a key after ``failed_seq`` was sent."""
        if failed_seq is not None and failed_seq < self.last_key_seq:
            return False
        self._key_reason = reason
        return True

    def close(self):
        if self.refresh is not None:
            self.refresh.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.quality is not None:
            self.quality.close()

    # -- per frame -------------------------------------------------------------------------------
    def step(self, frame: np.ndarray, codec_mvs: Optional[np.ndarray] = None,
             device_busy_s: float = 0.0, camera_index: Optional[int] = None) -> EdgeStep:
        """Run Algorithm 1 on one (H, W, C) uint8 frame; ``codec_mvs`` (H.264 motion vectors of
        this frame against the previous one) replace block matching when given.
        ``camera_index``: the frame's index in the camera's stream, counting the frames the
        edge did not take (a busy edge skips some): how long a dense-only stretch lasts is
        camera time (``_dense_wins``); without it the frames stepped count.

        ``device_busy_s`` > 0: the local device is still computing an earlier frame for about
        that long (``scheduler.overlap_local``: local inference runs beside the critical path).
        The engine's state is not touched: the frame is offloaded when the cloud's expected
        latency beats waiting for the device and computing it there (the same EA, the wait
        added to the edge's latency); otherwise the step is ``deferred`` and changes nothing.

        Raises:
            ValueError: frame not (H, W, 1|3) uint8.
        """
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (1, 3):
            raise ValueError(f'frame must be (H, W, 1|3) uint8, got {frame.shape} {frame.dtype}')
        cfg = self.config
        t = {'t0': time.perf_counter()}
        self._camera_index = camera_index
        busy = device_busy_s > 0 and self.runner is not None
        if busy and self.bridge.enabled:
            bridged = self._bridged(frame, t)
            if bridged is not None:
                return bridged
        if busy and (cfg.force_strategy in ('edge', 'offline') or not self.cloud_available):
            return self._deferred(t)  # only the device can serve it
        self.frames += 1
        self._codec_mvs = codec_mvs
        if not busy and self.refresh is not None and self.refresh.running:
            self.refresh.pause()                                            # step 1
        t['pause'] = time.perf_counter()
        grid = BlockGrid(frame.shape[0], frame.shape[1], cfg.block_size)
        self.n_blocks = grid.count
        if self._dense_wins(frame, device_busy_s if busy else 0.0):
            if busy:
                self.frames -= 1
                return self._deferred(t)
            return self._dense_step(frame, t)
        key = self._key_reason != ''
        if not key and self.proxy is not None and self.proxy.shape != frame.shape:
            key, self._key_reason = True, (f'frame size changed from {self.proxy.shape} '
                                           f'to {frame.shape}')
        if not key and cfg.key_interval and self.frames % cfg.key_interval == 0:
            key, self._key_reason = True, 'periodic key'
        self.crf = self._link_crf() if cfg.codec == 'h264' else cfg.crf
        if self.quality is not None and cfg.codec == 'h264' and frame.shape[2] == 3:
            self.crf = max(self.crf, min(self.quality.poll(), max(cfg.crf, cfg.max_crf)))
        if not key and cfg.codec == 'h264' and self._inter_at != (
                self.seq, (frame.shape, cfg.crf)):
            # an H.264 stream continues only from its own last unit at the same size and CRF
            key, self._key_reason = True, 'H.264 stream (re)starts'
        out = EdgeStep()
        # step 2: motion blocks against the proxy (COBs) and the local state (LABs); the two
        # searches are independent, so the local one runs on a second core where there is one
        local_ready = (not busy and self.runner is not None and self.runner.state is not None
                       and self.runner.state.shape == frame.shape and frame.shape[2] == 3)
        local = None
        if local_ready and not key and self._motion_pool() is not None:
            local = self._motion_pool().submit(self._field, frame, self.runner.state, grid,
                                               'local')
        if key:
            mv_c, d_c = None, np.full(grid.count, 255.0, np.float32)
        else:
            mv_c, d_c = self._motion(frame, self.proxy, grid, 'proxy')
            if self._may_skip(busy, frame) and self.skip.decide(
                    self.frames, mv_c, d_c, cfg.tau, grid, self.last_result):
                if local is not None:
                    local.result()  # not used (the local predictor stays as it was)
                return self._skipped(t, mv_c, d_c, grid)
        sal = self._salience(mv_c, grid)
        cobs = salience.rank_misses(d_c, cfg.tau, sal, extra=self._extra_misses(mv_c, False))
        labs, mv_l = np.zeros(0, np.int64), None
        if local_ready:
            mv_l, d_l = self._motion(frame, self.runner.state, grid, 'local', local)
            labs = salience.rank_misses(d_l, cfg.tau, sal, extra=self._extra_misses(mv_l, True))
            out.hit_ratio = float(np.mean(d_l < cfg.tau))
        else:
            out.hit_ratio = float(np.mean(d_c < cfg.tau))
        t['extract'] = time.perf_counter()
        # step 3: schedule
        self._learn_accuracy()
        # a local path without state runs its dense pass: all blocks; a busy device's LABs are
        # those of the last full step (its state is being advanced)
        last = self.last_decision_full
        n_edge = len(labs) if local_ready else (
            last.n_edge if busy and last is not None else grid.count)
        dec = self.scheduler.decide(n_edge, len(cobs), edge_available=local_ready or (
            self.runner is not None and frame.shape[2] == 3),
            cloud_available=self.cloud_available or key, adaptive=cfg.task_allocation,
            edge_wait_s=device_busy_s if busy else 0.0)
        offline = cfg.force_strategy == 'offline'
        if cfg.force_strategy and (cfg.force_strategy != 'cloud' or self.cloud_available
                                   or self.runner is None):
            dec.strategy = 'edge' if offline else cfg.force_strategy
        # a key batch initialises the server's proxy whichever side computes this frame: it
        # asks for inference when the cloud is faster, else it goes out beside local work (and
        # serves as the probe of an unreachable server)
        probe = key and self.runner is not None and frame.shape[2] == 3 and (
            not self.cloud_available or dec.strategy == 'edge') and not offline
        if offline:
            pass
        elif key and not probe:
            dec.strategy, dec.k_cloud = 'cloud', grid.count
        elif probe:
            dec.strategy = 'edge'
        if self.runner is None and not key:
            dec.strategy = 'cloud'
        if busy and dec.strategy == 'edge':
            self.frames -= 1  # as if the frame had not been taken
            return self._deferred(t, dec)
        out.decision = dec
        self._last_full = self._camera_now()
        self._full_every = self._next_full_every(dec)
        t['schedule'] = time.perf_counter()
        # step 4: execute
        send_idx, infer = None, False
        if not busy:  # a busy device's job sets it for its own frame
            self._local_det = None
        self.last_decision_full = dec
        if dec.strategy == 'edge':
            job = partial(self._compute_local, out, frame, mv_l, labs[:dec.k_edge],
                          local_ready, grid.count)
            if self.overlap:  # the caller runs it on the device; sends go out meanwhile
                out.local_job = job
                self._to_device(out, frame, grid, mv_l if local_ready else None)
                local_s = out.local_eta_s = self.scheduler.edge(
                    dec.k_edge if local_ready else grid.count)
            else:
                local_s = job(background=False)
            t['local'] = time.perf_counter()
            k_opp = self.scheduler.opportunistic_blocks(cfg.deadline_ms / 1e3, local_s,
                                                        len(cobs))
            if k_opp and self.cloud_available and not offline:
                send_idx = cobs[:k_opp]
            if probe:
                send_idx = np.arange(grid.count)
        else:
            send_idx = np.arange(grid.count) if key else cobs[:dec.k_cloud]
            infer = True
            t['local'] = time.perf_counter()
        out.block_map = np.zeros(grid.count, np.uint8)
        if dec.strategy == 'edge' and local_ready:
            out.block_map[labs[:dec.k_edge]] = 1
        if send_idx is not None:
            out.block_map[send_idx] = 2
        # step 5: proxy update with exactly what is sent
        if send_idx is not None and (len(send_idx) or infer):
            self._send(out, frame, grid, send_idx, mv_c, d_c, key, infer)
        t['send'] = time.perf_counter()
        # step 6: background refresh of the local state on this frame (a busy device, or this
        # frame's local job, runs it after the frame)
        if not busy and out.local_job is None:
            self._background(frame)
        t['end'] = time.perf_counter()
        if cfg.fit_latency and local_ready and dec.strategy == 'edge' and not busy:
            # what this full step cost beside its local inference (block motion, the
            # decision, opportunistic uploads): all of it is saved by a dense-only step
            front = (t['end'] - t['t0']) - (t['local'] - t['schedule'])
            self.front_s = front if self.front_s == 0.0 else 0.7 * self.front_s + 0.3 * front
        out.timings = {
            'extract_ms': 1e3 * (t['extract'] - t['pause']),
            'schedule_ms': 1e3 * (t['schedule'] - t['extract']),
            'local_ms': 1e3 * (t['local'] - t['schedule']),
            'encode_ms': 1e3 * (t['send'] - t['local']),
            'pause_wait_ms': 1e3 * (t['pause'] - t['t0']),
            'total_ms': 1e3 * (t['end'] - t['t0'])}
        return out

    def _compute_local(self, out: EdgeStep, frame, mv, labs, ready, n, background=True):
        """Step 4's local computation of ``frame`` into ``out`` (the LABs ``labs``; ``n``
        camera blocks), the latency model fitted to it; ``background``: then step 6 (an
        overlapped local job). Returns its seconds."""
        t0 = time.perf_counter()
        out.local_result = self._local(frame, mv, labs, ready)
        if ready and self.last_path == 'incremental':
            self._local_det = out.local_result
        local_s = time.perf_counter() - t0
        if self.config.fit_latency:
            dense = not ready or self.last_path == 'onnxruntime'
            self.scheduler.edge.observe(n if dense else len(labs), local_s, dense=dense)
        if background:
            out.timings['local_ms'] = 1e3 * local_s
            self._background(frame)
        return local_s

    def _may_skip(self, busy: bool, frame) -> bool:
        cfg = self.config
        # detect only: the node learns the server's boxes, not its masks or keypoints
        return (self.skip.enabled and not busy and self.cloud_available
                and cfg.task == 'detect' and cfg.force_strategy not in ('edge', 'offline')
                and self.proxy is not None and self.proxy.shape == frame.shape)

    def _skipped(self, t, mv, d, grid) -> EdgeStep:
        """A frame not sent (``skip``): the proxy frame's result moved by ``mv``."""
        s = self.scheduler
        out = EdgeStep(decision=Decision('skip', 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, s.bw.bps,
                                         s.bytes_per_block),
                       hit_ratio=float(np.mean(d < self.config.tau)), skipped=True)
        out.local_result, out.skip_token = self.skip.skip(mv, grid)
        out.block_map = np.zeros(grid.count, np.uint8)
        if self.refresh is not None and self.refresh.running:
            self.refresh.resume()  # paused at the start of the frame
        t['end'] = time.perf_counter()
        out.timings = {'extract_ms': 1e3 * (t['end'] - t['pause']),
                       'total_ms': 1e3 * (t['end'] - t['t0'])}
        return out

    def _bridged(self, frame, t) -> Optional[EdgeStep]:
        """A frame that arrives while the local device computes an earlier one (``busy``):
        that frame's result moved by the block field of this frame against it, where the
        bridge gate allows (moved local results measured at this distance in frames agree
        with the computed ones by ``bridge_target``, no change outside the objects, at most
        ``bridge_max`` in a row); None otherwise (the step goes on as without bridges)."""
        cfg, dev = self.config, self._device_frame
        if (dev is None or not cfg.motion or dev[1].shape != frame.shape
                or frame.shape[2] != 3 or cfg.force_strategy == 'cloud'
                or self.bridge.precheck(self.frames + 1)):  # no search where it cannot pay
            return None
        grid = BlockGrid(frame.shape[0], frame.shape[1], cfg.block_size)
        f = motion.estimate_motion(frame, dev[1], cfg.block_size, self._prev_mv_local)
        mv, d = f.mv, f.dissimilarity.reshape(-1)
        if not self.bridge.decide(self.frames + 1, mv, d, cfg.tau, grid, self.last_result):
            return None
        self.frames += 1
        s = self.scheduler
        out = EdgeStep(decision=Decision('bridge', 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, s.bw.bps,
                                         s.bytes_per_block),
                       hit_ratio=float(np.mean(d < cfg.tau)), bridged=True)
        out.local_result, out.skip_token = self.bridge.skip(mv, grid)
        out.block_map = np.zeros(grid.count, np.uint8)
        t['end'] = time.perf_counter()
        out.timings = {'extract_ms': 1e3 * (t['end'] - t['t0']),
                       'total_ms': 1e3 * (t['end'] - t['t0'])}
        return out

    def _to_device(self, out: 'EdgeStep', frame, grid, mv):
        """``out``'s local job goes to the device: its frame is what later frames are
        bridged onto; its result calibrates the bridge gate with ``mv``, this frame's field
        against the device's previous frame (the local state's field when the engine runs;
        None: searched here, where the bridge is on - the front end is idle while the device
        infers)."""
        dev = self._device_frame
        if (mv is None and self.bridge.enabled and dev is not None and self.config.motion
                and dev[1].shape == frame.shape):
            mv = motion.estimate_motion(frame, dev[1], grid.block_size, self._prev_mv_local).mv
        out.job_frame = self.frames
        self._device_frame = (self.frames, frame)
        self.bridge.sent(self.frames, self.frames, mv, grid, True, mv is None)

    def bridge_done(self, step: 'EdgeStep') -> list:
        """An overlapped local job finished (after its result was published): calibrates
        the bridge gate on it and returns (token, moved result) of the bridged frames that
        waited for it (their results, newer than the job's frame)."""
        if step.local_job is None:
            return []
        return self.bridge.result(step.job_frame, step.local_result)

    def _deferred(self, t, dec: Optional[Decision] = None) -> EdgeStep:
        t['end'] = time.perf_counter()
        return EdgeStep(decision=dec or self.last_decision_full, deferred=True,
                        timings={'total_ms': 1e3 * (t['end'] - t['t0'])})

    def _motion(self, frame, ref, grid, which, pending=None):
        """(block MVs or None, D per block) of ``frame`` against ``ref`` ('proxy' or 'local':
        whose previous field predicts this one, and keeps it); ``pending``: the same search
        already submitted to the motion thread."""
        mv, d = pending.result() if pending is not None else self._field(frame, ref, grid,
                                                                         which)
        if mv is not None:
            if which == 'proxy':
                self._prev_mv_proxy = mv
            else:
                self._prev_mv_local = mv
        return mv, d

    def _field(self, frame, ref, grid, which):
        """The search of ``_motion`` without its bookkeeping (safe on the motion thread)."""
        cfg = self.config
        if not cfg.motion:
            return None, block_dissimilarity(frame, ref, grid)
        prev = self._prev_mv_proxy if which == 'proxy' else self._prev_mv_local
        if getattr(self, '_codec_mvs', None) is not None:
            # codec MVs point at the previous decoded frame; D is measured against the real
            # reference, so a reference that lags behind shows up as misses, not as drift
            from fluxshard_kernels.codec_mv import field_from_codec
            f = field_from_codec(self._codec_mvs, frame, ref, cfg.block_size)
        else:
            f = motion.estimate_motion(frame, ref, cfg.block_size, prev)
        return f.mv, f.dissimilarity.reshape(-1)

    def _motion_pool(self):
        """One worker thread for the local block search beside the proxy's (the searches
        release the GIL in C and OpenCV), or None on a single core."""
        if self._pool is None and MOTION_THREAD and usable_cores() > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix='fluxshard-motion')
        return self._pool

    def _extra_misses(self, mv, local: bool):
        """Blocks the motion itself marks for recomputation (``independent_px``; for the
        local engine also ``mixed_px``). The server marks the mixed blocks of its own batches
        (model.mixed_px): their pixels match, so sending them would buy nothing, and the
        field searched against the coded proxy is too noisy for the still-scene gate."""
        if mv is None:
            return None
        return motion.MotionField(None, mv, None).extra_misses(
            self.config.independent_px, self.config.mixed_px if local else 0.0)

    def _salience(self, mv, grid):
        det = self.last_result
        if not self.config.use_salience or det is None or not len(det):
            return None
        boxes = salience.project_boxes(det.boxes, mv, grid) if mv is not None else det.boxes
        return salience.salience_map(boxes, det.scores, grid)

    def warm_up(self) -> float:
        """Run the local runtimes on blank frames before the first camera frame; seconds."""
        took = self.runner.warm_up() if self.runner is not None else 0.0
        return took + (self.onnx.warm_up() if self.onnx is not None else 0.0)

    def _dense_runtime(self, config, profile):
        """onnxruntime for the ``auto`` / ``onnxruntime`` local paths (the task's shipped ONNX
        file, or ``model_path`` when it is one); ``auto`` without it runs the engine alone."""
        if config.backend == 'incremental':
            return
        from fluxshard_kernels import data
        from fluxshard_kernels.profile import resolve_device
        from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
        path = config.model_path if config.model_path.endswith('.onnx') else ''
        if config.model_path and not path and config.backend == 'onnxruntime':
            raise ValueError(f'backend onnxruntime needs an ONNX model_path, got '
                             f'{config.model_path!r}')
        try:
            self.onnx = OnnxYolo(path or str(data.model_path(config.task)), config.conf,
                                 device=resolve_device(config.device))
        except (ValueError, FileNotFoundError):
            if config.backend == 'onnxruntime':
                raise
            return
        if config.backend == 'auto':
            from fluxshard_kernels.paths import PathCosts, PROBE_EVERY
            # costs that are not re-measured (fit_latency off) need no probing
            self.paths = PathCosts(probe_every=PROBE_EVERY if config.fit_latency else 0)
            if profile is not None:  # start from this machine's measured costs
                self.paths.seed(profile.edge, BlockGrid(profile.frame[0], profile.frame[1],
                                                        profile.block).count)
                self.front_s = profile.edge_overhead_s

    def _local(self, frame, mv, labs, ready, dense_runtime: bool = False):
        """Local detections for ``frame``: the engine's step on ``labs`` (``ready``: its state
        is this frame's size), else a dense pass (onnxruntime when there is one, else the
        engine's); onnxruntime when the backend says so, ``auto`` measures it faster, or
        ``dense_runtime`` asks for it."""
        path = 'incremental'
        if self.onnx is not None and (self.config.backend == 'onnxruntime' or dense_runtime
                                      or not ready):
            path = 'onnxruntime'  # a dense pass either way: the engine's state is built by
        elif self.onnx is not None:  # the background refresh
            path = self.paths.choose(len(labs))
        t0 = time.perf_counter()
        self.last_path = path
        if path == 'onnxruntime':
            # the engine's state stays where it was: the next step recomputes what changed
            # since, and the background refresh renews it
            self.onnx.conf = self.config.conf
            det = self.onnx(frame)
            if self.paths is not None and self.config.fit_latency:
                self.paths.observe_dense(time.perf_counter() - t0)
            self.last_stats = None
            self.last_result = det
            return det
        if ready:
            raw, lb, st = self.runner.step(frame, mv, labs, self.config.block_size)
        else:
            raw, lb, st = self.runner.dense(frame)
            self._since_refresh = 0
        det = self.model.decode(raw, lb, self.config.conf)
        if ready and self.paths is not None and self.config.fit_latency:
            self.paths.observe_incremental(len(labs), time.perf_counter() - t0)
        self.last_stats = st
        self.last_result = det
        return det

    def _send(self, out, frame, grid, idx, mv, d, key, infer):
        cfg = self.config
        codec = proxy.CODEC_NAMES[cfg.codec]
        mvx = mvy = None
        if mv is not None and not key:
            mvx, mvy = mv[..., 0].reshape(-1), mv[..., 1].reshape(-1)
        idx = np.asarray(idx, np.int64)
        quality = cfg.quality
        if codec == proxy.CODEC_H264 and min(frame.shape[:2]) < 2:
            codec = proxy.CODEC_RAW  # too small for H.264 (x264 codes even sides >= 2)
        if codec == proxy.CODEC_H264:
            # the whole frame, coded against the proxy (rate-controlled by the CRF); idx are
            # the blocks the server recomputes; the unit carries its own motion vectors, so
            # the block field is sent only on request
            if not cfg.send_motion:
                mvx = mvy = None
            if self._inter is None:
                self._inter = proxy.InterEncoder()
            payload, decoded = self._inter.encode(frame, key, cfg.crf, self._roi(mv, grid))
            if not key:
                self._learn_unit(len(payload), self.crf)
            upd = proxy.ProxyUpdate(grid.height, grid.width, frame.shape[2], grid.block_size,
                                    idx, None, 0, mvx, mvy, key, decoded)
            self._inter_at = (self.seq + 1, (frame.shape, cfg.crf))
            quality = self.crf
        else:
            payload, _, upd = proxy.build_update(frame, grid, idx, codec, cfg.quality, mvx,
                                                 mvy, key)
        new_state = proxy.apply(None if key else self.proxy, upd)
        self.proxy = new_state
        if self.quality is not None and codec == proxy.CODEC_H264 and infer and not key and \
                frame.shape[2] == 3:
            self.quality.offer(self.seq + 1, frame, self.crf)  # this batch's seq
        self.seq += 1
        self.skip.sent(self.seq, self.frames, mv, grid, infer, key)
        out.seq, out.update, out.payload = self.seq, upd, payload
        out.dissimilarity = np.asarray(d, np.float32)[np.asarray(idx, np.int64)]
        out.digest = proxy.digest(new_state)
        out.key, out.codec, out.quality = key, codec, quality
        out.sparse_inference_requested = infer
        if codec == proxy.CODEC_H264:
            self.scheduler.observe_unit(len(payload), key)
        else:
            self.scheduler.observe_payload(len(payload), len(idx))
        if key:
            out.key_reason = self._key_reason
            self.last_key_seq = self.seq
            self._key_reason = ''
            self._prev_mv_proxy = None

    #: an object is large (``roi_large_qoffset``) when its box covers at least this share of
    #: the frame's area (``codec_mv.LARGE_AREA``)
    LARGE_AREA = LARGE_AREA

    def _roi(self, mv, grid) -> Optional[RoiMap]:
        """Where the payload's bits go (``roi_qoffset`` > 0): the objects of the last result
        (the edge's or the server's), moved by the block motion and grown by a block, at the
        link's CRF; the rest ``roi_qoffset`` coarser (1.0 = +51 QP; 0.2 costs about CRF + 6).
        A large object (``LARGE_AREA``) is coded ``roi_large_qoffset`` coarser than the small
        ones (a detector keeps large objects through coarser quantisation; small ones are the
        first it loses); where they overlap, the finer region holds.
        None when neither this nor the link asks for an offset."""
        q = self.config.roi_qoffset
        link = max(0, self.crf - self.config.crf) * self.QOFFSET_PER_CRF  # see _link_crf
        if not q and not link:
            return None
        det = self.last_result
        boxes = np.zeros((0, 4), np.float32)
        if q and det is not None and len(det):
            boxes = (salience.project_boxes(det.boxes, mv, grid) if mv is not None
                     else np.asarray(det.boxes, np.float32))
        qo = min(1.0, link)
        self.last_roi = object_roi(
            boxes, grid.height, grid.width, grid.block_size, min(1.0, q + link), qo,
            min(1.0, link + min(q, self.config.roi_large_qoffset)))  # never the background's
        return self.last_roi

    #: ``_dense_wins``: the cloud must be this much slower than the dense local path
    DENSE_MARGIN = 1.25
    #: ... and a full step (motion, decision, upload) re-measures every this many frames,
    #: doubling while the dense path keeps winning, up to ``FULL_MAX_S`` of camera time
    FULL_EVERY = 10
    FULL_MAX_S = 1.0

    def _next_full_every(self, dec: Decision) -> int:
        """Camera frames until the next full step. A full step costs the front end (block
        motion, the decision, opportunistic uploads) on top of the dense pass, and on a device
        that is already the bottleneck that cost delays every queued frame behind it; so while
        each full step finds the cloud ``DENSE_MARGIN`` slower again, re-measure half as
        often, at least every ``FULL_MAX_S`` seconds of camera time (or ``FULL_EVERY``
        frames)."""
        interval = self.scheduler.frame_interval_s
        cap = max(self.FULL_EVERY, int(self.FULL_MAX_S / interval) if interval else 0)
        wins = dec.strategy == 'edge' and dec.t_cloud > self.DENSE_MARGIN * dec.t_edge
        return min(cap, 2 * self._full_every) if wins else self.FULL_EVERY

    def _camera_now(self) -> int:
        return self.frames if self._camera_index is None else self._camera_index

    def _dense_wins(self, frame, wait_s: float = 0.0) -> bool:
        """Skip block motion and the decision: the last full step computed this camera's frame
        locally where the dense runtime (onnxruntime) is predicted faster than the engine with
        the block motion it needs (``front_s``), and faster than the cloud by
        ``DENSE_MARGIN``, fewer than ``_full_every`` camera frames ago (``camera_index``: a
        busy edge skips frames), and nothing asks for a key or
        pins a side. Motion estimation would then only cost time (a robot whose link is bad
        and whose dense runtime beats the engine). ``wait_s``: the busy device's remaining
        time, added to the local side."""
        d = self.last_decision_full
        dense_faster = self.onnx is not None and (
            self.config.backend == 'onnxruntime' or (  # predicted, not a probe's choice
                self.paths is not None and d is not None
                and self.paths.faster(d.k_edge, self.front_s) == 'onnxruntime'))
        return (d is not None and d.strategy == 'edge' and dense_faster
                and not self.config.force_strategy and self._key_reason == ''
                and frame.shape[2] == 3
                and self._camera_now() - self._last_full < self._full_every
                and self.proxy is not None and self.proxy.shape == frame.shape
                and d.t_cloud > self.DENSE_MARGIN * (d.t_edge + wait_s))

    def _dense_step(self, frame, t) -> 'EdgeStep':
        """The frame on the dense local runtime alone, nothing sent (see ``_dense_wins``)."""
        out = EdgeStep(decision=self.last_decision_full, hit_ratio=0.0, motion_skipped=True)
        t['schedule'] = time.perf_counter()
        self._local_det = None
        out.block_map = np.ones(self.n_blocks, np.uint8)

        def job():
            t0 = time.perf_counter()
            out.local_result = self._local(frame, None, np.zeros(0, np.int64), False,
                                           dense_runtime=True)
            if self.refresh is not None and self.refresh.running:
                self.refresh.resume()  # paused at the start of the frame
            return time.perf_counter() - t0
        if self.overlap:
            out.local_job, out.local_eta_s = job, self.scheduler.edge(self.n_blocks)
            self._to_device(out, frame, BlockGrid(frame.shape[0], frame.shape[1],
                                                  self.config.block_size), None)
        else:
            job()
        t['end'] = time.perf_counter()
        out.timings = {'local_ms': 1e3 * (t['end'] - t['schedule']),
                       'total_ms': 1e3 * (t['end'] - t['t0'])}
        return out

    #: the share of the link one frame's payload may take (the rest: headroom for the
    #: link's swings, the other robots of a cell, feedback)
    LINK_SHARE = 0.5
    #: the link's CRF moves by at most this much a frame
    CRF_STEP = 3
    #: quantiser offset (FFmpeg ROI, 1.0 = +51 QP) that costs about as many bits as +1 CRF
    #: (measured on x264 veryfast: an offset of 0.2 ~ CRF + 6)
    QOFFSET_PER_CRF = 1 / 30

    def _link_crf(self) -> int:
        """The payload CRF from the link (rate from the link): a unit should take at most
        ``LINK_SHARE`` of what the link carries in a frame interval, at the estimated rate;
        the finest CRF is ``crf``, the coarsest ``max_crf``. x264 bits halve about every +6
        CRF, so the CRF that fits is ``crf_now + 6 log2(unit / budget)``. The stream keeps
        coding at ``crf``: the difference is a quantiser offset on the whole frame (``_roi``),
        so a change needs no new stream (no IDR unit); it moves by at most ``CRF_STEP`` a
        frame (a key batch takes it at once)."""
        cfg = self.config
        lo, hi = cfg.crf, max(cfg.crf, cfg.max_crf)
        cur = min(max(self.crf, lo), hi)
        if hi == lo or self._unit is None:
            return cur
        sch = self.scheduler
        budget = sch.bw.bps * (sch.frame_interval_s or 1 / 15) * self.LINK_SHARE
        nbytes, at = self._unit
        est = nbytes * 2 ** ((at - cur) / 6)
        want = min(max(int(math.ceil(cur + 6 * math.log2(max(est, 1.0) / max(budget, 1.0))
                                     - 1e-9)), lo), hi)
        if self._key_reason == '':
            want = min(max(want, cur - self.CRF_STEP), cur + self.CRF_STEP)
        return want

    def _learn_unit(self, nbytes: int, crf: int):
        if self._unit is not None:
            old, at = self._unit
            old *= 2 ** ((at - crf) / 6)  # rescaled to this CRF
            nbytes = 0.8 * old + 0.2 * nbytes
        self._unit = (float(nbytes), crf)

    def _background(self, frame):
        if self.refresh is None or frame.shape[2] != 3 or (
                self.onnx is not None and self.config.backend == 'onnxruntime'):
            return  # no engine state to build or refresh
        if self.runner.state is None:
            # a robot that has offloaded so far builds its local state in the background, so
            # that computing locally is ready when the link turns bad
            if self.refresh.running:  # paused at the start of this frame
                self.refresh.resume()
            else:
                self._since_refresh = 0
                self._check = None
                self.refresh.start(frame)
            return
        self._since_refresh += 1
        if self.refresh.running:
            self.refresh.resume()
        elif self._since_refresh >= max(1, self.config.refresh_interval) and \
                frame.shape[2] == 3:
            self._since_refresh = 0
            self._check = self._local_det  # the refresh runs on the frame just computed
            self.refresh.start(frame)

    #: per frame, the accuracy estimate drifts back this much towards 1, so that a side it
    #: rules out is tried again (and measured again) after a while
    ACCURACY_DRIFT = 0.02
    #: weight of a new agreement sample in the estimate
    ACCURACY_GAIN = 0.4

    def _learn_accuracy(self):
        """Compare the last incremental result the edge computed with the dense refresh of
        the same frame, once that refresh has completed; the scheduler's edge accuracy is
        the running estimate (times ``accuracy_edge``)."""
        a = self.edge_accuracy + (1.0 - self.edge_accuracy) * self.ACCURACY_DRIFT
        r = self.refresh
        if r is not None and r.completed > self._refresh_seen:
            self._refresh_seen = r.completed
            if self._check is not None and r.result is not None:
                raw, lb = r.result
                ref = self.model.decode(raw, lb, self.config.conf)
                g = self.ACCURACY_GAIN
                a = (1 - g) * a + g * metrics.agreement(self._check, ref)
            self._check = None
        self.edge_accuracy = a
        self.scheduler.acc_e = self.config.accuracy_edge * a
