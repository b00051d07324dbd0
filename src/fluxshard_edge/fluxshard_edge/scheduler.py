"""Scheduler and task allocation (paper section 4.2): effective accuracy
EA = (A k / N) e^{-lambda T} maximised in closed form for the edge (eq. 2) and the cloud
(eq. 1), with latency models a k^2 + b k + c fitted online from measured timings and the
bandwidth estimated from transfers."""

from collections import deque
from dataclasses import dataclass
import math
from typing import Optional

import numpy as np

from fluxshard_kernels.profile import fit_quadratic, PAPER

#: The paper's Table 1 (YOLOv11): Jetson Xavier NX edge, RTX 3080 cloud; seconds, k in blocks
#: (``fluxshard_kernels.profile.PAPER``; measured profiles come from a profile file).
PROFILES = {
    'xavier_nx': PAPER.edge.abc,
    'rtx3080': PAPER.server.abc,
    # full-scale (dense) execution whatever k: the paper's No-MS-Comp ablation
    'xavier_nx_dense': (0.0, 0.0, PAPER.edge.dense_s),
    'rtx3080_dense': (0.0, 0.0, PAPER.server.dense_s),
}


#: An IDR unit's bytes over an inter unit's (x264 zero latency on camera footage), to seed the
#: per-batch cost from a key batch before any inter unit was sent.
KEY_OVER_INTER = 4.0


class LatencyModel:
    """t(k) = a k^2 + b k + c seconds, seeded from a profile and refitted (least squares, a and
    b kept >= 0) from the last ``window`` measured (k, t) pairs once they span 3 distinct k.

    ``cap``: the side's dense runtime (a side whose ``auto`` backend runs onnxruntime when
    that is faster, an engine that falls back to its dense pass): t(k) never exceeds it. It is
    re-measured from samples marked ``dense`` (their median), and starts with the first such
    sample when no profile gave one."""

    def __init__(self, a: float, b: float, c: float, window: int = 64,
                 cap: Optional[float] = None):
        self.a, self.b, self.c = float(a), float(b), float(c)
        self.cap = None if cap is None else float(cap)
        self.samples = deque(maxlen=window)
        self.dense_samples = deque(maxlen=16)

    def quadratic(self, k: float) -> float:
        return self.a * k * k + self.b * k + self.c

    def __call__(self, k: float) -> float:
        t = self.quadratic(k)
        return t if self.cap is None else min(t, self.cap)

    def observe(self, k: int, seconds: float, dense: bool = False):
        """A measured time for ``k`` blocks; ``dense``: the side ran its dense runtime (the
        time of the cap, whatever k)."""
        if dense:  # a side that starts running a dense runtime gets its cap from it
            self.dense_samples.append(float(seconds))
            self.cap = float(np.median(self.dense_samples))
            return
        self.samples.append((float(k), float(seconds)))
        ks = [s[0] for s in self.samples]
        if len(set(ks)) >= 3:
            self.a, self.b, self.c = fit_quadratic(ks, [s[1] for s in self.samples])


