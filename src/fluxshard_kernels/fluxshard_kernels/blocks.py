"""Block grid geometry: a frame as a row-major grid of square blocks (paper section 4.1)."""

from dataclasses import dataclass

import numpy as np

SUPPORTED_BLOCK_SIZES = (8, 16, 32)


@dataclass(frozen=True)
class BlockGrid:
    """A ``height`` x ``width`` frame cut into ``block_size`` blocks; border blocks may be partial.

    Attributes:
        height: frame height, pixels.
        width: frame width, pixels.
        block_size: block edge, pixels.
    """

    height: int
    width: int
    block_size: int

    def __post_init__(self):
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f'frame size must be positive, got {self.height}x{self.width}')
        if self.block_size <= 0:
            raise ValueError(f'block_size must be positive, got {self.block_size}')

    @property
    def rows(self) -> int:
        return -(-self.height // self.block_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.block_size)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def padded_shape(self) -> tuple:
        """(height, width) rounded up to whole blocks."""
        return self.rows * self.block_size, self.cols * self.block_size

    def block_rc(self, indices) -> tuple:
        """Row and column arrays of row-major block indices."""
        idx = np.asarray(indices, dtype=np.int64)
        return idx // self.cols, idx % self.cols

    def pad(self, image: np.ndarray) -> np.ndarray:
        """Image padded to whole blocks by edge replication (a view when nothing to pad).

        Args:
            image: (H, W) or (H, W, C) array with H, W equal to the grid's frame size.
        """
        ph, pw = self.padded_shape
        if image.shape[0] != self.height or image.shape[1] != self.width:
            raise ValueError(f'image is {image.shape[0]}x{image.shape[1]}, '
                             f'grid expects {self.height}x{self.width}')
        if (ph, pw) == (self.height, self.width):
            return image
        pad = [(0, ph - self.height), (0, pw - self.width)] + [(0, 0)] * (image.ndim - 2)
        return np.pad(image, pad, mode='edge')

    def block_view(self, padded: np.ndarray) -> np.ndarray:
        """(rows, bs, cols, bs, ...) view of a padded image (no copy)."""
        bs = self.block_size
        return padded.reshape((self.rows, bs, self.cols, bs) + padded.shape[2:])

    def expand(self, per_block: np.ndarray) -> np.ndarray:
        """Per-block values (count,) -> per-pixel map (height, width)."""
        grid = np.asarray(per_block).reshape(self.rows, self.cols)
        full = np.repeat(np.repeat(grid, self.block_size, axis=0), self.block_size, axis=1)
        return full[:self.height, :self.width]


def block_dissimilarity(a: np.ndarray, b: np.ndarray, grid: BlockGrid,
                        sub: int = 0) -> np.ndarray:
    """Per-block mean absolute difference D (paper section 4.1) of two (H, W, C) uint8 images,
    channels averaged.

    ``sub`` > 0: the largest mean over the block's ``sub`` x ``sub`` sub-blocks instead (a
    small mover - a distant car, a hand - changes a few pixels a lot; averaged over a 16-px
    block it stays under tau, averaged over 4 px it does not).

    Partial border blocks average over their in-frame pixels only.

    Returns:
        (count,) float32 in [0, 255].
    """
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(axis=2, dtype=np.int32)
    if sub:
        return _sub_block_max(diff, grid, sub) / a.shape[2]
    ph, pw = grid.padded_shape
    pad = np.zeros((ph, pw), dtype=np.int32)
    pad[:grid.height, :grid.width] = diff
    sums = grid.block_view(pad).sum(axis=(1, 3), dtype=np.int64)
    ones = np.zeros((ph, pw), dtype=np.int32)
    ones[:grid.height, :grid.width] = 1
    area = grid.block_view(ones).sum(axis=(1, 3)) * a.shape[2]
    return (sums / area).astype(np.float32).reshape(-1)


def _sub_block_max(diff: np.ndarray, grid: BlockGrid, sub: int) -> np.ndarray:
    """Per block, the largest mean of ``diff`` over its sub x sub sub-blocks (in-frame pixels
    only), float32 (count,)."""
    bs = grid.block_size
    if bs % sub:
        raise ValueError(f'sub-block {sub} does not divide the block size {bs}')
    ph, pw = grid.padded_shape
    pad = np.zeros((ph, pw), np.int32)
    pad[:grid.height, :grid.width] = diff
    ones = np.zeros((ph, pw), np.int32)
    ones[:grid.height, :grid.width] = 1
    shape = (ph // sub, sub, pw // sub, sub)
    sums = pad.reshape(shape).sum(axis=(1, 3))
    area = ones.reshape(shape).sum(axis=(1, 3))
    means = np.where(area > 0, sums / np.maximum(area, 1), 0.0)
    k = bs // sub
    return means.reshape(grid.rows, k, grid.cols, k).max(axis=(1, 3)).astype(
        np.float32).reshape(-1)


def warp_image_int(image: np.ndarray, grid: BlockGrid, mv_x: np.ndarray,
                   mv_y: np.ndarray) -> np.ndarray:
    """Exact integer block-MV warp: out[y, x] = image[clamp(y + mv_y[b]), clamp(x + mv_x[b])].

    uint8 images go through the engine's C kernel (blocks without motion are row copies),
    others through ``_warp_image_int_numpy``, the reference the tests compare it with.

    Args:
        image: (H, W, C) or (H, W) array.
        grid: block grid of the frame.
        mv_x, mv_y: (count,) integer per-block vectors, source = destination + mv.
    """
    mvx = np.asarray(mv_x, dtype=np.int64)
    mvy = np.asarray(mv_y, dtype=np.int64)
    if not mvx.any() and not mvy.any():
        return image.copy()
    lib = _kernels(image)
    if lib is None:
        return _warp_image_int_numpy(image, grid, mvx, mvy)
    image = np.ascontiguousarray(image)
    if mvx.size != grid.count or mvy.size != grid.count:
        raise ValueError(f'{mvx.size} block vectors for a {grid.rows}x{grid.cols} grid')
    out = np.empty_like(image)
    mx, my = mvx.astype(np.int32), mvy.astype(np.int32)
    lib.fs_warp_image(image.ctypes.data, out.ctypes.data, grid.height, grid.width,
                      image.shape[2] if image.ndim == 3 else 1, grid.block_size, grid.rows,
                      grid.cols, mx.ctypes.data, my.ctypes.data)
    return out


def _warp_image_int_numpy(image, grid, mvx, mvy):
    h, w = grid.height, grid.width
    sy = np.clip(np.arange(h)[:, None] + grid.expand(mvy), 0, h - 1)
    sx = np.clip(np.arange(w)[None, :] + grid.expand(mvx), 0, w - 1)
    return image[sy, sx]


def paste_blocks(src: np.ndarray, dst: np.ndarray, grid: BlockGrid, idx) -> None:
    """dst's blocks ``idx`` (row-major indices) := src's, in place; two images of one shape."""
    idx = np.asarray(idx, dtype=np.int64)
    if src.shape != dst.shape:
        raise ValueError(f'paste_blocks: {src.shape} into {dst.shape}')
    if not idx.size:
        return
    lib = _kernels(dst)
    if lib is None or src.dtype != np.uint8 or not dst.flags.c_contiguous:
        full = grid.expand(np.isin(np.arange(grid.count), idx))
        dst[full] = src[full]
        return
    src = np.ascontiguousarray(src)
    lib.fs_paste_blocks(src.ctypes.data, dst.ctypes.data, grid.height, grid.width,
                        src.shape[2] if src.ndim == 3 else 1, grid.block_size, grid.cols,
                        idx.ctypes.data, len(idx))


def _kernels(image: np.ndarray):
    """The engine's C library for a uint8 image of 2 or 3 dimensions, else None."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        return None
    from fluxshard_kernels import native
    return native.engine()
