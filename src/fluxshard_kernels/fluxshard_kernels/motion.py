"""Block motion estimation (paper section 4.1): hierarchical block matching, searched around
predicted MVs, giving per block an integer MV, its dissimilarity D and hit/miss against tau.

Coarse pass on a downsampled pyramid level (1/4 for blocks >= 16, 1/2 for 8), predictors: zero,
the previous field, far probes up to +-32 px, and the already-searched left/top/top-right
neighbours; a small-diamond walk and an 8-neighbour check. Fine pass at full resolution from the
upsampled coarse MV and the previous field. The kernel is C (``csrc/motion.c``, via ctypes);
``_search_reference`` is the same algorithm in Python, for tests and as a fallback.
"""

from dataclasses import dataclass
import ctypes
import functools
from typing import Optional

import cv2
import numpy as np

from fluxshard_kernels.blocks import BlockGrid

#: Far probes of the coarse pass, in coarse pixels (x4 or x2 at full resolution).
_FAR = np.array([(4, 0), (-4, 0), (0, 4), (0, -4), (4, 4), (-4, 4), (4, -4), (-4, -4),
                 (8, 0), (-8, 0), (0, 8), (0, -8)], np.int32)
_DIAMOND_ITERS = 16
#: Share of the blocks within ``STILL_PX`` of zero motion from which a frame's background
#: counts as still (``mixed``).
STILL_SHARE = 2 / 3
#: How far (px, per axis) a block's MV may sit from zero and still count as still: a robot's
#: vibrating camera and sensor noise jitter block matching by a pixel (sam2-bedroom: 48 % of
#: its blocks at exactly zero motion, 71 % within 1 px).
STILL_PX = 1
#: Default motion-edge threshold of ``mixed`` (px) for the engine, the edge's local path and
#: the server (issue 19): on the still-camera clips it kept every dense detection scoring
#: >= 0.5 (bgs-highway 7.5 -> 75.0 % retention, all objects; 0.45 -> 0.70x of onnxruntime's
#: time), 8 px kept fewer (60.8 %), 2 px no more (66.7 %) at more blocks (docs/engine.md).
MIXED_PX = 4.0


