"""The per-frame plan of the incremental engine: which feature pixels and blocks change at each
layer, and which cached pixels the block motion moves (paper sections 4.3-4.4).

Built once per frame on the host (numpy, OpenCV), shared by every layer: with the paper's
motion-triggered halo all layers of one stride share one changed-pixel set, so a frame needs a
handful of masks, block index lists and warp plans, whatever the depth of the network, and no
layer asks the device for a count (no host syncs inside the network).
"""

from dataclasses import dataclass
from typing import Dict, Optional

import cv2
import numpy as np
import torch

from fluxshard_kernels import compiled
from fluxshard_kernels.blocks import BlockGrid


@dataclass
class ActiveBlocks:
    """The blocks of one grid that hold a changed pixel.

    Attributes:
        mask: (rows, cols) bool tensor on the engine's device.
        rows, cols: int64 numpy indices of the active blocks (row-major order).
        frac: active fraction of the grid.
        array: the mask as a numpy array.
    """

    mask: torch.Tensor
    rows: np.ndarray
    cols: np.ndarray
    frac: float
    array: np.ndarray

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def idx(self):
        return self.rows, self.cols


@dataclass
class WarpPlan:
    """The moving pixels of a map at one stride: destination (ys, xs), int32, and the clamped
    source coordinates (sy, sx), float32 feature pixels."""

    ys: np.ndarray
    xs: np.ndarray
    sy: np.ndarray
    sx: np.ndarray

    @property
    def count(self) -> int:
        return len(self.ys)


