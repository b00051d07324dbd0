"""MV warping of CNN feature maps (the paper's "virtually wrapped" cache, section 4.3).

A block MV field at image resolution is scaled to a layer of any stride and applied with bilinear
sampling, border-clamped, in torch (same code on CPU and CUDA). Integer warping of images for the
proxy state is ``blocks.warp_image_int``.
"""

import numpy as np
import torch
import torch.nn.functional as F

from fluxshard_kernels.blocks import BlockGrid


def flow_at_stride(mv: np.ndarray, grid: BlockGrid, stride: int, out_h: int, out_w: int,
                   device=None) -> torch.Tensor:
    """Per-feature-pixel displacement (2, out_h, out_w) in feature pixels (dx, dy) / stride.

    Feature pixel (i, j) covers image pixel (i * stride, j * stride), so it takes the MV of the
    block holding that pixel.
    """
    rows = np.minimum((np.arange(out_h) * stride) // grid.block_size, grid.rows - 1)
    cols = np.minimum((np.arange(out_w) * stride) // grid.block_size, grid.cols - 1)
    m = np.asarray(mv, np.float32).reshape(grid.rows, grid.cols, 2)[rows][:, cols]
    return torch.from_numpy(np.ascontiguousarray(m.transpose(2, 0, 1) / stride)).to(device)


def warp_features(feat: torch.Tensor, mv: np.ndarray, grid: BlockGrid,
                  stride: int) -> torch.Tensor:
    """Bilinear MV warp of a (N, C, h, w) feature map: out[i, j] = feat[i + dy, j + dx] with
    (dx, dy) the block MV / stride, sampled bilinearly, clamped at the border.

    Args:
        feat: (N, C, h, w) float tensor, the cache of a layer with the given stride.
        mv: (rows, cols, 2) block MV field of the image (source = destination + mv).
        grid: image block grid.
        stride: layer stride relative to the image (1, 2, 4, 8, ...).
    """
    if feat.dim() != 4:
        raise ValueError(f'feat must be (N, C, h, w), got {tuple(feat.shape)}')
    n, _, h, w = feat.shape
    if not np.any(mv):
        return feat.clone()
    flow = flow_at_stride(mv, grid, stride, h, w, feat.device).to(feat.dtype)
    g = sampling_grid(flow).expand(n, h, w, 2)
    return F.grid_sample(feat, g, mode='bilinear', padding_mode='border', align_corners=True)


def sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """(1, h, w, 2) ``grid_sample`` grid (align_corners=True) that reads pixel (i, j) from
    (i + flow[1], j + flow[0]); ``flow`` is (2, h, w) as from ``flow_at_stride``."""
    _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype)[:, None] + flow[1]
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype)[None, :] + flow[0]
    # normalised coordinates for align_corners=True: -1 -> pixel 0, +1 -> pixel w-1
    return torch.stack([2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1], -1)[None]
