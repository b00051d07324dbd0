"""The edge without ROS: pipeline (paper Algorithm 1), the server link protocol (ACKs, resync
requests, digests, availability, probes), offloaded frames awaiting a result, counters. One
lock guards the state the critical worker and the feedback callbacks share. ``edge_node``
only declares, subscribes, converts and publishes; tests drive this class directly."""

from collections import Counter, deque, OrderedDict
from dataclasses import dataclass, field
import threading
import time
from typing import Any, List, Optional, Tuple

import numpy as np

from fluxshard_edge.feedback import ResyncGuard, ServerLink
from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline, EdgeStep

#: Offloads whose median send -> inference-done time is checked against the latency bound.
OFFLOAD_WINDOW = 5

#: ProxyDelta kinds (fluxshard_msgs/ProxyDelta constants; a test checks they agree)
KIND_ACK, KIND_RESYNC_REQUEST, KIND_INFERENCE_DONE, KIND_RESET = 0, 1, 2, 3


@dataclass
class Frame:
    """One camera frame on the critical path."""

    index: int
    header: Any
    image: np.ndarray
    codec_mvs: Optional[np.ndarray] = None


@dataclass
class Processed:
    """What the worker must publish for one frame."""

    step: Optional[EdgeStep] = None
    link: str = 'ok'  # ServerLink.poll() before the frame
    recovered: List[Tuple[Frame, Any]] = field(default_factory=list)  # (frame, local result)