def pool_any(m: np.ndarray, s: int, hh: int = 0, ww: int = 0) -> np.ndarray:
    """(h, w) bool -> (hh, ww) (default ceil(h/s), ceil(w/s)): any pixel of each s x s cell
    (cells beyond the map are empty)."""
    h, w = m.shape
    hh, ww = hh or -(-h // s), ww or -(-w // s)
    if s == 1 and (hh, ww) == (h, w):
        return m
    if compiled.available() and m.dtype == bool and m.flags.c_contiguous:  # one pass in C
        out = np.empty((hh, ww), bool)
        compiled._fx().pool_any(m.ctypes.data, h, w, s, out.ctypes.data, hh, ww)
        return out
    if s == 2 and (hh, ww) == (-(-h // 2), -(-w // 2)):  # four strided views: 5x faster
        if h % 2 or w % 2:
            m = np.pad(m, ((0, h % 2), (0, w % 2)))
        return (m[0::2, 0::2] | m[1::2, 0::2]) | (m[0::2, 1::2] | m[1::2, 1::2])
    pad = np.zeros((hh * s, ww * s), bool)
    pad[:min(h, hh * s), :min(w, ww * s)] = m[:hh * s, :ww * s]
    # rows first, then columns: two reductions over contiguous runs (fast in numpy)
    return pad.reshape(hh, s, ww * s).any(axis=1).reshape(hh, ww, s).any(axis=2)


def dilate(m: np.ndarray, r: int) -> np.ndarray:
    """(h, w) bool grown by ``r`` pixels (a (2r+1)^2 square; outside the map counts as
    unchanged, as a max-pool with padding)."""
    if r <= 0:
        return m
    return cv2.dilate(m.view(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).view(bool)


def fit(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """``m`` cropped or zero-padded to (h, w)."""
    if m.shape == (h, w):
        return m
    out = np.zeros((h, w), bool)
    hh, ww = min(h, m.shape[0]), min(w, m.shape[1])
    out[:hh, :ww] = m[:hh, :ww]
    return out


class FramePlan:
    """Active sets of one frame (see the module docstring).

    Args:
        input_mask: (h, w) bool numpy array, the changed pixels at the network input.
        halo_px: the motion-triggered halo, input pixels.
        device: where the engine's tensors live.
    """

    def __init__(self, input_mask: Optional[np.ndarray], halo_px: int, device):
        self.input_mask = input_mask
        self.halo_px = halo_px
        self.device = device
        self._px: Dict[tuple, torch.Tensor] = {}
        self._pool: Dict[int, np.ndarray] = {1: input_mask}
        self._np: Dict[int, np.ndarray] = {}  # id(pixel tensor) -> its numpy twin
        self._blocks: Dict[tuple, ActiveBlocks] = {}
        self._keep = []  # tensors whose id() keys the dicts stay alive for the frame
        self.warps: Dict[tuple, Optional[WarpPlan]] = {}

    def pixels(self, stride: int, shape) -> torch.Tensor:
        """Changed pixels of a layer of ``stride`` and output ``shape``: the input's changed
        pixels pooled to the stride, grown by the halo (``halo_px`` / stride)."""
        key = (stride, tuple(shape))
        px = self._px.get(key)
        if px is None:
            h, w = shape
            m = fit(self._pooled(stride), h, w)
            m = dilate(np.ascontiguousarray(m), int(round(self.halo_px / stride)))
            px = self._px[key] = torch.from_numpy(m).to(self.device)
            self._np[id(px)] = m
        return px

    def _pooled(self, stride: int) -> np.ndarray:
        """The input's changed pixels pooled to ``stride`` (any pixel of each cell), before
        the halo: a power-of-two stride from the half stride's (ceil(ceil(h / 2) / 2) =
        ceil(h / 4): the same cells), each once per frame."""
        m = self._pool.get(stride)
        if m is None:
            if stride > 1 and stride % 2 == 0 and stride & (stride - 1) == 0:
                m = pool_any(self._pooled(stride // 2), 2)
            else:
                m = pool_any(self.input_mask, stride)
            self._pool[stride] = m
        return m

    def blocks(self, px: torch.Tensor, b: int, rows: int, cols: int) -> ActiveBlocks:
        """The blocks of ``b`` feature pixels on a rows x cols grid holding a pixel of ``px``
        (once per mask and grid per frame)."""
        key = (id(px), b, rows, cols)
        ab = self._blocks.get(key)
        if ab is None:
            m = self._np.get(id(px))
            if m is None:  # a mask the plan did not make (exact halo): one host copy
                m = px.detach().cpu().numpy().astype(bool)
                self._keep.append(px)
            bm = pool_any(m, b, rows, cols)
            r, c = np.nonzero(bm)
            ab = self._blocks[key] = ActiveBlocks(
                torch.from_numpy(bm).to(self.device), r.astype(np.int64), c.astype(np.int64),
                float(bm.mean()), bm)
        return ab

    def warp(self, mv: np.ndarray, grid: BlockGrid, stride: int, h: int, w: int,
             skip: Optional[ActiveBlocks], b: int) -> Optional[WarpPlan]:
        """The pixels of an h x w map at ``stride`` that the block MVs move, less the ``skip``
        blocks (recomputed right after); None when nothing moves. Feature pixel (i, j) takes
        the MV of the image block holding pixel (i * stride, j * stride), divided by the
        stride, and reads from its clamped source (bilinear where fractional)."""
        key = (stride, h, w, None if skip is None else id(skip.mask), b)
        if key in self.warps:
            return self.warps[key]
        base = self._moving(mv, grid, stride, h, w)
        plan = base
        if base is not None and skip is not None:
            sk = skip.array  # feature pixel (i, j) lies in skip block (i // b, j // b)
            keep = ~sk[np.minimum(base.ys // b, sk.shape[0] - 1),
                       np.minimum(base.xs // b, sk.shape[1] - 1)]
            plan = None if not keep.any() else base if keep.all() else WarpPlan(
                base.ys[keep], base.xs[keep], base.sy[keep], base.sx[keep])
        self.warps[key] = plan
        return plan

    def _moving(self, mv: np.ndarray, grid: BlockGrid, stride: int, h: int, w: int
                ) -> Optional[WarpPlan]:
        """Every moving pixel of an h x w map at ``stride`` (no blocks skipped): once per
        stride and frame, shared by that stride's layers, which drop their own skip blocks
        from it."""
        key = ('all', stride, h, w)
        if key in self.warps:
            return self.warps[key]
        field = np.asarray(mv, np.float32).reshape(grid.rows, grid.cols, 2)
        if compiled.available():  # one pass in C over the moving blocks
            plan = _moving_c(field, grid, stride, h, w)
        else:
            plan = _moving_np(field, grid, stride, h, w)
        self.warps[key] = plan
        return plan


def _moving_c(field: np.ndarray, grid: BlockGrid, stride: int, h: int, w: int
              ) -> Optional[WarpPlan]:
    field = np.ascontiguousarray(field, np.float32)
    ys, xs = np.empty(h * w, np.int32), np.empty(h * w, np.int32)
    sy, sx = np.empty(h * w, np.float32), np.empty(h * w, np.float32)
    n = compiled._fx().warp_plan(field.ctypes.data, grid.rows, grid.cols, grid.block_size,
                                 stride, h, w, ys.ctypes.data, xs.ctypes.data, sy.ctypes.data,
                                 sx.ctypes.data)
    return WarpPlan(ys[:n], xs[:n], sy[:n], sx[:n]) if n else None


def _moving_np(field: np.ndarray, grid: BlockGrid, stride: int, h: int, w: int
               ) -> Optional[WarpPlan]:
    """The reference of ``_moving_c`` (numpy; the same pixels in the same order)."""
    br, bc = np.nonzero(np.any(field != 0, axis=2))
    if not len(br):
        return None
    # the feature rows holding image block row r are one run: r = min(i * stride // block,
    # rows - 1) is monotonic in i (likewise columns); each moving block is a rectangle
    bs = grid.block_size
    r_start = np.minimum(np.searchsorted((np.arange(h) * stride) // bs,
                                         np.arange(grid.rows + 1)), h)
    r_start[grid.rows] = h  # rows beyond the grid take its last block row
    c_start = np.minimum(np.searchsorted((np.arange(w) * stride) // bs,
                                         np.arange(grid.cols + 1)), w)
    c_start[grid.cols] = w
    y0, x0 = r_start[br], c_start[bc]
    hh = r_start[br + 1] - y0
    ww = c_start[bc + 1] - x0
    count = hh * ww
    total = int(count.sum())
    if not total:
        return None
    k = np.repeat(np.arange(len(br)), count)
    off = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    ys = y0[k] + off // ww[k]
    xs = x0[k] + off % ww[k]
    f = field[br[k], bc[k]] / np.float32(stride)
    sy = np.clip(ys.astype(np.float32) + f[:, 1], 0, h - 1).astype(np.float32)
    sx = np.clip(xs.astype(np.float32) + f[:, 0], 0, w - 1).astype(np.float32)
    return WarpPlan(ys.astype(np.int32), xs.astype(np.int32), sy, sx)
