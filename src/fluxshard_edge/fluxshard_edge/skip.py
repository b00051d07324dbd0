"""Frames the server does not need are not sent (issue 21; Reducto's idea, with a measured test).

A frame whose change since the proxy frame (the last frame sent for inference, whose result the
edge holds or awaits) cannot move any result is not sent: its result is the proxy frame's
result moved by the block motion field of this frame against the proxy (each object by the
median vector of the blocks it covers; keypoints and masks with it), computed on the edge and
published with ``computed_by`` ``motion``. Whether that holds is measured, not guessed:

* **Agreement by gap.** Every frame sent for inference is also predicted that way from the
  proxy frame's result; when its own result arrives, the prediction's object F1 against it
  (``metrics.agreement`` at IoU ``IOU``) is a sample for its gap (frames since the proxy
  frame). A frame at gap g is skipped only while the agreement at g reaches ``target``:
  measured recently at g, else interpolated between the measured gaps around it, else that of
  g - 1 (exploring one frame further). A skipped run ends with a send, whose result measures
  the run's gap; a gap not measured for ``STALE`` sends is measured again.
* **A change where no object was.** Misses (D >= tau against the proxy) outside the objects'
  blocks (the proxy result's boxes carried along the field, grown by a block) above twice their
  usual count at gap 1, plus ``SLACK`` blocks, end a skipped run: a new object entering.
* **A bound.** At most ``max_run`` frames in a row are skipped (``payload.skip_max``).

A skipped frame whose proxy result is still on its way waits for it (``waiting``); its result
is then published right after the proxy frame's, newer than it, so results stay in stamp order.
Nothing is predicted across a key batch or a batch sent without inference (the proxy frame then
has no result to move): ``sent`` says so.
"""

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np

from fluxshard_kernels import metrics, salience
from fluxshard_kernels.blocks import BlockGrid


def move_detections(det, mv, grid: BlockGrid):
    """``det`` of the reference frame moved to the current one by the block field ``mv``
    (source = destination + mv): each box by the median vector of its blocks, its keypoints
    and mask with it; boxes clipped to the frame."""
    if det is None or not len(det) or mv is None or not np.any(mv):
        return det
    old = np.asarray(det.boxes, np.float32).reshape(-1, 4)
    new = salience.project_boxes(old, mv, grid)
    shift = new[:, :2] - old[:, :2]  # (n, 2) dx, dy per object
    new[:, 0::2] = np.clip(new[:, 0::2], 0, grid.width)
    new[:, 1::2] = np.clip(new[:, 1::2], 0, grid.height)
    kpt = det.keypoints
    if kpt is not None and len(kpt):
        kpt = np.array(kpt, np.float32, copy=True)
        kpt[..., :2] += shift[:, None, :]
    masks = det.masks
    if masks is not None and len(masks):
        masks = np.stack([_shift_mask(m, int(round(dx)), int(round(dy)))
                          for m, (dx, dy) in zip(masks, shift)])
    return replace(det, boxes=new, keypoints=kpt, masks=masks)


