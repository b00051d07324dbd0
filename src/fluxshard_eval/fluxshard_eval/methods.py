"""The methods the harness compares, each its real edge and server code with real message
serialisation (CDR bytes are what the link carries and what the byte counts count):

* ``fluxshard`` - the edge pipeline (Algorithm 1) and the server session + incremental model
  (Algorithm 2), BlockBatch messages; ablations ``no-ata`` (k = every miss, no adaptive task
  allocation) and ``no-ms-comp`` (full-scale execution: dense compute times on both sides and
  latency models that know it).
* ``full-offload`` - every frame as a JPEG ``CompressedImage``; dense inference on the server.
* ``deltacnn`` - DeltaCNN-style: per-block deltas against an *accumulated* reference (a block
  is sent and recomputed only when its mean absolute delta reaches tau; smaller deltas
  accumulate until they do), no motion alignment; sparse recomputation on the server.
* ``spinn`` - SPINN-style: the model split after a backbone stage chosen per frame to minimise
  latency at the estimated bandwidth (input / after layer 4 / after layer 10 / all on the
  edge), fp16 features; an early-exit cache that reuses the last result when the whole frame
  is similar to the last computed one.
* ``video-offload-crf<N>`` - what a robot team does without FluxShard: the camera streamed as
  H.264 (x264 ``tune=zerolatency``, ``preset=veryfast``, no B-frames, one reference, CRF N; one
  access unit per frame in a ``CompressedImage`` of format ``h264``), decoded on the server,
  dense inference there. A lost unit makes the next frame an IDR key frame (the decoder's
  resync). ``VIDEO_CRFS`` is the default ladder.
* ``video-offload-roi-crf<N>`` - the same stream with FluxShard's ROI coding: the objects of
  the newest result back at the robot (grown by ``VideoOffload.ROI_MARGIN``) at CRF N, the
  rest ``payload.roi_qoffset`` coarser; what ROI coding alone gives any stream.
* ``video-offload-vbv`` - the same stream rate-controlled as robot teams configure it over a
  cellular link: capped CRF 23 with x264's VBV at the link's median rate (0.25 s buffer).
* ``edge-only`` - no network: dense inference on the robot for every frame it can take (the
  latest frame wins while it computes); its time is the profile's edge dense pass.
* ``coach`` - COACH-style: SPINN plus quantised transfer (uint8 features with per-channel
  affine scale, JPEG q60 input).
"""

from dataclasses import dataclass, field
import dataclasses
import math
import time
from typing import List, Optional

import cv2
import numpy as np
import torch

from fluxshard_msgs_py import conversions
from fluxshard_edge.pipeline import block_dissimilarity, EdgeConfig, EdgePipeline
from fluxshard_edge.scheduler import BandwidthEstimator
from fluxshard_kernels import proxy
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.codec_mv import object_roi
from fluxshard_kernels.motion import MIXED_PX
from fluxshard_kernels.yolo.processing import Detections, letterbox
from fluxshard_eval import sim
from fluxshard_server.inference import DRIFT_SCOPE, EdgeModel, RECOMPUTE_TAU
from fluxshard_server.receive import receive_batch
from fluxshard_server.session import EdgeSession

VIDEO_CRFS = (18, 23, 28)
VIDEO = tuple(f'video-offload-crf{c}' for c in VIDEO_CRFS)
#: the same ladder with FluxShard's ROI coding (``VideoOffload(roi_qoffset=...)``)
VIDEO_ROI = tuple(f'video-offload-roi-crf{c}' for c in VIDEO_CRFS)
METHODS = ('fluxshard', 'full-offload', *VIDEO, 'video-offload-vbv', *VIDEO_ROI, 'edge-only',
           'deltacnn', 'spinn', 'coach', 'no-ata', 'no-ms-comp')
BASELINES = ('full-offload', 'spinn', 'coach', 'deltacnn')


def serialize(msg) -> bytes:
    from rclpy.serialization import serialize_message
    return serialize_message(msg)


def deserialize(raw: bytes, typ):
    from rclpy.serialization import deserialize_message
    return deserialize_message(raw, typ)


class SyncRefresh:
    """The background dense refresh run to completion when started (a deterministic replay; its
    modelled time is charged to the device as background work)."""

    def __init__(self, runner):
        self.runner = runner
        self.completed = 0
        self.cancelled = 0
        self.running = False
        self.result = None

    def start(self, frame):
        if self.runner is None:
            return
        raw, lb, _ = self.runner.dense(frame)  # the first one builds the state
        self.result = (raw, lb)
        self.completed += 1

    def pause(self, timeout=5.0):
        return True

    def resume(self):
        pass

    def cancel(self):
        pass


