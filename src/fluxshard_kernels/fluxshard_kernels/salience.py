"""Salience of blocks (paper section 1): the previous frame's detections projected through the MV
field onto the current frame; misses inside projected objects are recomputed first."""

import numpy as np

from fluxshard_kernels.blocks import BlockGrid


def project_boxes(boxes: np.ndarray, mv: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """Shift (n, 4) xyxy boxes of the previous frame to the current one: a block's content
    comes from block + mv, so objects move by -mv (median over the blocks they cover)."""
    out = np.asarray(boxes, np.float32).copy()
    if out.size == 0 or mv is None:
        return out
    m = np.asarray(mv).reshape(grid.rows, grid.cols, 2)
    bs = grid.block_size
    for i, (x1, y1, x2, y2) in enumerate(out):
        r0, r1 = int(max(0, y1 // bs)), int(min(grid.rows, y2 // bs + 1))
        c0, c1 = int(max(0, x1 // bs)), int(min(grid.cols, x2 // bs + 1))
        if r1 <= r0 or c1 <= c0:
            continue
        d = np.median(m[r0:r1, c0:c1].reshape(-1, 2), axis=0)
        out[i] -= np.array([d[0], d[1], d[0], d[1]], np.float32)
    return out


def salience_map(boxes: np.ndarray, scores: np.ndarray, grid: BlockGrid,
                 weight: float = 4.0) -> np.ndarray:
    """(count,) per-block weight: 1 outside objects, 1 + weight * score inside."""
    sal = np.ones((grid.rows, grid.cols), np.float32)
    bs = grid.block_size
    for (x1, y1, x2, y2), s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(scores)):
        r0, r1 = int(max(0, y1 // bs)), int(min(grid.rows, np.ceil(y2 / bs)))
        c0, c1 = int(max(0, x1 // bs)), int(min(grid.cols, np.ceil(x2 / bs)))
        if r1 > r0 and c1 > c0:
            sal[r0:r1, c0:c1] = np.maximum(sal[r0:r1, c0:c1], 1 + weight * float(s))
    return sal.reshape(-1)


def rank_misses(dissimilarity: np.ndarray, tau: float, salience=None, k=None,
                extra=None) -> np.ndarray:
    """Miss blocks (D >= tau, or ``extra`` True) ordered by D x salience, best first; the first
    ``k`` if given."""
    d = np.asarray(dissimilarity, np.float32).reshape(-1)
    miss = d >= tau
    if extra is not None:
        miss |= np.asarray(extra, bool).reshape(-1)
    idx = np.flatnonzero(miss)
    score = d[idx] * (salience[idx] if salience is not None else 1.0)
    idx = idx[np.argsort(-score, kind='stable')]
    return idx if k is None else idx[:max(0, int(k))]
