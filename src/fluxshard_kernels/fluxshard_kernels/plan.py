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

    def ptrs(self):
        """(address of rows, address of cols, count): the kernels' arguments, found once."""
        p = self.__dict__.get('_ptrs')
        if p is None:
            rows = self.rows = np.ascontiguousarray(self.rows, np.int64)
            cols = self.cols = np.ascontiguousarray(self.cols, np.int64)
            p = self.__dict__['_ptrs'] = (rows.__array_interface__['data'][0],
                                          cols.__array_interface__['data'][0], len(rows))
        return p


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


class CameraToNet:
    """Camera-grid block motion and misses -> the network input's MVs and changed-pixel mask
    for one geometry (camera grid, letterbox, network grid), built once and reused every frame.

    The mask is the miss blocks expanded to camera pixels, letterboxed with nearest-neighbour
    resampling and dilated by one pixel (a camera block shrunk below one network pixel must not
    vanish): ``miss_mask_reference`` does exactly that on the whole image; ``miss_mask`` gets the
    same pixels from the block grid through three column and three row lookups (a nearest
    resize is separable, and so is a 3 x 3 dilation) on the few distinct rows, then one row
    gather into the full mask.
    """

    def __init__(self, cam_grid: BlockGrid, lb, net_grid: BlockGrid):
        self.cam_grid, self.lb, self.net_grid = cam_grid, lb, net_grid
        bs = cam_grid.block_size
        # centre of each net block in camera pixels -> camera block (the MV of a net block)
        cy = ((np.arange(net_grid.rows) + 0.5) * net_grid.block_size - lb.pad_y) / lb.scale
        cx = ((np.arange(net_grid.cols) + 0.5) * net_grid.block_size - lb.pad_x) / lb.scale
        self._br = np.clip(cy // bs, 0, cam_grid.rows - 1).astype(np.int64)
        self._bc = np.clip(cx // bs, 0, cam_grid.cols - 1).astype(np.int64)
        self.nh, self.nw = lb.resized
        # the source row / column OpenCV's nearest resize reads for each resized one
        src_r = cv2.resize(np.arange(lb.src_h, dtype=np.float32)[:, None], (1, self.nh),
                           interpolation=cv2.INTER_NEAREST).reshape(-1).astype(np.int64)
        src_c = cv2.resize(np.arange(lb.src_w, dtype=np.float32)[None, :], (self.nw, 1),
                           interpolation=cv2.INTER_NEAREST).reshape(-1).astype(np.int64)
        # per network row / column and offset -1, 0, +1: the camera block it reads, or the
        # index of an all-zero row / column (outside the resized image)
        rows = np.stack(self._lookups(src_r // bs, lb.pad_y, lb.in_h, cam_grid.rows), 1)
        self._cols = self._lookups(src_c // bs, lb.pad_x, lb.in_w, cam_grid.cols)
        # network rows repeat a few patterns (one per distinct triple of camera block rows)
        sets, row_of = np.unique(rows, axis=0, return_inverse=True)
        self._row_sets = [np.ascontiguousarray(sets[:, i]) for i in range(3)]
        self._row_of = np.ascontiguousarray(row_of.reshape(-1))

    @staticmethod
    def _lookups(blk: np.ndarray, pad: int, size: int, none: int):
        out = []
        for d in (-1, 0, 1):
            i = np.arange(size) + d - pad  # resized index read by the dilation at offset d
            ok = (i >= 0) & (i < len(blk))
            out.append(np.ascontiguousarray(np.where(ok, blk[np.clip(i, 0, len(blk) - 1)],
                                                     none)))
        return out

    def mv(self, mv_cam: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """(net rows, net cols, 2) int32 input-px MVs, or None when nothing moves."""
        if mv_cam is None or not np.any(mv_cam):
            return None
        g = self.cam_grid
        mv = np.asarray(mv_cam).reshape(g.rows, g.cols, 2)
        return np.rint(mv[self._br][:, self._bc] * self.lb.scale).astype(np.int32)

    def miss_mask(self, miss_cam) -> np.ndarray:
        """(in_h, in_w) bool: the network pixels the camera blocks ``miss_cam`` change."""
        g = self.cam_grid
        grid = np.zeros((g.rows + 1, g.cols + 1), bool)  # + an all-zero row and column
        grid.reshape(-1)[_padded_index(np.asarray(miss_cam, np.int64), g.cols)] = True
        c = [np.take(grid, i, axis=1) for i in self._cols]
        cols = c[0] | c[1] | c[2]
        r = [np.take(cols, i, axis=0) for i in self._row_sets]
        return np.take(r[0] | r[1] | r[2], self._row_of, axis=0)

    def miss_mask_reference(self, miss_cam) -> np.ndarray:
        """``miss_mask`` on full images (the reference the tests compare with)."""
        g, lb, ng = self.cam_grid, self.lb, self.net_grid
        miss = np.zeros(g.count, np.uint8)
        miss[np.asarray(miss_cam, dtype=np.int64)] = 1
        small = cv2.resize(g.expand(miss), (self.nw, self.nh), interpolation=cv2.INTER_NEAREST)
        canvas = np.zeros(ng.padded_shape, np.uint8)
        canvas[lb.pad_y:lb.pad_y + self.nh, lb.pad_x:lb.pad_x + self.nw] = small
        canvas = cv2.dilate(canvas, np.ones((3, 3), np.uint8))
        return canvas[:lb.in_h, :lb.in_w] > 0


def _padded_index(idx: np.ndarray, cols: int) -> np.ndarray:
    """Row-major block indices of a grid with ``cols`` columns -> the same blocks in the grid
    with one more column."""
    return idx + idx // cols