@dataclass
class EdgeWork:
    """What the edge did with one frame."""

    result: Optional[Detections] = None      # a result produced on the edge (local or cache)
    computed_by: str = ''                    # 'edge' | 'cache' when result is set
    edge_s: float = 0.0                      # modelled critical-path edge time
    device_s: float = 0.0                    # of which local inference (overlap: the device)
    deferred: bool = False                   # overlap: the frame waits for the busy device
    ready_at: float = 0.0                    # the edge's result waits for this (modelled) time
    background_s: float = 0.0                # modelled background edge work after the frame
    messages: List[bytes] = field(default_factory=list)        # critical-path uplink
    async_messages: List[bytes] = field(default_factory=list)  # uplink not waited for
    hit_ratio: float = 0.0
    edge_compute: float = 0.0                # fraction of a dense pass done on the edge
    cpu_ms: float = 0.0
    info: dict = field(default_factory=dict)


@dataclass
class ServerWork:
    result: Optional[Detections] = None
    server_s: float = 0.0                    # inference on the server's GPU (its queue)
    #: the batch callback on the server's CPU before the job reaches the inference thread
    #: (decode, apply, the server's own block matching): as ``server_node`` runs it
    receive_s: float = 0.0
    background_s: float = 0.0
    result_bytes: int = 0
    server_compute: float = 0.0
    cpu_ms: float = 0.0
    received_bytes: int = 0


def _result_bytes(det, edge_id, index, task):
    from std_msgs.msg import Header
    if task == 'pose':
        m = conversions.keypoints_to_msg(det, Header(), edge_id, 'server', index)
    else:
        m = conversions.detections_to_msg(det, Header(), edge_id, 'server', index,
                                          task == 'segment')
    return len(serialize(m))


class Method:
    name = ''
    #: the edge waits until its critical messages have left (a streamer's backpressure: the
    #: camera frames it cannot send are dropped before encoding); False: the messages queue
    #: on the link and the edge takes the next frame (an asynchronous DDS publish)
    blocks_on_send = True
    #: local inference runs on its own device beside the critical path (``edge`` gets the
    #: device's remaining busy time; ``EdgeWork.device_s`` is its share of ``edge_s``)
    overlap = False
    #: the (modelled) time the edge takes the next frame, set by the replay before ``edge``
    now = 0.0

    def __init__(self, model, edge_id: str, link: sim.LinkSpec, profile=None):
        self.model, self.edge_id, self.task = model, edge_id, model.task
        self.prof = profile or sim.PAPER  # modelled device times
        self.bw = BandwidthEstimator(link.mbps * 1e6 / 8)
        self.sent_bytes = 0      # counted by the edge as it sends
        self.received_bytes = 0  # counted by the server as it receives

    def observe_link(self, nbytes: int, seconds: float, spacing_s=None):
        """A transfer timing: ``seconds`` from send to ACK (queueing, transfer, round trip);
        ``spacing_s`` the time since the previous ACK when it was sent before that ACK."""
        self.bw.observe(nbytes, seconds, spacing_s)

    def link_queue(self, seconds: float):
        """Before a frame: how long the edge's earlier messages still hold the link."""

    def camera(self, interval_s: float):
        """The camera's frame interval (what a node measures from the image stamps)."""

    def delivered(self, index: int, t: float):
        """The server's result for camera frame ``index`` reaches the robot at time ``t``."""

    def edge(self, frame: np.ndarray, index: int) -> EdgeWork:
        raise NotImplementedError

    def server(self, work: EdgeWork, delivered: List[bool]) -> ServerWork:
        return ServerWork()

    def _count(self, work: EdgeWork):
        self.sent_bytes += sum(map(len, work.messages)) + sum(map(len, work.async_messages))

    def close(self):
        pass


class _BlockServer:
    """The server side of FluxShard and DeltaCNN-style: a session (sequence and digest checks,
    proxy apply) and an incremental model over the proxy state, as ``server_node`` runs them."""

    def __init__(self, model, edge_id, dense_times=False, recompute_tau=RECOMPUTE_TAU,
                 profile=None, drift_scope=DRIFT_SCOPE, mixed_px=MIXED_PX):
        self.prof = profile or sim.PAPER
        self.session = EdgeSession(edge_id)
        if dense_times:  # No-MS-Comp: dense inference on the proxy, for real
            self.em = EdgeModel('dense', model.task, model)
            self.em.refresh = SyncRefresh(None)
        else:
            self.em = EdgeModel('incremental', model.task, model, refresh_interval=10,
                                recompute_tau=recompute_tau, drift_scope=drift_scope,
                                mixed_px=mixed_px)
            self.em.refresh = SyncRefresh(self.em.runner)
        self.dense_times = dense_times
        self.edge_id = edge_id
        self.resync = None

    def receive(self, raw: bytes, index: int) -> ServerWork:
        from fluxshard_msgs.msg import BlockBatch
        t0 = time.perf_counter()
        out = ServerWork(received_bytes=len(raw))
        msg = deserialize(raw, BlockBatch)
        r = receive_batch(self.session, msg)
        if r.outcome.resync:
            self.resync = (r.outcome.reason, int(msg.seq))
        if not r.infer:
            out.cpu_ms = 1e3 * (time.perf_counter() - t0)
            return out
        refreshes = self.em.refresh.completed
        det = self.em(self.session.state, int(msg.seq), r.mv, r.prev_seq, r.block_size,
                      r.changed)
        k, n = self.em.last_blocks, self.session.state.shape
        count = BlockGrid(n[0], n[1], r.block_size).count
        out.result = det
        out.server_s = (self.prof.server.dense_s if self.dense_times else
                        self.prof.server.sparse_s(k))
        out.server_compute = 1.0 if self.dense_times else min(1.0, k / count)
        if r.matched:  # the block field matched on the server: one of the edge's two matches
            out.receive_s = self.prof.edge_overhead_s / 2  # in the callback, not the GPU's
        if self.em.refresh.completed > refreshes:
            out.background_s = self.prof.server.engine_s
        out.result_bytes = _result_bytes(det, self.edge_id, index, self.em.task)
        out.cpu_ms = 1e3 * (time.perf_counter() - t0)
        return out