class BandwidthEstimator:
    """Uplink bandwidth ``bps`` (bytes/s) and fixed round-trip overhead ``latency_s`` from
    transfer timings (bytes, seconds from send to ACK).

    A timing is ``latency + bytes / bandwidth`` plus noise: the fixed part (propagation, the
    peer's processing, executor wake-ups) dominates small messages on fast links, so dividing
    bytes by the round trip would mistake a busy peer for a slow link. Once the last ``window``
    timings span message sizes (largest >= 1.5x smallest) the two are separated by a robust line
    fit (Theil-Sen slope, refitted on the timings at or below the first line: a busy peer only
    adds time; median intercept); a size dependence below the timing noise means the
    link is not the bottleneck and the estimate rises to ``max_bps``. Until then (and for a
    window of one size) ``bps`` is bytes / seconds summed over the window's messages of >= 2000
    bytes. A message sent before the previous one's ACK is timed by the fixed part plus the
    spacing of the two ACKs (``observe(..., spacing_s)``): its wait behind the previous one is
    not the link's rate.
    """

    def __init__(self, initial_bps: float, window: int = 32, max_bps: float = 1.25e9):
        self.bps = float(initial_bps)
        self.prior_bps = float(initial_bps)  # the configured rate, until timings separate
        self.latency_s = 0.0
        self.max_bps = max_bps
        self.samples = 0
        self._win = deque(maxlen=window)

    def observe(self, nbytes: int, seconds: float, spacing_s: Optional[float] = None):
        """One timing: ``seconds`` from send to ACK. ``spacing_s``, for a message sent while
        the previous one was still on the link, is the time between their ACKs: queued behind
        it, the message's own share of the round trip is the fixed part plus that spacing (the
        rest is the wait, which would make big early messages look like a slow link and the
        small ones queued behind them like a fast one)."""
        if seconds <= 0 or nbytes <= 0:
            return
        spacing = float(spacing_s) if spacing_s is not None and spacing_s > 0 else math.inf
        self._win.append((float(nbytes), float(seconds), spacing))
        self.samples += 1
        if self._fit():
            return
        # before the sizes span enough for a fit: the fixed part is what the fastest timing
        # leaves beyond its transfer at the configured rate (so the round trip is seen from
        # the first ACK on), the rate what the big messages take beyond it
        n, t = self._timings()
        self.latency_s = float(max(np.min(t - n / self.prior_bps), 0.0))
        big = n >= 2000  # tiny messages measure latency only
        if big.any():
            wire = float(t[big].sum()) - self.latency_s * int(big.sum())
            if wire > 0:
                self.bps = float(n[big].sum()) / wire

    def _timings(self, slope: Optional[float] = None):
        """The window's sizes and timings, a queued message's timing being the fixed part
        plus its ACK spacing. The fixed part is what the messages sent on an idle link take
        beyond their transfer at ``slope`` seconds per byte (by default the queued messages'
        median spacing per byte), and at most any round trip seen."""
        n = np.array([w[0] for w in self._win])
        t = np.array([w[1] for w in self._win])
        s = np.array([w[2] for w in self._win])
        q = np.isfinite(s)
        if not q.any():
            return n, t
        if slope is None:
            slope = float(np.median(s[q] / n[q]))
        fixed = float(t.min())
        if not q.all():
            fixed = min(fixed, max(float(np.median(t[~q] - slope * n[~q])), 0.0))
        return n, np.minimum(t, fixed + s)

    def _fit(self) -> bool:
        if len(self._win) < 6:
            return False
        n, t = self._timings()
        if n.max() < 1.5 * n.min():
            return False
        if not self._fit_line(n, t):
            return False
        # again with the queued timings' fixed part from the fitted rate
        self._fit_line(*self._timings(0.0 if self.bps >= self.max_bps else 1.0 / self.bps))
        return True

    def _fit_line(self, n, t) -> bool:
        # Theil-Sen: the median slope over pairs whose sizes differ by >= 20 %, robust to the
        # occasional stalled round trip
        i, j = np.triu_indices(len(n), 1)
        dn = n[j] - n[i]
        keep = np.abs(dn) >= 0.2 * np.maximum(n[i], n[j])
        if keep.sum() < 3:
            return False
        slope = float(np.median((t[j] - t[i])[keep] / dn[keep]))
        # a busy peer only ever adds time, and the big messages (key batches, the first of a
        # stream) meet the busiest moments: refit the slope on the timings at or below the
        # first line, the link's lower envelope
        low = t - slope * n <= np.median(t - slope * n)
        lk = keep & low[i] & low[j]
        if lk.sum() >= 3:
            slope = float(np.median((t[j] - t[i])[lk] / dn[lk]))
        slope = max(slope, 0.0)
        self.latency_s = float(max(np.median(t - slope * n), 0.0))
        self.bps = self.max_bps if slope * self.max_bps <= 1.0 else 1.0 / slope
        return True