@dataclass
class MotionField:
    """Per-block motion of a frame against a reference.

    Attributes:
        grid: the block grid.
        mv: (rows, cols, 2) int32 (dx, dy), source = destination + mv, pixels.
        dissimilarity: (rows, cols) float32 D, mean absolute luma difference (0-255).
    """

    grid: BlockGrid
    mv: np.ndarray
    dissimilarity: np.ndarray

    def hits(self, tau: float) -> np.ndarray:
        """(rows, cols) bool: D < tau (reusable blocks)."""
        return self.dissimilarity < tau

    def misses(self, tau: float, independent_px: float = 0.0,
               mixed_px: float = 0.0) -> np.ndarray:
        """Row-major indices of blocks with D >= tau (or, with ``independent_px``, moving
        independently of their neighbourhood; with ``mixed_px``, next to a motion edge in a
        still scene), most dissimilar first."""
        d = self.dissimilarity.reshape(-1)
        miss = d >= tau
        extra = self.extra_misses(independent_px, mixed_px)
        if extra is not None:
            miss |= extra.reshape(-1)
        idx = np.flatnonzero(miss)
        return idx[np.argsort(-d[idx], kind='stable')]

    def extra_misses(self, independent_px: float = 0.0,
                     mixed_px: float = 0.0) -> Optional[np.ndarray]:
        """(rows, cols) bool: the blocks the motion itself marks for recomputation, whatever
        their D (None when both rules are off)."""
        out = None
        if independent_px:
            out = self.independent(independent_px)
        if mixed_px:
            m = self.mixed(mixed_px)
            out = m if out is None else out | m
        return out

    def mixed(self, px: float, radius: int = 1, still: float = STILL_SHARE) -> np.ndarray:
        """(rows, cols) bool: in a still scene (at least ``still`` of the blocks within
        ``STILL_PX`` of zero motion: a still camera, shaking by a pixel or not), the blocks
        with a neighbour within ``radius`` blocks whose MV differs by >= ``px``. Their
        receptive fields mix content that moves differently (an object and the still
        background it crosses), so no warp of the cached features is right: the image can
        match well while the features do not (a car on a highway kept 7.5 % of the dense
        detections with the D test alone). On a moving camera block-matching noise and
        parallax put such edges everywhere: nothing is marked there, and D decides alone (a
        gate on the dominant motion instead, which also opens on clean pans, opened on some
        davis-bmx-trees frames and raised the server's recomputed blocks there from 42.7 to
        58.4 % for no retention, docs/engine.md)."""
        from numpy.lib.stride_tricks import sliding_window_view
        out = np.zeros(self.mv.shape[:2], bool)
        if self.still_share() < still:
            return out
        k = 2 * radius + 1
        pad = np.pad(self.mv, ((radius, radius), (radius, radius), (0, 0)), mode='edge')
        win = sliding_window_view(pad, (k, k), axis=(0, 1))  # rows, cols, 2, k, k
        return np.abs(win - self.mv[..., None, None]).max(axis=(2, 3, 4)) >= px

    def still_share(self, tol: int = STILL_PX) -> float:
        """The share of the blocks whose MV is within ``tol`` px (per axis) of zero."""
        if self.mv.size == 0:
            return 0.0
        return float(np.mean(np.abs(self.mv).max(axis=2) <= tol))

    def independent(self, px: float, radius: int = 2) -> np.ndarray:
        """(rows, cols) bool: blocks whose MV differs by >= ``px`` from the median MV of their
        (2 radius + 1)^2 neighbourhood - objects moving against the background. Warping their
        cached features is unreliable (context changed), so they can be recomputed even when
        the image match is good (static cameras with small movers)."""
        from numpy.lib.stride_tricks import sliding_window_view
        k = 2 * radius + 1
        pad = np.pad(self.mv, ((radius, radius), (radius, radius), (0, 0)), mode='edge')
        win = sliding_window_view(pad, (k, k), axis=(0, 1))
        med = np.median(win.reshape(win.shape[0], win.shape[1], 2, -1), axis=3)
        return np.abs(self.mv - med).max(axis=2) >= px

    @property
    def mv_x(self) -> np.ndarray:
        return self.mv[..., 0].reshape(-1)

    @property
    def mv_y(self) -> np.ndarray:
        return self.mv[..., 1].reshape(-1)


def _lib():
    """The compiled kernel (ctypes), or None when it was not built."""
    from fluxshard_kernels import native
    i32p = np.ctypeslib.ndpointer(np.int32, flags='C')
    return native.load('fluxshard_kernels._motion', {'fs_block_search': [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, i32p, ctypes.c_int,
        ctypes.c_int, ctypes.c_int, i32p, np.ctypeslib.ndpointer(np.uint32, flags='C')]},
        'block matching runs the slow Python reference')


def _search(cur, ref_pad, pad, bsz, rows, cols, preds, limit, use_c=True):
    """One search pass; returns (mv (rows*cols, 2) int32, sad (rows*cols,) uint32)."""
    h, w = cur.shape
    preds = np.ascontiguousarray(preds, dtype=np.int32)
    npred = preds.shape[1]
    lib = _lib() if use_c else None
    if lib is None:
        return _search_reference(cur, ref_pad, pad, bsz, rows, cols, preds, limit)
    mv = np.zeros((rows * cols, 2), np.int32)
    sad = np.zeros(rows * cols, np.uint32)
    cur = np.ascontiguousarray(cur)
    origin = ref_pad.ctypes.data + pad * ref_pad.strides[0] + pad
    lib.fs_block_search(cur.ctypes.data, cur.strides[0], origin, ref_pad.strides[0], h, w, bsz,
                        rows, cols, preds.reshape(-1), npred, limit, _DIAMOND_ITERS, mv, sad)
    return mv, sad