class FluxShard(Method):
    """The real EdgePipeline with the server's session and incremental model."""

    name = 'fluxshard'
    blocks_on_send = False  # the scheduler sees the queue (link_queue) instead

    def __init__(self, model, edge_id, link, profile=None, ablation: str = '',
                 tau: float = 10.0,
                 block: int = 16, refresh: int = 10, quality: int = 90,
                 independent_px: float = 0.0, codec: str = EdgeConfig.codec,
                 crf: int = EdgeConfig.crf, mixed_px: float = EdgeConfig.mixed_px,
                 recompute_tau: float = RECOMPUTE_TAU,
                 drift_scope: str = DRIFT_SCOPE,
                 roi_qoffset: float = EdgeConfig.roi_qoffset,
                 roi_large_qoffset: float = EdgeConfig.roi_large_qoffset,
                 send_motion: bool = EdgeConfig.send_motion,
                 target_retention: float = EdgeConfig.target_retention,
                 skip_target: float = EdgeConfig.skip_target,
                 skip_max: int = EdgeConfig.skip_max,
                 overlap: Optional[bool] = None):
        super().__init__(model, edge_id, link, profile)
        # the edge node's scheduler.overlap_local 'auto': local inference beside the critical
        # path where it runs on an accelerator (the paper's Jetson: GPU; a measured CUDA edge)
        self.overlap = overlaps(self.prof) if overlap is None else overlap
        self.name = ablation or 'fluxshard'
        dense = ablation == 'no-ms-comp'
        cfg = EdgeConfig(edge_id=edge_id, block_size=block, tau=tau, codec=codec, crf=crf,
                         roi_qoffset=roi_qoffset, roi_large_qoffset=roi_large_qoffset,
                         send_motion=send_motion, quality=quality,
                         target_retention=target_retention,
                         skip_target=skip_target, skip_max=skip_max,
                         task=model.task, bandwidth_mbps=link.mbps,
                         refresh_interval=refresh, fit_latency=False,
                         backend='incremental' if dense else 'auto',
                         independent_px=independent_px, mixed_px=mixed_px,
                         task_allocation=ablation != 'no-ata',
                         edge_profile='xavier_nx_dense' if dense else 'xavier_nx',
                         cloud_profile='rtx3080_dense' if dense else 'rtx3080')
        cfg = dataclasses.replace(cfg, overlap_local='always' if self.overlap else 'never')
        self.pipe = EdgePipeline(cfg, model, profile=self.prof)
        self.pipe.refresh = SyncRefresh(self.pipe.runner)
        if self.pipe.quality is not None:  # reference passes inline, charged as background
            self.pipe.quality.sync = True
        # one threshold for both sides, as the nodes ship it (motion.mixed_px on the edge's
        # local path, model.mixed_px on the server)
        self.srv = _BlockServer(model, edge_id, dense, recompute_tau, self.prof, drift_scope,
                                mixed_px)
        self.dense = dense
        self._pending = None
        self._arrive = {}  # batch seq -> (modelled) time its result reaches the robot
        self._seq_of = {}  # camera frame index -> batch seq
        self._results = {}  # batch seq -> the server's result, not yet handed to the edge

    def observe_link(self, nbytes, seconds, spacing_s=None):
        self.pipe.scheduler.bw.observe(nbytes, seconds, spacing_s)

    def link_queue(self, seconds):
        self.pipe.scheduler.queue_s = seconds

    def camera(self, interval_s):
        self.pipe.scheduler.frame_interval_s = interval_s

    def edge(self, frame, index, device_busy_s: float = 0.0):
        from std_msgs.msg import Header
        p = self.pipe
        ready = p.runner.state is not None and p.runner.state.shape == frame.shape
        refreshes = p.refresh.completed
        probes = p.quality.started if p.quality is not None else 0
        self._deliver(self.now)
        t0 = time.perf_counter()
        st = p.step(frame, device_busy_s=device_busy_s, camera_index=index)
        if st.local_job is not None:  # the device's part (the harness times it below)
            st.local_job()
            p.bridge_done(st)  # nothing waits: the bridged frames come after it here
        w = EdgeWork(hit_ratio=st.hit_ratio, cpu_ms=1e3 * (time.perf_counter() - t0),
                     deferred=st.deferred)
        if st.deferred:
            return w
        dec = st.decision
        n = BlockGrid(frame.shape[0], frame.shape[1], p.config.block_size).count
        w.edge_s = 0.0 if st.motion_skipped else self.prof.edge_overhead_s
        if st.bridged:  # the busy device's frame's result moved, once the device is done
            w.result, w.computed_by = st.local_result, 'motion'
            w.ready_at = self.now + device_busy_s
            w.info = {'strategy': 'bridge', 'k_edge': 0, 'k_cloud': 0, 'key': False,
                      'crf': p.crf}
            return w
        if st.skipped:  # not sent: the proxy frame's result moved, once the edge holds it
            w.result, w.computed_by = st.local_result, 'motion'
            if w.result is None:  # it waits for the proxy frame's result, as the node does
                seq = p.skip.proxy_seq
                w.ready_at = self._arrive.get(seq, 0.0)
                # that result moved, without handing it to the edge before it arrives
                w.result = p.skip.moved(st.skip_token, self._results.get(seq))
            w.info = {'strategy': 'skip', 'k_edge': 0, 'k_cloud': 0, 'key': False,
                      'crf': p.crf}
            return w
        if st.local_result is not None:
            k = min(dec.k_edge, dec.n_edge) if ready else n
            w.result, w.computed_by = st.local_result, 'edge' if k else 'cache'
            if self.dense or p.last_path == 'onnxruntime':  # a dense pass on the robot
                w.device_s = self.prof.edge.dense_s
                w.edge_compute = 1.0
            else:
                w.device_s = self.prof.edge.sparse_s(k)
                w.edge_compute = min(1.0, k / n)
            w.edge_s += w.device_s
        if p.refresh.completed > refreshes:
            w.background_s = self.prof.edge.engine_s
        if p.quality is not None and p.quality.started > probes:  # a dense pass
            w.background_s += self.prof.edge.dense_s
        w.info = {'strategy': dec.strategy, 'k_edge': dec.k_edge, 'k_cloud': dec.k_cloud,
                  'key': st.key, 'crf': p.crf}
        if st.sends and p.proxy.shape == frame.shape:  # how close the server's image is
            w.info['proxy_psnr'] = float(cv2.PSNR(frame, p.proxy))
        if st.sends:
            h = Header()
            h.stamp.sec, h.stamp.nanosec = divmod(index * 10**7, 10**9)
            raw = serialize(conversions.update_to_msg(
                st.update, st.payload, h, self.edge_id, st.seq, index, st.codec, st.quality,
                st.dissimilarity, st.sparse_inference_requested, st.digest))
            (w.messages if st.sparse_inference_requested else w.async_messages).append(raw)
        self._pending, self._pending_seq = index, st.seq
        if st.sends:
            self._seq_of[index] = st.seq
        self._count(w)
        return w

    def delivered(self, index, t):
        seq = self._seq_of.pop(index, None)
        if seq is not None:
            self._arrive[seq] = t
            while len(self._arrive) > 64:
                self._arrive.pop(next(iter(self._arrive)))

    def _deliver(self, now: float) -> list:
        """Hand the edge the server results that reached it by ``now``, in batch order, as the
        node's feedback does; returns the waiting frames they release."""
        out = []
        for seq in sorted(self._results):
            if self._arrive.get(seq, math.inf) <= now:
                out += self.pipe.observe_server_result(seq, self._results.pop(seq))
        return out

    def server(self, work, delivered):
        out = ServerWork()
        for raw, ok in zip(work.messages + work.async_messages, delivered):
            if not ok:
                continue  # lost: the server sees the sequence gap at the next batch
            self.received_bytes += len(raw)
            s = self.srv.receive(raw, self._pending)
            if s.result is not None:
                out = s
                self.pipe.last_result = s.result  # as the node's runtime: salience, ROI
                # the edge learns from it when it arrives (``delivered``, then ``_deliver``)
                self._results[self._pending_seq] = s.result
            else:
                out.cpu_ms += s.cpu_ms
        if self.srv.resync is not None:
            reason, seq = self.srv.resync
            self.pipe.request_resync(reason, seq)
            self.srv.resync = None
        return out

    def close(self):
        self.pipe.close()