class EdgeRuntime:
    """Edge state and protocol. Methods are the events: ``process`` (a frame, worker thread),
    ``on_resync_request`` / ``on_ack`` / ``on_inference_done`` / ``on_server_result``
    (feedback callbacks), ``reconfigure`` (live parameters, applied between frames)."""

    def __init__(self, config: EdgeConfig, ack_timeout_s: float = 1.0,
                 resync_rate_hz: float = 0.5, resync_burst: int = 2, model=None):
        self.config = config
        self.pipeline = EdgePipeline(config, model)
        self.server = ServerLink(ack_timeout_s)
        self.resync = ResyncGuard(resync_rate_hz, resync_burst)
        self.counters = Counter()
        self._seq_of_index = {}  # camera frame index -> batch seq of the frames offloaded
        self.rejects = Counter()
        self.lock = threading.RLock()
        #: the local device: an overlapped local job (``run_local``) or a recovery computes
        #: on it, one at a time (taken after ``lock``, never before it)
        self.device = threading.Lock()
        self._device_jobs = 0      # overlapped local jobs handed out and not finished
        self._device_until = 0.0   # their predicted end (monotonic seconds)
        self.last_frame: Optional[Frame] = None
        self.last: dict = {}
        self._awaiting = OrderedDict()  # seq -> Frame offloaded for inference, no result yet
        self._skipped = {}  # skip token -> Frame not sent, waiting for its proxy frame's result
        self._bridged = {}  # bridge token -> Frame waiting for the busy device's result
        self._prev_stamp = None         # (frame index, stamp s) of the last frame processed
        self.ack_timeout_s = ack_timeout_s
        # the server batches are addressed to ('' = any server of this edge: static); with
        # ``no_server`` (fleet mode, none chosen) frames are computed here and nothing is sent
        self.server_id = ''
        self.no_server = False
        self.offload_s = deque(maxlen=OFFLOAD_WINDOW)  # send -> inference done, s

    # -- between frames ----------------------------------------------------------------------
    def reconfigure(self, **changes):
        with self.lock:
            self.pipeline.reconfigure(**changes)
            self.config = self.pipeline.config

    def close(self):
        self.pipeline.close()

    # -- feedback (callbacks) -----------------------------------------------------------------
    def on_resync_request(self, seq: int, reason: str, now: float) -> str:
        """'stale' (a key after ``seq`` is on its way), 'limited' (over the resync budget),
        'resync' (the next batch is a key; resend the last frame if nothing newer waits) or
        'pending' (a key batch is already requested)."""
        with self.lock:
            self.counters['resync_requests'] += 1
            if seq < self.pipeline.last_key_seq:
                return 'stale'
            if not self.resync.allow(now):
                self.counters['resync_limited'] += 1
                return 'limited'
            ok = self.pipeline.request_resync(f'server: {reason}', seq)
            return 'resync' if ok else 'pending'

    def on_ack(self, seq: int, digest: bytes, server_receive_s: float, now: float) -> str:
        """'ok', 'unknown' (not a batch this edge remembers), 'mismatch' (a key batch follows)
        or 'limited' (mismatch, but over the resync budget)."""
        ack = self.server.ack(seq, digest, server_receive_s, now)
        if ack is None:
            return 'unknown'
        with self.lock:
            self.pipeline.scheduler.bw.observe(ack.nbytes, ack.seconds, ack.spacing_s)
            if ack.digest_ok:
                self.counters['acks'] += 1
                return 'ok'
            self.counters['digest_mismatch'] += 1
            if not self.resync.allow(now):
                self.counters['resync_limited'] += 1
                return 'limited'
            self.pipeline.request_resync(f'digest mismatch at seq {seq}', seq)
            return 'mismatch'

    def move_to(self, server_id: str, reason: str) -> Optional[Frame]:
        """Address the next batches to ``server_id`` ('' with ``no_server``: none): a fresh
        link state, a key batch first (the new server's proxy converges by digest). Returns the
        newest frame offloaded to the old server without a result, to be offered again (the
        older ones are counted ``lost_offloaded``)."""
        with self.lock:
            self.counters['server_moves'] += 1
            self.server_id = server_id
            self.server = ServerLink(self.ack_timeout_s)
            self.offload_s.clear()
            self.pipeline.request_resync(f'moved to server {server_id or "(none)"}: {reason}')
            frames = list(self._awaiting.values())
            self._awaiting.clear()
            self.counters['lost_offloaded'] += max(len(frames) - 1, 0)
            self._expire_skips()
            return frames[-1] if frames else None

    def _expire_skips(self):
        """The frames not sent that wait for results which will not come now: counted
        ``skipped_lost`` (their proxy frame was offloaded to a server that is gone)."""
        gate = self.pipeline.skip
        self._claim(self._skipped, (), gate.expire([w[0] for w in gate.waiting]),
                    'skipped_lost')

    def _claim(self, waiting: dict, ready, lost, counter: str) -> list:
        """Frames of ``waiting`` (token -> frame: skipped or bridged, waiting for the result
        they move) handed their ``ready`` (token, moved result): returns (frame, result) to
        publish; those of the ``lost`` tokens, or handed no result, are counted ``counter``
        (no frame is dropped silently)."""
        for tok in lost:
            if waiting.pop(tok, None) is not None:
                self.counters[counter] += 1
        out = []
        for tok, moved in ready:
            frame = waiting.pop(tok, None)
            if frame is None:
                continue
            if moved is None:
                self.counters[counter] += 1
            else:
                out.append((frame, moved))
        return out

    def offload_latency_s(self) -> Optional[float]:
        """Median send -> inference-done time of the last offloads to this server (None
        before ``OFFLOAD_WINDOW`` of them)."""
        with self.lock:
            if len(self.offload_s) < self.offload_s.maxlen:
                return None
            return float(np.median(self.offload_s))

    def on_inference_done(self, seq: int, blocks: int, compute_s: float,
                          now: Optional[float] = None):
        sent = self.server.sent_at(seq)
        with self.lock:
            if sent is not None and seq in self._awaiting:
                now = time.monotonic() if now is None else now
                self.offload_s.append(now - sent)
            for s in [s for s in self._awaiting if s <= seq]:
                del self._awaiting[s]
            if self.config.fit_latency:
                # the server reports every block of the frame when it ran a dense runtime
                n = self.pipeline.n_blocks
                self.pipeline.scheduler.cloud.observe(int(blocks), float(compute_s),
                                                      dense=n > 0 and int(blocks) >= n)

    def on_server_result(self, det, frame_index: Optional[int] = None) -> list:
        """The server's result (for the camera frame ``frame_index`` when known). Returns
        (frame, result) of the frames not sent that waited for it, to publish now."""
        with self.lock:
            self.pipeline.last_result = det
            self.counters['server_results'] += 1
            seq = self._seq_of_index.get(frame_index)
            if seq is None:
                return []
            ready = self.pipeline.observe_server_result(seq, det)
            q = self.pipeline.quality
            if q is not None:
                self.counters['quality_probes'] = q.samples  # probes with both results in
            return self._claim(self._skipped, ready, (), 'skipped_lost')

    # -- critical path (worker) ---------------------------------------------------------------
    def process(self, frame: Frame, now: Optional[float] = None) -> Processed:
        """Algorithm 1 on one frame, after the link check; offloaded frames left without a
        result by a server that went away are computed here first (newest only; older ones
        are counted ``lost_offloaded``). While an overlapped local job still runs
        (``device_busy_s``) the step may be deferred: counted ``deferred_device_busy``, and
        the caller hands the frame over again once the device is free; a step that returns
        a ``local_job`` is the caller's to run with ``run_local``."""
        now = time.monotonic() if now is None else now
        t0 = time.perf_counter()
        out = Processed(link=self.server.poll(now))
        with self.lock:
            self.last_frame = frame
            if out.link == 'lost':
                out.recovered = self._recover()
            elif out.link == 'probe':
                # a key batch (also served locally) that a returning server can apply
                self.pipeline.request_resync('probing the server')
                self.counters['probes'] += 1
            self.pipeline.cloud_available = self.server.available and not self.no_server
            self._observe_camera(frame)
            sch = self.pipeline.scheduler
            sch.queue_s = self.server.backlog_s(now, sch.bw.bps)
            step = self.pipeline.step(frame.image, frame.codec_mvs, self.device_busy_s(now),
                                      camera_index=frame.index)
            out.step = step
            if step.local_job is not None:
                self._device_jobs += 1
                self._device_until = now + step.local_eta_s
            if step.deferred:
                self.counters['deferred_device_busy'] += 1
                self.last['bridge'] = self.pipeline.bridge.last_reason  # why not bridged
            else:
                self._account(step, frame, t0, now)
        return out

    def device_busy_s(self, now: Optional[float] = None) -> float:
        """Seconds the overlapped local jobs still need (predicted; 0: the device is free)."""
        with self.lock:
            if not self._device_jobs:
                return 0.0
            now = time.monotonic() if now is None else now
            return max(1e-3, self._device_until - now)

    def run_local(self, step: EdgeStep):
        """An overlapped step's local job (on the device's thread), then its accounting.
        The caller publishes its result, then ``bridge_done`` (the frames bridged onto it)."""
        try:
            with self.device:
                local_s = step.local_job()
            with self.lock:
                self.last['local_ms'] = round(1e3 * local_s, 2)
                self._account_local(step)
        finally:
            with self.lock:
                self._device_jobs -= 1

    def bridge_done(self, step: EdgeStep, failed: bool = False) -> list:
        """The overlapped local job of ``step`` is over and its result published: returns
        (frame, result) of the frames bridged onto it, to publish now (newer than its frame);
        a failed job's (or one without a result) are counted ``bridged_lost``."""
        with self.lock:
            if failed or step.local_result is None:
                toks = self.pipeline.bridge.expire([step.job_frame])
                ready = []
            else:
                toks, ready = [], self.pipeline.bridge_done(step)
            return self._claim(self._bridged, ready, toks, 'bridged_lost')

    def _observe_camera(self, frame: Frame):
        """The camera's frame interval from the stamps and indices of the frames taken (the
        frames the latest-wins slot skipped count in the index): the scheduler's wait."""
        st = getattr(frame.header, 'stamp', None)
        if st is None:
            return
        t = st.sec + st.nanosec * 1e-9
        prev, self._prev_stamp = self._prev_stamp, (frame.index, t)
        if prev is None or frame.index <= prev[0]:
            return
        dt = (t - prev[1]) / (frame.index - prev[0])
        if 0 < dt < 10:
            sch = self.pipeline.scheduler
            old = sch.frame_interval_s
            sch.frame_interval_s = dt if old is None else 0.8 * old + 0.2 * dt

    def _recover(self):
        self._expire_skips()
        if not self._awaiting:
            return []
        frames = list(self._awaiting.values())
        self._awaiting.clear()
        self.counters['lost_offloaded'] += len(frames) - 1
        newest = frames[-1]
        if newest.image.shape[2] != 3 or self.pipeline.runner is None:
            self.counters['lost_offloaded'] += 1
            return []
        with self.device:
            det = self.pipeline.compute_locally(newest.image)
        self.counters['recovered_locally'] += 1
        return [(newest, det)]

    def _account(self, step: EdgeStep, frame: Frame, t0: float, now: float):
        dec, c = step.decision, self.counters
        c[f'decision_{dec.strategy}'] += 1
        if step.skipped:  # not sent: the proxy frame's result moved (now or when it comes)
            c['frames_skipped'] += 1
            if step.local_result is None:
                self._skipped[step.skip_token] = frame
        elif step.bridged:  # the busy device's frame's result moved (now or when it is done)
            c['frames_bridged'] += 1
            if step.local_result is None:
                self._bridged[step.skip_token] = frame
        elif step.sends and self.no_server:
            c['batches_no_server'] += 1  # fleet mode with no server to address: not sent
        elif step.sends:
            # sent now: the frame's processing time is not transfer time
            sent_at = now + (time.perf_counter() - t0)
            self.server.sent(step.seq, step.digest, len(step.payload), sent_at)
            if step.sparse_inference_requested:
                self._seq_of_index[frame.index] = step.seq
                while len(self._seq_of_index) > 64:
                    self._seq_of_index.pop(next(iter(self._seq_of_index)))
                self._awaiting[step.seq] = frame
                while len(self._awaiting) > 64:
                    self._awaiting.popitem(last=False)
                    c['lost_offloaded'] += 1
            if step.key:
                c['key_batches'] += 1
                c['key_bytes'] += len(step.payload)
            c['batches_sent'] += 1
            c['bytes_sent'] += len(step.payload)
            c['blocks_sent'] += len(step.update.block_indices)
        elif step.local_result is None and step.local_job is None:
            c['no_result_no_batch'] += 1
        p = self.pipeline
        self.last = dict(step.timings, total_ms=1e3 * (time.perf_counter() - t0),
                         decision=dec.strategy, k_edge=dec.k_edge, k_cloud=dec.k_cloud,
                         n_labs=dec.n_edge, n_cobs=dec.n_cloud,
                         ea_edge=round(dec.ea_edge, 4), ea_cloud=round(dec.ea_cloud, 4),
                         bandwidth_mbps=round(dec.bandwidth_bps * 8 / 1e6, 2),
                         link_latency_ms=round(1e3 * p.scheduler.bw.latency_s, 1),
                         hit_ratio=round(step.hit_ratio, 3),
                         frames_since_refresh=p._since_refresh, payload_crf=p.crf,
                         skip=p.skip.last_reason, bridge=p.bridge.last_reason)
        if p.quality is not None:  # the CRF floor from the results (payload.target_retention)
            self.last.update(quality_floor_crf=p.quality.crf,
                             quality_retention=round(p.quality.last_retention, 3))
            c['quality_probes'] = p.quality.samples
        if step.local_job is None:
            self._account_local(step)

    def _account_local(self, step: EdgeStep):
        p = self.pipeline
        if self.config.local_inference and getattr(p, 'last_stats', None):
            self.last['mac_ratio'] = round(p.last_stats.mac_ratio, 3)
        if step.local_result is not None and p.last_path:
            self.counters[f'path.{p.last_path}'] += 1  # which local runtime served the frame
            self.last['local_path'] = p.last_path