def _shift_mask(m: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        m[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@dataclass
class _Sent:
    """A batch sent for inference: the field against its proxy frame, the gap, that frame's
    batch (whose result the prediction moves)."""

    mv: Optional[np.ndarray]
    grid: BlockGrid
    gap: int
    proxy_seq: int


class SkipGate:
    """The edge's skip decisions (see the module docstring).

    Args:
        target: agreement a skipped frame's moved result must have measured (0 = never skip).
        max_run: most frames in a row not sent.
        prior: another gate whose agreement stands in at a gap this one has not measured
            (the bridge gate, calibrated on local results, starts from the skip gate's,
            calibrated on the server's: how far moved results hold is the scene's motion,
            whoever computed them).
    """

    #: samples a gap needs before its agreement counts
    MIN_SAMPLES = 3
    #: weight of a new agreement sample
    GAIN = 0.3
    #: blocks of change outside the objects tolerated above twice the usual count
    SLACK = 2
    #: results and sends kept for calibration
    KEEP = 32
    #: a gap's agreement counts while it was measured within this many sends (then a frame at
    #: that gap is sent again, and measures it)
    STALE = 8
    #: IoU at which a moved object matches the result (stricter than the 0.5 of AP@0.5: a
    #: moved box that only just matches the server's may not match the dense one)
    IOU = 0.7

    def __init__(self, target: float = 0.0, max_run: int = 2,
                 prior: Optional['SkipGate'] = None):
        self.configure(target, max_run)
        self.prior = prior
        self.results: 'OrderedDict[int, object]' = OrderedDict()
        self._sent: 'OrderedDict[int, _Sent]' = OrderedDict()
        self.acc = {}  # gap -> [agreement EMA, samples, send count at the last sample]
        self._sends = 0
        self.run = 0
        self.baseline: Optional[float] = None  # misses outside the objects at gap 1 (EMA)
        self.waiting: List[Tuple[int, int, object, BlockGrid]] = []  # (seq, token, mv, grid)
        self._token = 0
        self.proxy_seq: Optional[int] = None
        self.proxy_frame = 0
        self.skipped = 0
        self.last_reason = ''

    def configure(self, target: float, max_run: int):
        if not 0 <= target <= 1:
            raise ValueError(f'skip target must be in 0..1, got {target}')
        if max_run < 0:
            raise ValueError(f'skip max run must be >= 0, got {max_run}')
        self.target, self.max_run = float(target), int(max_run)

    @property
    def enabled(self) -> bool:
        return self.target > 0 and self.max_run > 0

    def agreement(self, gap: int) -> Optional[float]:
        """The agreement a moved result at ``gap`` is expected to have (None: not known).
        A gap measured recently (``MIN_SAMPLES`` samples, the last within ``STALE`` sends)
        has its own; one between two measured gaps their linear interpolation; beyond the
        largest measured one, that one's when it is the next gap (exploring one further) and
        nothing otherwise; below the smallest, the smallest's. The ``prior`` gate's measured
        gaps count where this one has not measured them (a measurement at the gap itself
        says more than one carried from another gap)."""
        fresh = self._fresh()
        if self.prior is not None:
            fresh = {**self.prior._fresh(), **fresh}
        if gap in fresh:
            return fresh[gap]
        lo = max((g for g in fresh if g < gap), default=None)
        hi = min((g for g in fresh if g > gap), default=None)
        if lo is not None and hi is not None:
            return fresh[lo] + (fresh[hi] - fresh[lo]) * (gap - lo) / (hi - lo)
        if hi is not None:
            return fresh[hi]
        if lo is not None and gap == lo + 1:
            return fresh[lo]
        return None

    def _fresh(self) -> dict:
        """gap -> agreement of the gaps measured recently enough to count."""
        return {g: v[0] for g, v in self.acc.items()
                if v[1] >= self.MIN_SAMPLES and self._sends - v[2] <= self.STALE}

    def decide(self, frame_no: int, mv, d: np.ndarray, tau: float, grid: BlockGrid,
               hint=None) -> bool:
        """Skip camera frame ``frame_no`` (``mv``, ``d``: its block field and dissimilarity
        against the proxy)? ``hint``: the newest result the edge holds (its boxes stand in for
        the proxy frame's until that arrives). The reason is ``last_reason``."""
        why = self._why_not(frame_no, mv, d, tau, grid, hint)
        self.last_reason = why or 'skipped'
        if why:
            return False
        self.run += 1
        self.skipped += 1
        return True

    def precheck(self, frame_no: int) -> str:
        """Why camera frame ``frame_no`` cannot be skipped whatever its motion ('': it may
        be, or it is at gap 1, whose field ``decide`` learns from; only then is its block
        field worth searching). The same tests as ``decide`` without the field's. Sets
        ``last_reason``."""
        why = self._no_result()
        if not why and frame_no - self.proxy_frame != 1:
            why = self._beyond(frame_no - self.proxy_frame)
        if why:
            self.last_reason = why
        return why

    def _no_result(self) -> str:
        """Why nothing can be moved at all ('' when a proxy result is known)."""
        if not self.enabled:
            return 'off'
        if self.proxy_seq is None:
            return 'the proxy frame has no result'
        return ''

    def _beyond(self, gap: int) -> str:
        """Why a frame at ``gap`` may not be skipped whatever its field: the bound, or the
        agreement measured there ('' when both allow it)."""
        if self.run >= self.max_run:
            return f'{self.run} frames in a row not sent'
        a = self.agreement(gap)
        if a is None:
            return f'agreement at gap {gap} not measured'
        if a < self.target:
            return f'moved results at gap {gap} agree {a:.2f} < {self.target:g}'
        return ''

    def _why_not(self, frame_no, mv, d, tau, grid, hint) -> str:
        why = self._no_result()
        if why:
            return why
        gap = frame_no - self.proxy_frame
        det = self.results.get(self.proxy_seq, hint)
        boxes = np.zeros((0, 4), np.float32) if det is None else det.boxes
        inside = salience.object_blocks(boxes, grid, mv, grow=1)
        outside = int(np.count_nonzero((np.asarray(d) >= tau) & ~inside))
        if gap == 1:
            self.baseline = outside if self.baseline is None else \
                0.7 * self.baseline + 0.3 * outside
        why = self._beyond(gap)
        if why:
            return why
        if self.baseline is None or outside > 2 * self.baseline + self.SLACK:
            return f'{outside} changed blocks outside the objects'
        return ''

    def skip(self, mv, grid: BlockGrid):
        """The skipped frame's result: (moved result, 0) when the proxy frame's result is
        here, else (None, token) - ``result`` hands it over with that token when it comes."""
        det = self.results.get(self.proxy_seq)
        if det is not None:
            return move_detections(det, mv, grid), 0
        self._token += 1
        self.waiting.append((self.proxy_seq, self._token, mv, grid))
        return None, self._token

    def moved(self, token: int, det):
        """The result the waiting frame ``token`` will be handed when ``det``, its proxy
        frame's result, arrives (``result``); None when no such frame waits. The gate is not
        changed: a replay that knows the result before it reaches the robot asks this."""
        for _, tok, mv, grid in self.waiting:
            if tok == token:
                return None if det is None else move_detections(det, mv, grid)
        return None

    def sent(self, seq: int, frame_no: int, mv, grid: BlockGrid, infer: bool, key: bool):
        """A batch went out for camera frame ``frame_no``: the proxy now holds that frame;
        ``infer``: its result will come back."""
        self.run = 0
        self._sends += 1
        prev = self.proxy_seq
        if infer and not key and prev is not None:
            self._sent[seq] = _Sent(mv, grid, frame_no - self.proxy_frame, prev)
            while len(self._sent) > self.KEEP:
                self._sent.popitem(last=False)
        self.proxy_seq = seq if infer else None
        self.proxy_frame = frame_no

    def result(self, seq: int, det) -> List[Tuple[int, object]]:
        """The result of batch ``seq`` arrived: calibrates, and returns (token, moved result)
        of the skipped frames that waited for it."""
        self.results[seq] = det
        while len(self.results) > self.KEEP:
            self.results.popitem(last=False)
        for s, e in list(self._sent.items()):
            ref, base = self.results.get(s), self.results.get(e.proxy_seq)
            if ref is not None and base is not None:
                a = metrics.agreement(move_detections(base, e.mv, e.grid), ref, self.IOU)
                v = self.acc.setdefault(e.gap, [a, 0, 0])
                v[0] = a if v[1] == 0 else (1 - self.GAIN) * v[0] + self.GAIN * a
                v[1] += 1
                v[2] = self._sends
                del self._sent[s]
        out = [(tok, move_detections(det, mv, g)) for s, tok, mv, g in self.waiting if s == seq]
        self.waiting = [w for w in self.waiting if w[0] != seq]
        return out

    def expire(self, seqs) -> List[int]:
        """Tokens of the skipped frames waiting for results that will not come (the batches
        ``seqs`` were lost or answered nothing); they are dropped from the wait."""
        gone = set(seqs)
        if self.proxy_seq in gone:
            self.proxy_seq = None  # nothing to move until the next batch for inference
        out = [tok for s, tok, _, _ in self.waiting if s in gone]
        self.waiting = [w for w in self.waiting if w[0] not in gone]
        return out