class FullOffload(Method):
    """Every frame JPEG-coded (``CompressedImage``) to the server, dense inference there."""

    name = 'full-offload'

    def __init__(self, model, edge_id, link, profile=None, quality: int = 90,
                 fmt: str = 'jpeg'):
        super().__init__(model, edge_id, link, profile)
        self.quality, self.fmt = quality, fmt
        self._index = 0

    def edge(self, frame, index):
        from std_msgs.msg import Header
        t0 = time.perf_counter()
        m = conversions.array_to_compressed(frame, Header(), self.fmt, self.quality)
        w = EdgeWork(edge_s=self.prof.edge_overhead_s, messages=[serialize(m)],
                     cpu_ms=1e3 * (time.perf_counter() - t0))
        self._index = index
        self._count(w)
        return w

    def server(self, work, delivered):
        from sensor_msgs.msg import CompressedImage
        if not delivered or not delivered[0]:
            return ServerWork()
        t0 = time.perf_counter()
        raw = work.messages[0]
        self.received_bytes += len(raw)
        img = conversions.compressed_to_array(deserialize(raw, CompressedImage))
        det = dense_detect(self.model, img)
        return ServerWork(det, self.prof.server.dense_s, 0.0,
                          _result_bytes(det, self.edge_id, self._index, self.task), 1.0,
                          1e3 * (time.perf_counter() - t0), len(raw))