def _search_reference(cur, ref_pad, pad, bsz, rows, cols, preds, limit):
    """Python twin of ``fs_block_search`` (same candidate order and tie-breaking)."""
    h, w = cur.shape
    mv = np.zeros((rows * cols, 2), np.int32)
    sad = np.zeros(rows * cols, np.uint32)
    cur16 = cur.astype(np.int32)
    ref16 = ref_pad.astype(np.int32)
    dia = [(0, -1), (-1, 0), (1, 0), (0, 1)]
    sq = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]
    for r in range(rows):
        for q in range(cols):
            b = r * cols + q
            y0, x0 = r * bsz, q * bsz
            bh, bw = min(bsz, h - y0), min(bsz, w - x0)
            blk = cur16[y0:y0 + bh, x0:x0 + bw]
            state = {'bx': 0, 'by': 0, 'best': None}

            def tryc(dx, dy):
                dx, dy = int(dx), int(dy)
                if abs(dx) > limit or abs(dy) > limit:
                    return
                if state['best'] is not None and (dx, dy) == (state['bx'], state['by']):
                    return
                ys, xs = pad + y0 + dy, pad + x0 + dx
                s = int(np.abs(blk - ref16[ys:ys + bh, xs:xs + bw]).sum())
                if state['best'] is None or s < state['best']:
                    state.update(bx=dx, by=dy, best=s)
            tryc(0, 0)
            for k in range(preds.shape[1]):
                tryc(*preds[b, k])
            if q > 0:
                tryc(*mv[b - 1])
            if r > 0:
                tryc(*mv[b - cols])
                if q + 1 < cols:
                    tryc(*mv[b - cols + 1])
            for _ in range(_DIAMOND_ITERS):
                cx, cy = state['bx'], state['by']
                for ox, oy in dia:
                    tryc(cx + ox, cy + oy)
                if (state['bx'], state['by']) == (cx, cy):
                    break
            cx, cy = state['bx'], state['by']
            for ox, oy in sq:
                tryc(cx + ox, cy + oy)
            mv[b] = (state['bx'], state['by'])
            sad[b] = state['best']
    return mv, sad


@functools.lru_cache(maxsize=16)
def _block_area(h: int, w: int, block_size: int) -> np.ndarray:
    """Pixels of each block inside an h x w frame (float32, flat; read-only, shared)."""
    grid = BlockGrid(h, w, block_size)
    ones = np.zeros(grid.padded_shape, np.float32)
    ones[:h, :w] = 1
    area = grid.block_view(ones).sum(axis=(1, 3)).reshape(-1)
    area.flags.writeable = False
    return area


