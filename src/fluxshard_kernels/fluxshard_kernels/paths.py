"""Which runtime serves a frame: the incremental engine or a dense runtime (onnxruntime), by
their measured costs. Used by the server's ``model.backend: auto`` and the edge's local path
(``model.backend: auto`` there too)."""

from collections import deque
from typing import Optional

import numpy as np

#: ``auto``: frames between runs of the path not chosen (its cost is re-measured).
PROBE_EVERY = 50


class PathCosts:
    """Measured per-frame cost of the two paths of the ``auto`` backend: the incremental pass
    as ``a k^2 + b k + c`` of the blocks it recomputes (least squares over its last samples),
    onnxruntime dense as the median of its last times. ``choose(k)`` is the path predicted
    faster for k blocks, except that a path not run for a while runs once to re-measure
    (after PROBE_FIRST frames, then twice as many each time, up to ``probe_every``; 0: never,
    for costs that are not measured), and each path runs until it has samples."""

    #: the first re-measure of the path not chosen comes after this many frames, each next one
    #: after twice as many, up to ``probe_every`` (a few slow first samples - a cold cache, a
    #: busy machine - are soon corrected instead of deciding the next ``probe_every`` frames)
    PROBE_FIRST = 4
    #: the incremental samples' block counts must span this share of the largest before a
    #: fit over them predicts other counts
    SPAN = 0.5

    def __init__(self, window: int = 16, probe_every: int = PROBE_EVERY):
        self.inc = deque(maxlen=window)
        self.dense = deque(maxlen=window)
        self.probe_every = probe_every
        self.since = {'incremental': 0, 'onnxruntime': 0}
        self.chosen = {'incremental': 0, 'onnxruntime': 0}
        self.probes = {'incremental': 0, 'onnxruntime': 0}  # re-measures so far
        self._seeded = set()  # paths whose samples are still a profile's seeds

    def predict_incremental(self, k: float) -> Optional[float]:
        if len(self.inc) < 2:
            return None
        ks, ts = zip(*self.inc)
        if len(set(ks)) < 3 or max(ks) - min(ks) < self.SPAN * max(ks):
            # samples of about one size say nothing of the slope: a quadratic through them
            # extrapolates wildly (measured live: three steps of 27-36 blocks at ~120 ms
            # predicted 2 s for 60 blocks, and the engine was never chosen again)
            return float(np.median(ts))
        from fluxshard_kernels.profile import fit_quadratic
        a, b, c = fit_quadratic(ks, ts)
        return a * k * k + b * k + c

    def faster(self, k: Optional[float], extra_s: float = 0.0) -> Optional[str]:
        """The path predicted faster for k blocks (no probing, no bookkeeping); None until
        both have samples. ``extra_s``: what the incremental path costs beyond the step
        itself and a dense-only step does not (the edge's full step: block motion, the
        decision, uploads), when that is still to be paid."""
        t_inc = self.predict_incremental(k if k is not None else 0)
        if t_inc is None or not self.dense:
            return None
        return ('incremental' if t_inc + extra_s < float(np.median(self.dense))
                else 'onnxruntime')

    def choose(self, k: Optional[float]) -> str:
        t_inc = self.predict_incremental(k if k is not None else 0)
        if not self.dense:
            path = 'onnxruntime'
        elif t_inc is None:
            path = 'incremental'
        else:
            path = 'incremental' if t_inc < float(np.median(self.dense)) else 'onnxruntime'
            other = 'onnxruntime' if path == 'incremental' else 'incremental'
            if self.probe_every and self.since[other] >= min(
                    self.probe_every, self.PROBE_FIRST << self.probes[other]):
                path = other
                self.probes[other] += 1
        self.note(path)
        return path

    def note(self, path: str):
        """Book a frame served on ``path`` (chosen here, or forced by the caller)."""
        for p in self.since:
            self.since[p] = 0 if p == path else self.since[p] + 1
        self.chosen[path] += 1

    def seed(self, role, blocks: int):
        """Start from a measured device profile's role (``profile.RoleProfile``: the
        incremental pass as a k^2 + b k + c over ``blocks`` camera blocks, onnxruntime dense
        ``dense_s``) instead of probing both paths on the first frames. The first real sample
        of a path replaces that path's seeds: a profile measured apart from the running nodes
        (other threads, no other process beside it) only says which path to try first."""
        for k in (0, blocks // 8, blocks // 4):
            self.inc.append((float(k), role.a * k * k + role.b * k + role.c))
        self.dense.append(float(role.dense_s))
        self._seeded = {'inc', 'dense'}

    def observe_incremental(self, k: int, seconds: float):
        if 'inc' in self._seeded:
            self._seeded.discard('inc')
            self.inc.clear()
        self.inc.append((float(k), float(seconds)))

    def observe_dense(self, seconds: float):
        if 'dense' in self._seeded:
            self._seeded.discard('dense')
            self.dense.clear()
        self.dense.append(float(seconds))