class VideoOffload(Method):
    """The camera as an H.264 stream (one access unit per frame it takes), decoded on the
    server, dense inference there. ``roi_qoffset`` > 0: the stream spends its bits on the
    objects of the newest result back at the robot, as FluxShard's payload does
    (``codec_mv.object_roi``: its boxes grown by ``ROI_MARGIN``, the rest ``roi_qoffset``
    coarser); a streamer has no block motion, so the boxes stay where that result saw them."""

    #: px the ROI stream grows each box by (FluxShard's is one block; a stream's boxes are
    #: a round trip old and not moved, so one more block)
    ROI_MARGIN = 32

    def __init__(self, model, edge_id, link, profile=None, crf: int = 23,
                 maxrate_mbps: float = 0.0, fps: float = 30.0, roi_qoffset: float = 0.0):
        super().__init__(model, edge_id, link, profile)
        if not 0 <= crf <= 51:
            raise ValueError(f'H.264 CRF must be in 0..51, got {crf}')
        if not 0 <= roi_qoffset <= 1:
            raise ValueError(f'ROI offset must be in 0..1, got {roi_qoffset}')
        self.crf, self.maxrate_mbps, self.fps = crf, maxrate_mbps, fps
        self.roi_qoffset = roi_qoffset
        self.name = ('video-offload-vbv' if maxrate_mbps else
                     f'video-offload-roi-crf{crf}' if roi_qoffset else f'video-offload-crf{crf}')
        self.enc = self.dec = None
        self._key = True
        self._index = 0
        self._sent = {}  # camera frame index -> the server's result, not yet at the robot
        self._back = []  # (time it reaches the robot, frame index, result)
        self.last_roi = None  # the RoiMap of the last unit (None: coded without one)

    def delivered(self, index, t):
        det = self._sent.pop(index, None)
        if det is not None:
            self._back.append((t, index, det))

    def _roi(self, shape):
        """The ROI map from the newest result that reached the robot by ``now``; None before
        the first one (the whole frame at the CRF)."""
        here = [b for b in self._back if b[0] <= self.now]
        if not here:
            return None
        newest = max(here, key=lambda b: b[1])
        self._back = [b for b in self._back if b[1] >= newest[1]]
        return object_roi(newest[2].boxes, shape[0], shape[1], self.ROI_MARGIN,
                          self.roi_qoffset)

    def edge(self, frame, index):
        from sensor_msgs.msg import CompressedImage
        from std_msgs.msg import Header
        from fluxshard_kernels.codec_mv import H264Decoder, H264Encoder
        t0 = time.perf_counter()
        if self.enc is None or (self.enc.ctx.width, self.enc.ctx.height) != \
                (frame.shape[1] // 2 * 2, frame.shape[0] // 2 * 2):
            self.enc = H264Encoder(frame.shape[1], frame.shape[0], self.fps, self.crf,
                                   1e3 * self.maxrate_mbps)
            self.dec = H264Decoder()
            self._key = True
        img = frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, 2)
        self.last_roi = self._roi(frame.shape) if self.roi_qoffset else None
        m = CompressedImage(header=Header(), format='h264',
                            data=self.enc.encode(img, key=self._key, roi=self.last_roi))
        self._key = False
        w = EdgeWork(edge_s=self.prof.edge_overhead_s, messages=[serialize(m)],
                     cpu_ms=1e3 * (time.perf_counter() - t0))
        self._index = index
        self._frame = frame
        self._count(w)
        return w

    def server(self, work, delivered):
        from sensor_msgs.msg import CompressedImage
        if not delivered or not delivered[0]:
            self._key = True  # the server asks for a key frame (modelled as immediate)
            return ServerWork()
        t0 = time.perf_counter()
        raw = work.messages[0]
        self.received_bytes += len(raw)
        out = self.dec.decode(bytes(deserialize(raw, CompressedImage).data))
        if not out:
            return ServerWork(cpu_ms=1e3 * (time.perf_counter() - t0), received_bytes=len(raw))
        img = out[-1][0]
        h, w = self._frame.shape[:2]
        if img.shape[:2] != (h, w):  # x264 codes even sides: repeat the last row / column
            img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), 'edge')
        if self._frame.ndim == 3 and self._frame.shape[2] == 3:
            work.info['proxy_psnr'] = float(cv2.PSNR(self._frame, img))
        det = dense_detect(self.model, img)
        if self.roi_qoffset:
            self._sent[self._index] = det
            while len(self._sent) > 64:  # results that never reached the robot
                self._sent.pop(next(iter(self._sent)))
        return ServerWork(det, self.prof.server.dense_s, 0.0,
                          _result_bytes(det, self.edge_id, self._index, self.task), 1.0,
                          1e3 * (time.perf_counter() - t0), len(raw))


