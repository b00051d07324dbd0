"""The payload's quality from what the results need (issue 21): the robot measures what the
codec costs its results and codes as coarsely as keeps them.

Every ``every`` sent frames, the dense runtime on the robot (onnxruntime) runs in the
background on the true frame and on the proxy the server received for it (the decoded unit,
ROI map included); the object-pooled AP@0.5 of the second against the first is the retention
the payload allows, apart from anything the server's engine adds. While it stays at or above
``target`` over the samples since the last change the CRF goes ``STEP_UP`` coarser; a
sample that falls below takes it ``STEP_DOWN`` finer at once. A robot whose link is slow
still gets the link's coarser CRF (``EdgePipeline._link_crf``); this is the floor the results
set, so bits are not spent on quality that no result uses.
"""

from concurrent.futures import ThreadPoolExecutor
import math
from typing import Callable

import numpy as np

from fluxshard_kernels import metrics


class QualityControl:
    """Args:
        detect: image (H, W, 3) uint8 -> Detections (the robot's dense runtime).
        target: retention of the proxy's results against the true frame's (0..1).
        lo, hi: the finest and coarsest CRF.
        every: sent frames between probes (a probe starts only when none is running).
        sync: run probes inline (deterministic replays).
    """

    #: CRF steps: coarser after SETTLE samples at or above the target, finer at once below it
    STEP_UP = 3
    STEP_DOWN = 3
    SETTLE = 2

    def __init__(self, detect: Callable, target: float, lo: int, hi: int, every: int = 10,
                 sync: bool = False):
        if not 0 < target <= 1:
            raise ValueError(f'target retention must be in (0, 1], got {target}')
        if every < 1:
            raise ValueError(f'probe interval must be >= 1 frame, got {every}')
        self.detect, self.target, self.every, self.sync = detect, target, every, sync
        self.lo, self.hi = int(lo), max(int(lo), int(hi))
        self.crf = self.lo
        self.samples = 0              # probes completed
        self.last_retention = math.nan
        self._acc = metrics.APAccumulator(0.5)  # the samples since the last change
        self._n = 0
        self._since = every - 1       # the first sent frame after a key is probed soon
        self._job = None
        self._pool = None if sync else ThreadPoolExecutor(1, thread_name_prefix='quality')

    def bounds(self, lo: int, hi: int):
        """New finest / coarsest CRF (live parameters): the floor is kept inside."""
        self.lo, self.hi = int(lo), max(int(lo), int(hi))
        self._change(min(max(self.crf, self.lo), self.hi))

    def offer(self, frame: np.ndarray, proxy_image: np.ndarray, crf: int):
        """A frame was sent coded at ``crf`` and the server now holds ``proxy_image``."""
        self._since += 1
        if self._since < self.every or self._job is not None or crf < self.crf:
            return  # a unit finer than the floor (a key) says little about the floor
        self._since = 0
        args = (frame.copy(), proxy_image.copy(), crf)
        if self.sync:
            self._take(self._probe(*args))
        else:
            self._job = self._pool.submit(self._probe, *args)

    def poll(self) -> int:
        """Take a finished probe (if any); the CRF floor now."""
        if self._job is not None and self._job.done():
            job, self._job = self._job, None
            self._take(job.result())
        return self.crf

    def _probe(self, frame, proxy_image, crf):
        return self.detect(frame), self.detect(proxy_image), crf

    def _take(self, out):
        ref, det, crf = out
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
