"""The payload's quality from what the results need (issue 21): the robot measures what its
results lose to the link's side and codes as coarsely as keeps them.

Every ``every`` offloaded frames, the dense runtime on the robot (onnxruntime) runs in the
background on the true frame; when the server's result for that frame comes back, the
object-pooled AP@0.5 of it against the robot's is the retention the offloaded path delivers
now - the codec, its ROI map and the server's incremental engine together. While it stays at
or above ``target`` over the samples since the last change the CRF goes ``STEP_UP`` coarser;
a sample below takes it ``STEP_DOWN`` finer at once. Where the loss is not the codec's, the
floor simply stays at the finest CRF (what it was without this). A robot whose link is slow
still gets the link's coarser CRF (``EdgePipeline._link_crf``): this is the floor the
results set, so bits are not spent on quality that no result uses.
"""

from concurrent.futures import ThreadPoolExecutor
import math
from typing import Callable

import numpy as np

from fluxshard_kernels import metrics
from fluxshard_kernels.yolo.processing import Detections as _Ref


class QualityControl:
    """Args:
        detect: image (H, W, 3) uint8 -> Detections (the robot's dense runtime).
        target: retention of the server's results against the true frame's (0..1).
        lo, hi: the finest and coarsest CRF.
        every: offloaded frames between probes.
        sync: run the reference passes inline (deterministic replays; may be set later).
    """

    #: CRF steps: coarser after SETTLE samples at or above the target, finer at once below it
    STEP_UP = 3
    STEP_DOWN = 3
    SETTLE = 2
    #: probes waiting for their server result at most (older ones are dropped)
    MAX_PENDING = 4

    def __init__(self, detect: Callable, target: float, lo: int, hi: int, every: int = 10,
                 sync: bool = False):
        if not 0 < target <= 1:
            raise ValueError(f'target retention must be in (0, 1], got {target}')
        if every < 1:
            raise ValueError(f'probe interval must be >= 1 frame, got {every}')
        self.detect, self.target, self.every, self.sync = detect, target, every, sync
        self.lo, self.hi = int(lo), max(int(lo), int(hi))
        self.crf = self.lo
        self.started = 0              # reference passes run
        self.samples = 0              # probes completed
        self.last_retention = math.nan
        self._acc = metrics.APAccumulator(0.5)  # the samples since the last change
        self._n = 0
        self._since = every - 1       # the first offloaded frame is probed
        self._pending = {}  # key -> [reference (or its future), server result, crf]
        self._pool = None             # the background thread, from the first probe on

    def bounds(self, lo: int, hi: int):
        """New finest / coarsest CRF (live parameters): the floor is kept inside."""
        self.lo, self.hi = int(lo), max(int(lo), int(hi))
        self._change(min(max(self.crf, self.lo), self.hi))

    def offer(self, key, frame: np.ndarray, crf: int):
        """Frame ``key`` (the batch sequence) was offloaded coded at ``crf``; its server
        result will come to ``observe``."""
        self._since += 1
        if self._since < self.every or len(self._pending) >= self.MAX_PENDING or \
                crf != self.crf:
            return  # a unit at another CRF (a key, the link's) says nothing of the floor
        self._since = 0
        self.started += 1
        if self.sync:
            self._pending[key] = [self.detect(frame), None, crf]
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix='quality')
        self._pending[key] = [self._pool.submit(self.detect, frame.copy()), None, crf]

    def observe(self, key, det):
        """The server's result for frame ``key``."""
        if key in self._pending:
            self._pending[key][1] = det
            self.poll()

    def poll(self) -> int:
        """Take the samples whose two results are in; the CRF floor now."""
        for key in list(self._pending):
            ref, det, crf = self._pending[key]
            if det is None:
                continue
            if not isinstance(ref, _Ref):
                if not ref.done():
                    continue
                ref = ref.result()
            del self._pending[key]
            self._take(ref, det, crf)
        while len(self._pending) > self.MAX_PENDING:  # results that never came (superseded)
            self._pending.pop(next(iter(self._pending)))
        return self.crf

    def _take(self, ref, det, crf):
        self.samples += 1
        if crf != self.crf:
            return  # measured before the last change
        sim = metrics.box_iou(det.boxes, ref.boxes)
        self._acc.add_pooled(sim, det.class_ids, det.scores, ref.class_ids)
        self._n += 1
        r = self._acc.value()
        self.last_retention = r
        if math.isnan(r):
            return  # no reference object yet: nothing learned
        if r < self.target:
            self._change(max(self.lo, self.crf - self.STEP_DOWN))
        elif self._n >= self.SETTLE:
            self._change(min(self.hi, self.crf + self.STEP_UP))

    def _change(self, crf: int):
        self.crf = crf
        self._acc = metrics.APAccumulator(0.5)
        self._n = 0

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