class EdgeOnly(Method):
    """What a robot team does when the link is bad: dense inference on the robot for every
    frame it can take (latest frame wins), nothing on the network."""

    name = 'edge-only'

    def edge(self, frame, index):
        t0 = time.perf_counter()
        det = dense_detect(self.model, frame if frame.ndim == 3 and frame.shape[2] == 3
                           else np.repeat(frame[:, :, :1], 3, 2))
        # no block motion (the profile's edge overhead): the dense pass alone
        return EdgeWork(det, 'edge', self.prof.edge.dense_s, edge_compute=1.0,
                        cpu_ms=1e3 * (time.perf_counter() - t0))


def dense_detect(model, img, conf=0.25):
    x, lb = letterbox(img if img.shape[2] == 3 else np.repeat(img, 3, 2), 640)
    with torch.no_grad():
        return model.decode(model(torch.from_numpy(x)), lb, conf)


class DeltaCNN(Method):
    """DeltaCNN-style: blocks whose accumulated delta reaches tau are sent (JPEG, like
    FluxShard's, so byte differences come from motion alignment alone) and recomputed
    sparsely on the server; no motion vectors."""

    name = 'deltacnn'

    def __init__(self, model, edge_id, link, profile=None, tau: float = 10.0, block: int = 16,
                 quality: int = 90):
        super().__init__(model, edge_id, link, profile)
        self.tau, self.block, self.quality = tau, block, quality
        self.ref = None
        self.seq = 0
        self.srv = _BlockServer(model, edge_id, profile=self.prof)
        self.last = None
        self._index = 0
        self._key = True

    def edge(self, frame, index):
        from std_msgs.msg import Header
        t0 = time.perf_counter()
        grid = BlockGrid(frame.shape[0], frame.shape[1], self.block)
        key = self._key or self.ref is None or self.ref.shape != frame.shape
        if key:
            idx, hit = np.arange(grid.count), 0.0
        else:
            d = block_dissimilarity(frame, self.ref, grid)
            idx, hit = np.flatnonzero(d >= self.tau), float(np.mean(d < self.tau))
        w = EdgeWork(edge_s=self.prof.edge_overhead_s, hit_ratio=hit)
        self._index = index
        if len(idx) == 0 and self.last is not None:
            w.result, w.computed_by = self.last, 'cache'
        else:
            payload, _, upd = proxy.build_update(frame, grid, idx.astype(np.int64),
                                                 proxy.CODEC_NAMES['jpeg'], self.quality,
                                                 None, None, key)
            self.ref = proxy.apply(None if key else self.ref, upd)
            self.seq += 1
            self._key = False
            h = Header()
            h.stamp.sec, h.stamp.nanosec = divmod(index * 10**7, 10**9)
            w.messages.append(serialize(conversions.update_to_msg(
                upd, payload, h, self.edge_id, self.seq, index, proxy.CODEC_NAMES['jpeg'],
                self.quality, np.zeros(len(idx), np.float32), True, proxy.digest(self.ref))))
        w.cpu_ms = 1e3 * (time.perf_counter() - t0)
        self._count(w)
        return w

    def server(self, work, delivered):
        if not work.messages:
            return ServerWork()
        if not delivered[0]:
            self._key = True  # the server will ask for a resync; start over with a key
            return ServerWork()
        self.received_bytes += len(work.messages[0])
        s = self.srv.receive(work.messages[0], self._index)
        if self.srv.resync is not None:
            self._key, self.srv.resync = True, None
        if s.result is not None:
            self.last = s.result
        return s


#: Split points of the SPINN/COACH-style model: after this backbone layer (0 = the input is
#: sent, 23 = everything on the edge).
SPLITS = (0, 4, 10, 23)