def k_star(a: float, b: float, lam: float, per_block_s: float = 0.0) -> float:
    """argmax_k of k e^{-lam (a k^2 + (b + per_block_s) k)}: paper eqs. (1)-(2)."""
    bb = b + per_block_s
    if a <= 0:
        return math.inf if bb <= 0 else 1.0 / (lam * bb)
    return (-bb + math.sqrt(bb * bb + 8 * a / lam)) / (4 * a)


@dataclass
class Decision:
    """The scheduler's choice for one frame."""

    strategy: str          # 'edge' or 'cloud'
    k_edge: int
    k_cloud: int
    ea_edge: float
    ea_cloud: float
    t_edge: float
    t_cloud: float
    n_edge: int
    n_cloud: int
    bandwidth_bps: float
    bytes_per_block: float


class Scheduler:
    """Chooses between local sparse inference on k_edge LABs and offloading k_cloud COBs.

    Args:
        edge, cloud: latency models (seconds as a function of blocks).
        bandwidth: uplink estimator; lam: time decay lambda (1/s); accuracy_*: per-block A.
        tau_wait: fixed overhead (extraction + scheduling), seconds.
        bytes_per_block: initial payload size per block S (refined from sent batches).
    """

    def __init__(self, edge: LatencyModel, cloud: LatencyModel, bandwidth: BandwidthEstimator,
                 lam: float = 10.0, accuracy_edge: float = 1.0, accuracy_cloud: float = 1.0,
                 tau_wait: float = 0.005, bytes_per_block: float = 400.0):
        if lam <= 0:
            raise ValueError('lambda must be > 0')
        self.edge, self.cloud, self.bw = edge, cloud, bandwidth
        self.lam, self.acc_e, self.acc_c = lam, accuracy_edge, accuracy_cloud
        self.tau_wait = tau_wait
        self.bytes_per_block = bytes_per_block
        #: bytes of a batch whatever k (an H.264 unit codes the whole frame: observe_unit)
        self.batch_bytes = 0.0
        self._units = 0
        #: seconds the link is still busy with earlier messages (set before each decision)
        self.queue_s = 0.0
        #: the camera's frame interval, seconds (None: unknown, waits not modelled)
        self.frame_interval_s: Optional[float] = None
        #: local inference runs beside the critical path (``scheduler.overlap_local``)
        self.overlap = False

    def observe_payload(self, nbytes: int, blocks: int):
        """A sent payload of ``nbytes`` carrying ``blocks`` blocks (its size grows with k)."""
        if blocks > 0:
            self.bytes_per_block = 0.8 * self.bytes_per_block + 0.2 * nbytes / blocks
            self.batch_bytes = 0.0

    def observe_unit(self, nbytes: int, key: bool = False):
        """A sent payload that codes the whole frame whatever k (an H.264 unit): its bytes
        are a per-batch cost; an inter unit refines the estimate, a key unit only seeds it."""
        if key and self._units:
            return
        if key:  # an IDR unit is several inter units' worth (x264, zero latency: ~4x)
            nbytes = nbytes / KEY_OVER_INTER
        self.batch_bytes = float(nbytes) if not self._units else \
            0.7 * self.batch_bytes + 0.3 * nbytes
        self._units += not key
        self.bytes_per_block = 0.0

    def wait(self, busy_s: float) -> float:
        """What keeping the edge ``busy_s`` per frame adds to the age of the result a
        consumer holds (the latest frame wins): below the camera's frame interval, the mean
        residual busy time a frame finds; above it, half a frame interval of waiting plus half
        the extra time between results (the frames skipped meanwhile), busy_s / 2 in all."""
        p = self.frame_interval_s
        if not p or busy_s <= 0:
            return 0.0
        return busy_s / 2 if busy_s >= p else busy_s * busy_s / (2 * p)

    def t_cloud(self, k: float) -> float:
        """Expected latency of offloading k blocks: the edge's share (extraction, the wait for
        the link, the transfer, which a reliable publish blocks on), the round trip and the
        server, plus the wait of a frame for an edge kept that busy."""
        transfer = (self.batch_bytes + self.bytes_per_block * k) / max(self.bw.bps, 1.0)
        busy = self.tau_wait + self.queue_s + transfer
        return busy + self.bw.latency_s + self.cloud(k) + self.wait(busy)

    def t_edge(self, k: float) -> float:
        """Expected latency of computing k blocks locally, with the wait for the edge; with
        ``overlap`` the frames that arrive meanwhile are offloaded or wait for the device
        themselves (``decide(edge_wait_s=)``), so no frame is skipped for it."""
        busy = self.tau_wait + self.edge(k)
        return busy + (0.0 if self.overlap else self.wait(busy))

    def decide(self, n_edge: int, n_cloud: int, edge_available: bool = True,
               cloud_available: bool = True, adaptive: bool = True,
               edge_wait_s: float = 0.0) -> Decision:
        """Closed-form k* for both sides, clamped to [0, N], and the strategy with higher EA.

        ``edge_wait_s``: the local device is busy that much longer (overlapped local
        inference); computing this frame locally waits for it.

        With ``adaptive`` False (the paper's No-ATA ablation) k is N on both sides: every
        missed block is recomputed or offloaded.

        With nothing to compute (N = 0) on a side, its EA is that of k = 0 at full accuracy
        (the cached result is current), so an all-hit frame stays local and sends nothing.
        """
        s_over_b = self.bytes_per_block / max(self.bw.bps, 1.0)
        ke = int(min(max(k_star(self.edge.a, self.edge.b, self.lam), 0.0), n_edge) + 0.5)
        kc = int(min(max(k_star(self.cloud.a, self.cloud.b, self.lam, s_over_b), 0.0),
                     n_cloud) + 0.5)
        ke, kc = min(ke, n_edge), min(kc, n_cloud)
        if not adaptive:
            ke, kc = n_edge, n_cloud

        def ea_edge(k):
            return (self.acc_e * (k / n_edge if n_edge else 1.0)) * math.exp(
                -self.lam * (edge_wait_s + self.t_edge(k)))

        def ea_cloud(k):
            return (self.acc_c * (k / n_cloud if n_cloud else 1.0)) * math.exp(
                -self.lam * self.t_cloud(k))
        # a capped side (its dense runtime is as fast as the curve) may do best with all its
        # blocks: the closed form knows only the curve
        if adaptive and self.edge.cap is not None and ea_edge(n_edge) > ea_edge(ke):
            ke = n_edge
        if adaptive and self.cloud.cap is not None and ea_cloud(n_cloud) > ea_cloud(kc):
            kc = n_cloud
        te, tc = edge_wait_s + self.t_edge(ke), self.t_cloud(kc)
        ea_e, ea_c = ea_edge(ke), ea_cloud(kc)
        if not edge_available:
            ea_e = -1.0
        if not cloud_available:
            ea_c = -1.0
        strategy = 'edge' if ea_e >= ea_c else 'cloud'
        return Decision(strategy, ke, kc, ea_e, ea_c, te, tc, n_edge, n_cloud, self.bw.bps,
                        self.bytes_per_block)

    def opportunistic_blocks(self, deadline_s: float, local_s: float, n_cloud: int) -> int:
        """COBs that fit the idle link while the edge computes (paper 4.4, last paragraph)."""
        room = max(deadline_s, local_s) - self.tau_wait - self.queue_s
        if room <= 0 or n_cloud <= 0:
            return 0
        room -= self.batch_bytes / max(self.bw.bps, 1.0)
        if room <= 0:
            return 0
        if self.bytes_per_block <= 0:  # the batch's size does not grow with k
            return n_cloud
        return int(min(n_cloud, room * self.bw.bps / self.bytes_per_block))
