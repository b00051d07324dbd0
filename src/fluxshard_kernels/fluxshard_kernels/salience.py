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


def object_blocks(boxes: np.ndarray, grid: BlockGrid, mv=None, grow: int = 1) -> np.ndarray:
    """(count,) bool: the blocks the (n, 4) xyxy ``boxes`` of the previous frame cover, grown
    by ``grow`` blocks, carried along the block field ``mv`` to the current frame (a block is
    in when any of the up to four blocks its content came from was). Vectorised: ``boxes``
    may be thousands of candidate anchors."""
    bs = grid.block_size
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    diff = np.zeros((grid.rows + 1, grid.cols + 1), np.int32)  # 2-D difference array
    r0 = np.clip(b[:, 1] // bs - grow, 0, grid.rows).astype(int)
    r1 = np.clip(np.ceil(b[:, 3] / bs) + grow, 0, grid.rows).astype(int)
    c0 = np.clip(b[:, 0] // bs - grow, 0, grid.cols).astype(int)
    c1 = np.clip(np.ceil(b[:, 2] / bs) + grow, 0, grid.cols).astype(int)
    for r, c, v in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        np.add.at(diff, (r, c), v)
    was = diff.cumsum(0).cumsum(1)[:-1, :-1] > 0
    if mv is None or not np.any(mv):
        return was.reshape(-1)
    m = np.asarray(mv, np.float32).reshape(grid.rows, grid.cols, 2) / bs
    rows, cols = np.mgrid[0:grid.rows, 0:grid.cols]
    out = np.zeros_like(was)
    for dy in (np.floor(m[..., 1]), np.ceil(m[..., 1])):
        for dx in (np.floor(m[..., 0]), np.ceil(m[..., 0])):
            out |= was[np.clip(rows + dy.astype(int), 0, grid.rows - 1),
                       np.clip(cols + dx.astype(int), 0, grid.cols - 1)]
    return out.reshape(-1)


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