class Split(Method):
    """SPINN-style split inference with a whole-frame-similarity early-exit cache; with
    ``quantize`` the COACH-style variant (uint8 features, JPEG q60 input)."""

    def __init__(self, model, edge_id, link, profile=None, quantize: bool = False,
                 exit_threshold: float = 2.0):
        super().__init__(model, edge_id, link, profile)
        self.name = 'coach' if quantize else 'spinn'
        self.quantize = quantize
        self.exit_threshold = exit_threshold
        self.jpeg_q = 60 if quantize else 90
        self.thumb = None
        self.last = None
        self.frac = split_fractions(model)
        self.feat_bytes = {}
        self.jpeg_bytes = None
        self._job = None

    def _thumb(self, frame):
        g = frame if frame.shape[2] == 1 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return cv2.resize(g, (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32)

    def _choose(self, frame):
        bps = max(self.bw.bps, 1.0)
        best, best_t = 23, None
        for s in SPLITS:
            if s == 0:
                nbytes = self.jpeg_bytes or frame.size // 8
            elif s == 23:
                nbytes = 0
            else:
                nbytes = self.feat_bytes.get(s, frame.size * 2)
            t = (self.prof.edge.dense_s * self.frac[s] + nbytes / bps
                 + self.prof.server.dense_s * (1 - self.frac[s]))
            if best_t is None or t < best_t:
                best, best_t = s, t
        return best

    def edge(self, frame, index):
        t0 = time.perf_counter()
        th = self._thumb(frame)
        w = EdgeWork(edge_s=self.prof.edge_overhead_s)
        self._job = None
        if self.thumb is not None and self.thumb.shape == th.shape and \
                float(np.mean(np.abs(th - self.thumb))) < self.exit_threshold:
            w.result, w.computed_by, w.hit_ratio = self.last, 'cache', 1.0  # early exit
            w.cpu_ms = 1e3 * (time.perf_counter() - t0)
            return w
        self.thumb = th
        s = self._choose(frame)
        w.info = {'split': s}
        w.edge_s += self.prof.edge.dense_s * self.frac[s]
        w.edge_compute = self.frac[s]
        if s == 23:
            w.result = self.last = dense_detect(self.model, frame)
            w.computed_by = 'edge'
        elif s == 0:
            from std_msgs.msg import Header
            m = conversions.array_to_compressed(frame, Header(), 'jpeg', self.jpeg_q)
            self.jpeg_bytes = len(m.data)
            w.messages.append(serialize(m))
        else:
            x, lb = letterbox(frame if frame.shape[2] == 3 else np.repeat(frame, 3, 2), 640)
            with torch.no_grad():
                _, y = self.model.backbone(torch.from_numpy(x), stop=s)
            raw = serialize(pack_features(y, s, lb, self.quantize))
            self.feat_bytes[s] = len(raw)
            w.messages.append(raw)
        self._job = (s, index)
        w.cpu_ms = 1e3 * (time.perf_counter() - t0)
        self._count(w)
        return w

    def server(self, work, delivered):
        from sensor_msgs.msg import CompressedImage
        from std_msgs.msg import UInt8MultiArray
        if not work.messages or not delivered[0]:
            return ServerWork()
        s, index = self._job
        t0 = time.perf_counter()
        raw = work.messages[0]
        self.received_bytes += len(raw)
        if s == 0:
            det = dense_detect(self.model,
                               conversions.compressed_to_array(deserialize(raw, CompressedImage)))
        else:
            y, lb = unpack_features(deserialize(raw, UInt8MultiArray))
            with torch.no_grad():
                _, y = self.model.backbone(y[s], start=s + 1, y=y)
                det = self.model.decode(self.model.head_outputs(self.model.neck_head(y)), lb)
        self.last = det
        return ServerWork(det, self.prof.server.dense_s * (1 - self.frac[s]), 0.0,
                          _result_bytes(det, self.edge_id, index, self.task),
                          1 - self.frac[s], 1e3 * (time.perf_counter() - t0), len(raw))


def split_fractions(model) -> dict:
    """Fraction of a dense pass's multiply-accumulates done before each split point (conv MACs
    counted on a 640x384 input)."""
    key = id(model)
    if key in _FRACTIONS:
        return _FRACTIONS[key]
    macs = {}

    def hook(mod, inp, out):
        top = int(mod._fs_name.split('.')[1])
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        macs[top] = macs.get(top, 0) + out.numel() * k

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, torch.nn.Conv2d)]
    try:
        model(torch.zeros(1, 3, 384, 640))
    finally:
        for h in hs:
            h.remove()
    total = sum(macs.values())
    out = {0: 0.0, 23: 1.0}
    for s in SPLITS[1:-1]:
        out[s] = sum(v for k, v in macs.items() if k <= s) / total
    _FRACTIONS[key] = out
    return out


_FRACTIONS = {}