def _block_sums(d: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """Sum of the uint8 (h, w) map ``d`` over each block of the map padded to whole blocks
    by edge replication (``BlockGrid.pad``), float32, flat, exact: the rows of a block row
    added first (contiguous), then each block's columns."""
    h, w = d.shape
    ph, pw = grid.padded_shape
    if (ph, pw) != (h, w):
        d = cv2.copyMakeBorder(d, 0, ph - h, 0, pw - w, cv2.BORDER_REPLICATE)
    bs = grid.block_size
    rows = d.reshape(grid.rows, bs, pw).sum(axis=1, dtype=np.uint32)
    return rows.reshape(grid.rows, grid.cols, bs).sum(axis=2).reshape(-1).astype(np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR or (H, W[, 1]) -> (H, W) uint8 luma."""
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(image.reshape(image.shape[0], image.shape[1]))


#: A block that is static up to noise (zero-motion mean absolute error <= STATIC_D, 0-255)
#: keeps zero motion unless a match is better by more than ZERO_BIAS: on flat or noisy
#: content a shifted match wins by noise alone, and a spurious MV makes the engine warp
#: features of a block that did not move. Blocks that change more (movers) keep their best
#: match. Measured (docs/engine.md, ``evaluate`` with and without ``--zero-bias 0``): fewer
#: engine MACs on six of seven clips, retention within 1.4 points either way.
ZERO_BIAS = 1.0
STATIC_D = 3.0


def estimate_motion(cur: np.ndarray, ref: np.ndarray, block_size: int = 16,
                    prev_mv: Optional[np.ndarray] = None, limit: int = 64,
                    use_c: bool = True, zero_bias: Optional[float] = None) -> MotionField:
    """Block MVs of ``cur`` against ``ref`` (both (H, W) uint8 luma or BGR).

    Args:
        cur, ref: frames of equal size.
        block_size: 8, 16 or 32.
        prev_mv: (rows, cols, 2) previous field used as predictor, or None.
        limit: largest |dx|, |dy| searched, pixels.
        use_c: use the C kernel when built (False forces the Python reference).
        zero_bias: a block static up to noise (``STATIC_D``) keeps zero motion unless the
            best match's mean absolute error is lower by more than this (0 = plain best match;
            None = ``ZERO_BIAS``).

    Returns:
        MotionField with D computed at full resolution.
    """
    cur, ref = to_gray(cur), to_gray(ref)
    if cur.shape != ref.shape:
        raise ValueError(f'frame {cur.shape} and reference {ref.shape} differ in size')
    if block_size not in (8, 16, 32):
        raise ValueError(f'block_size must be 8, 16 or 32, got {block_size}')
    h, w = cur.shape
    grid = BlockGrid(h, w, block_size)
    rows, cols = grid.rows, grid.cols
    if prev_mv is not None and prev_mv.shape != (rows, cols, 2):
        prev_mv = None  # geometry changed: no temporal prediction
    f = 4 if block_size >= 16 else 2
    bc = block_size // f
    ch, cw = -(-h // f), -(-w // f)
    cur_c = cv2.resize(cur, (cw, ch), interpolation=cv2.INTER_AREA)
    ref_c = cv2.resize(ref, (cw, ch), interpolation=cv2.INTER_AREA)
    lim_c = limit // f
    pad_c = lim_c + bc + 2
    ref_c_pad = cv2.copyMakeBorder(ref_c, pad_c, pad_c, pad_c, pad_c, cv2.BORDER_REPLICATE)
    n = rows * cols
    far = np.broadcast_to(_FAR, (n,) + _FAR.shape)
    if prev_mv is not None:
        pc = np.rint(prev_mv.reshape(n, 1, 2) / f).astype(np.int32)
        preds_c = np.concatenate([pc, far], 1)
    else:
        preds_c = far
    mv_c, _ = _search(cur_c, ref_c_pad, pad_c, bc, rows, cols, preds_c, lim_c, use_c)
    pad = limit + block_size + 2
    ref_pad = cv2.copyMakeBorder(ref, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    preds = [mv_c.reshape(n, 1, 2) * f]
    if prev_mv is not None:
        preds.append(prev_mv.reshape(n, 1, 2).astype(np.int32))
    mv, sad = _search(cur, ref_pad, pad, block_size, rows, cols, np.concatenate(preds, 1),
                      limit, use_c)
    area = _block_area(h, w, block_size)
    zero_bias = ZERO_BIAS if zero_bias is None else zero_bias
    if zero_bias > 0:
        sad0 = _block_sums(cv2.absdiff(cur, ref), grid)
        keep = (sad0 <= sad.reshape(-1) + zero_bias * area) & (sad0 <= STATIC_D * area)
        mv = mv.reshape(n, 2).copy()
        mv[keep] = 0
        sad = np.where(keep, sad0, sad.reshape(-1))
    return MotionField(grid, mv.reshape(rows, cols, 2), (sad / area).astype(
        np.float32).reshape(rows, cols))
