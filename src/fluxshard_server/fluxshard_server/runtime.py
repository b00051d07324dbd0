"""The server without ROS (paper Algorithm 2): per served edge its session (proxy state,
sequence and digest checks), admission gate (tags, replay, budgets) and model; the job table
(one latest-wins job per edge, round robin) and the refresh policy (other edges' background
refreshes pause while one edge's critical job runs). ``server_node`` only declares,
subscribes, converts and publishes; tests drive this class directly."""

from collections import Counter
from dataclasses import dataclass
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fluxshard_msgs_py import auth
from fluxshard_server.admission import Budget, EdgeGate
from fluxshard_server.inference import background_paused
from fluxshard_server.jobs import JobTable
from fluxshard_server.receive import receive_batch
from fluxshard_server.session import EdgeSession


#: An edge counts as served here while its batches arrived within this many seconds.
SERVING_S = 3.0
#: Weight of the newest job in the announced mean inference time.
INFER_EWMA = 0.2


@dataclass
class Job:
    """One edge's inference request: the proxy state after batch ``seq`` and its geometry."""

    header: Any
    frame_index: int
    state: np.ndarray
    seq: int
    mv: Optional[np.ndarray]
    prev_seq: Optional[int]
    block_size: int
    changed: Optional[np.ndarray]


@dataclass
class BatchOutcome:
    """What one BlockBatch led to. ``refused``: (counter, reason), dropped unanswered (forged,
    replayed, over budget); ``rejected``: (counter, reason, resync) from the session;
    ``ack``: applied, answer with an ACK of the new digest; ``superseded``: it replaced an
    untaken job of the same edge."""

    refused: Optional[Tuple[str, str]] = None
    rejected: Optional[Tuple[str, str, bool]] = None
    ack: bool = False
    job: Optional[Job] = None
    superseded: bool = False


class ServedEdge:
    """State of one served edge."""

    def __init__(self, edge_id: str, key: Optional[bytes], budget: Budget, max_age_s: float,
                 model):
        self.edge_id = edge_id
        self.session = EdgeSession(edge_id)
        self.gate = EdgeGate(key, budget, max_age_s)
        self.signer = auth.Signer(key, 'proxy_feedback') if key else None
        self.model = model
        self.counters = Counter()
        self.last_refused = -1e9  # monotonic time of the last refused (forged, over-budget)
        self.last_applied = -1e9  # monotonic time of the last batch applied


class ServerRuntime:
    """Sessions, admission, jobs and inference for the edges ``edge_ids``.

    Args:
        make_model: () -> a per-edge ``EdgeModel`` (may share weights).
        keys: edge id -> secret (security.mode mac), or None (no authentication).
    """

    def __init__(self, edge_ids: List[str], make_model: Callable[[], Any],
                 keys: Optional[Dict[str, bytes]], budget: Budget, max_age_s: float):
        self.edges = {e: ServedEdge(e, keys.get(e) if keys is not None else None, budget,
                                    max_age_s, make_model()) for e in edge_ids}
        self.jobs = JobTable(list(self.edges))
        self.counters = Counter()
        self.rejects = Counter()
        self.lock = threading.Lock()
        # load, for the fleet announcement: inference seconds so far, mean job time (ms)
        self.busy_s = 0.0
        self.infer_ms = 0.0

    def serving(self, now: float, window_s: float = SERVING_S) -> List[str]:
        """Edges whose batches were applied here in the last ``window_s`` seconds."""
        return sorted(e.edge_id for e in self.edges.values()
                      if now - e.last_applied < window_s)

    def on_batch(self, edge_id: str, msg, now: Optional[float] = None) -> BatchOutcome:
        """Admit, decode and apply one BlockBatch (per edge, in order)."""
        now = time.monotonic() if now is None else now
        e = self.edges[edge_id]
        with self.lock:
            self.counters['batches_in'] += 1
            e.counters['batches_in'] += 1
        refused = e.gate.admit_batch(msg, now)
        if refused:
            self._count_refused(e, refused[0], now)
            return BatchOutcome(refused=refused)
        e.counters['bytes_in'] += len(msg.payload)
        r = receive_batch(e.session, msg)
        out = BatchOutcome()
        if r.outcome.counter:
            self._count(e, r.outcome.counter)
            out.rejected = (r.outcome.counter, r.outcome.reason, r.outcome.resync)
        if not r.acked:
            return out
        e.counters['batches_ok'] += 1
        e.last_applied = now
        out.ack = True
        if r.infer:
            out.job = Job(msg.header, int(msg.frame_index), e.session.state, int(msg.seq), r.mv,
                          r.prev_seq, r.block_size, r.changed)
            if self.jobs.put(edge_id, out.job):
                out.superseded = True
                with self.lock:
                    self.counters['dropped_superseded'] += 1
                e.counters['dropped_superseded'] += 1
        return out

    def on_delta(self, edge_id: str, msg, reset_kind: int,
                 now: Optional[float] = None) -> Optional[Tuple[str, str]]:
        """Admit one ProxyDelta from the edge: (counter, reason) if refused; a RESET (kind
        ``reset_kind``) unsyncs the session (the next batch must be a key)."""
        e = self.edges[edge_id]
        refused = e.gate.admit_delta(msg)
        if refused:
            self._count_refused(e, f'delta.{refused[0]}', time.monotonic() if now is None
                                else now)
            return (f'delta.{refused[0]}', refused[1])
        if msg.kind == reset_kind:
            e.session.synced = False
        return None

    def _count(self, e: ServedEdge, counter: str):
        with self.lock:
            self.rejects[counter] += 1
        e.counters[f'rejected.{counter}'] += 1

    def _count_refused(self, e: ServedEdge, counter: str, now: float):
        self._count(e, counter)
        e.last_refused = now

    def take_job(self, timeout: float) -> Optional[Tuple[ServedEdge, Job]]:
        taken = self.jobs.take(timeout)
        if taken is None:
            return None
        return self.edges[taken[0]], taken[1]

    def infer(self, e: ServedEdge, job: Job):
        """Run ``job`` on its edge's model with every other edge's background refresh held:
        (detections, compute seconds, blocks recomputed)."""
        t0 = time.perf_counter()
        with background_paused([o.model for o in self.edges.values() if o is not e]):
            det = e.model(job.state, job.seq, job.mv, job.prev_seq, job.block_size,
                          job.changed)
        dt = time.perf_counter() - t0
        with self.lock:
            self.counters['inferences'] += 1
            self.counters['infer_ms_total'] += int(dt * 1000)
            self.busy_s += dt
            self.infer_ms = (1e3 * dt if not self.infer_ms else
                             (1 - INFER_EWMA) * self.infer_ms + INFER_EWMA * 1e3 * dt)
        e.counters['inferences'] += 1
        # blocks the server added to those the batch named (its drift test, motion edges)
        e.counters['blocks.drifted'] += e.model.last_drifted
        e.counters['blocks.mixed'] += e.model.last_mixed
        return det, dt, int(e.model.last_blocks)

    def close(self):
        self.jobs.close()
        for e in self.edges.values():
            e.model.close()