def pack_features(y: dict, split: int, lb, quantize: bool):
    """The tensors crossing the split as a ``std_msgs/UInt8MultiArray``: one dimension entry
    per tensor (label ``layer:dtype:CxHxW``), fp16 or uint8 with per-channel float32
    (scale, offset) appended; the letterbox geometry in a last entry."""
    from std_msgs.msg import MultiArrayDimension, UInt8MultiArray
    m = UInt8MultiArray()
    chunks = []
    for layer in sorted(k for k in y if k <= split):
        t = y[layer][0].float().numpy()
        c, h, w = t.shape
        if quantize:
            lo = t.reshape(c, -1).min(1)
            hi = t.reshape(c, -1).max(1)
            scale = np.maximum(hi - lo, 1e-8) / 255.0
            q = np.clip(np.round((t - lo[:, None, None]) / scale[:, None, None]), 0, 255)
            data = q.astype(np.uint8).tobytes() + np.stack([scale, lo], 1).astype(
                np.float32).tobytes()
            dt = 'u8'
        else:
            data, dt = t.astype(np.float16).tobytes(), 'f16'
        chunks.append(data)
        m.layout.dim.append(MultiArrayDimension(label=f'{layer}:{dt}:{c}x{h}x{w}',
                                                size=len(data), stride=0))
    g = f'lb:{lb.scale!r}:{lb.pad_x}:{lb.pad_y}:{lb.in_h}:{lb.in_w}:{lb.src_h}:{lb.src_w}'
    m.layout.dim.append(MultiArrayDimension(label=g, size=0, stride=0))
    m.data = b''.join(chunks)
    return m


def unpack_features(m):
    """Inverse of ``pack_features``: ({layer: tensor}, Letterbox)."""
    from fluxshard_kernels.yolo.processing import Letterbox
    y, off, lb = {}, 0, None
    buf = bytes(m.data)
    for d in m.layout.dim:
        if d.label.startswith('lb:'):
            p = d.label.split(':')[1:]
            lb = Letterbox(float(p[0]), *(int(v) for v in p[1:]))
            continue
        layer, dt, shape = d.label.split(':')
        c, h, w = (int(v) for v in shape.split('x'))
        data = buf[off:off + d.size]
        off += d.size
        if dt == 'u8':
            q = np.frombuffer(data[:c * h * w], np.uint8).reshape(c, h, w).astype(np.float32)
            sl = np.frombuffer(data[c * h * w:], np.float32).reshape(c, 2)
            t = q * sl[:, 0, None, None] + sl[:, 1, None, None]
        else:
            t = np.frombuffer(data, np.float16).reshape(c, h, w).astype(np.float32)
        y[int(layer)] = torch.from_numpy(np.ascontiguousarray(t))[None]
    return y, lb


def overlaps(prof) -> bool:
    """Whether a profile's edge runs local inference beside its critical path: the paper's
    Table 1 edge (a Jetson: the GPU infers while the CPU extracts and codes) or a profile
    measured on CUDA; a CPU-only robot's inference and front end share the cores."""
    return prof.kind == 'paper' or str(prof.meta.get('device', '')).startswith('cuda')


def make(name: str, model, edge_id: str, link: sim.LinkSpec, profile=None, **kw) -> Method:
    """A fresh method instance by name (see ``METHODS``), its device times modelled on
    ``profile`` (a ``DeviceProfile``; None = the paper's Table 1); ``fps``: the camera rate a
    video stream is coded for."""
    fps = kw.pop('fps', 30.0)
    kw['profile'] = profile
    if name == 'fluxshard':
        return FluxShard(model, edge_id, link, **kw)
    if name in ('no-ata', 'no-ms-comp'):
        return FluxShard(model, edge_id, link, ablation=name, **kw)
    if name == 'full-offload':
        return FullOffload(model, edge_id, link, profile)
    if name == 'full-offload-png':
        return FullOffload(model, edge_id, link, profile, fmt='png')
    if name == 'deltacnn':
        return DeltaCNN(model, edge_id, link, **kw)
    if name.startswith('video-offload-crf') and name[17:].isdigit():
        return VideoOffload(model, edge_id, link, profile, crf=int(name[17:]),
                            fps=fps)
    if name.startswith('video-offload-roi-crf') and name[21:].isdigit():
        return VideoOffload(model, edge_id, link, profile, crf=int(name[21:]), fps=fps,
                            roi_qoffset=EdgeConfig.roi_qoffset)
    if name == 'video-offload-vbv':  # capped CRF 23, VBV at the link's median rate
        return VideoOffload(model, edge_id, link, profile, 23, link.median_mbps,
                            fps)
    if name == 'edge-only':
        return EdgeOnly(model, edge_id, link, profile)
    if name in ('spinn', 'coach'):
        return Split(model, edge_id, link, profile, quantize=name == 'coach')
    raise ValueError(f'unknown method {name!r}; one of {", ".join(METHODS)}')
