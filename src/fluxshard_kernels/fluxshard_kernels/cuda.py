"""CUDA kernels of the H-W stacked block layout (paper section 4.3) as cupy ``RawKernel``s:
gather of active blocks' input windows, scatter of computed blocks into a cache, and the MV
warp of a cache (bilinear, border-clamped).

Each kernel has a torch reference (``*_torch``, the engine's CPU path and fallback) with the
same result; ``gather_windows`` / ``scatter_blocks`` / ``warp_bilinear`` pick the cupy kernel for
CUDA tensors when cupy works here and the reference otherwise. The kernels are compiled lazily
on first use and cached by cupy; tensors cross by DLPack (no copy) and run on torch's current
stream. ``available()`` probes once (cupy imports without a GPU and fails on first use).

Storage is the engine's: (1, C, H, W) float32 in channels-last memory, i.e. (H, W, C) runs, or
a channel slice of such a storage (the C2f split): the kernels take the view's strides.
"""

import functools
from typing import Optional

import torch
import torch.nn.functional as F

_GATHER = r'''
extern "C" __global__ void gather_windows(
    const float* __restrict__ src, const long long* __restrict__ r_idx,
    const long long* __restrict__ c_idx, float* __restrict__ out,
    int n, int C, long long row_st, long long px_st, long long ch_st, int off, int step,
    int P) {
  // out (N, P, P, C) <- src (H, W, C) at (off + r * step + py, off + c * step + px); src
  // element strides row_st, px_st, ch_st (a channel slice of a storage is not contiguous)
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  long long total = (long long)n * P * P * C;
  if (i >= total) return;
  int ch = i % C; long long t = i / C;
  int px = t % P; t /= P;
  int py = t % P; int b = t / P;
  long long y = off + r_idx[b] * step + py, x = off + c_idx[b] * step + px;
  out[i] = src[y * row_st + x * px_st + ch * ch_st];
}
'''

_SCATTER = r'''
extern "C" __global__ void scatter_blocks(
    float* __restrict__ dst, const long long* __restrict__ r_idx,
    const long long* __restrict__ c_idx, const float* __restrict__ y,
    int n, int C, long long row_st, long long px_st, long long ch_st, int off, int bs) {
  // dst (H, W, C) at (off + r * bs + i, off + c * bs + j) <- y (N, bs, bs, C)
  long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  long long total = (long long)n * bs * bs * C;
  if (k >= total) return;
  int ch = k % C; long long t = k / C;
  int j = t % bs; t /= bs;
  int i = t % bs; int b = t / bs;
  long long yy = off + r_idx[b] * bs + i, xx = off + c_idx[b] * bs + j;
  dst[yy * row_st + xx * px_st + ch * ch_st] = y[k];
}
'''

_WARP = r'''
extern "C" __global__ void warp_bilinear(
    const float* __restrict__ src, const float* __restrict__ flow, float* __restrict__ out,
    int h, int w, int C, long long row_st, long long px_st, long long ch_st, int off) {
  // out[y, x] = src sampled at (y + flow[1][y][x], x + flow[0][y][x]), clamped to the valid
  // (h, w) region at offset (off, off) of an (H, W, C) storage; out is (h, w, C)
  long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  long long total = (long long)h * w * C;
  if (k >= total) return;
  int ch = k % C; long long t = k / C;
  int x = t % w; int y = t / w;
  float sx = fminf(fmaxf(x + flow[(long long)y * w + x], 0.f), (float)(w - 1));
  float sy = fminf(fmaxf(y + flow[(long long)h * w + (long long)y * w + x], 0.f),
                   (float)(h - 1));
  int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
  int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
  float ax = sx - x0, ay = sy - y0;
  #define S(yy, xx) \
    src[(long long)(off + (yy)) * row_st + (long long)(off + (xx)) * px_st + ch * ch_st]
  out[k] = (1.f - ay) * ((1.f - ax) * S(y0, x0) + ax * S(y0, x1))
         + ay * ((1.f - ax) * S(y1, x0) + ax * S(y1, x1));
  #undef S
}
'''


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """cupy and a CUDA device both work (probed once, lazily)."""
    if not torch.cuda.is_available():
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any cupy/driver failure means: use the torch path
        return False


@functools.lru_cache(maxsize=None)
def _kernel(name: str):
    import cupy
    return cupy.RawKernel({'gather_windows': _GATHER, 'scatter_blocks': _SCATTER,
                           'warp_bilinear': _WARP}[name], name)


def _launch(name: str, total: int, args):
    import cupy
    threads = 256
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    with stream:
        _kernel(name)(((total + threads - 1) // threads,), (threads,), args)


def _cp(t: torch.Tensor):
    import cupy
    return cupy.from_dlpack(t)


def _use_cuda(t: torch.Tensor, force: Optional[bool]) -> bool:
    if force is not None:
        return force
    return t.is_cuda and t.dtype == torch.float32 and available()


def _hwc(t: torch.Tensor):
    """(1, C, H, W) storage (channels-last, or a channel slice of one, or any strides) as its
    (H, W, C) view and that view's element strides (int64 scalars for the kernels)."""
    import cupy
    v = t.permute(0, 2, 3, 1)[0]
    return v, tuple(cupy.int64(st) for st in v.stride())


# -- gather -----------------------------------------------------
def gather_windows_torch(t, r_idx, c_idx, off, step, p_len):
    """(N, C, P, P) windows of (1, C, H, W) storage ``t`` starting at (off + r * step,
    off + c * step), channels-last (the engine's batch-layout gather)."""
    v = t[0, :, off:, off:].unfold(1, p_len, step).unfold(2, p_len, step)
    return v.permute(1, 2, 3, 4, 0)[r_idx, c_idx].permute(0, 3, 1, 2)


def bucket(n: int) -> int:
    """The batch size ``n`` gathered blocks are padded to on CUDA: the next power of two (at
    least 8), so a layer sees a handful of shapes instead of a new one every frame (cuDNN
    builds an execution plan per shape)."""
    return max(8, 1 << max(n - 1, 0).bit_length())


def gather_windows(t, r_idx, c_idx, off, step, p_len, cuda: Optional[bool] = None,
                   pad_to: int = 0):
    """``gather_windows_torch``'s windows; on CUDA, ``pad_to`` > N appends zero windows (the
    caller keeps the first N results)."""
    if not _use_cuda(t, cuda):
        return gather_windows_torch(t, r_idx, c_idx, off, step, p_len)
    src, strides = _hwc(t)
    n, c = int(r_idx.numel()), t.shape[1]
    out = torch.empty((max(n, pad_to), p_len, p_len, c), dtype=t.dtype, device=t.device)
    if pad_to > n:
        out[n:].zero_()
    if n:
        import cupy
        _launch('gather_windows', n * p_len * p_len * c, (
            _cp(src), _cp(r_idx.long().contiguous()), _cp(c_idx.long().contiguous()),
            _cp(out), cupy.int32(n), cupy.int32(c), *strides,
            cupy.int32(off), cupy.int32(step), cupy.int32(p_len)))
    return out.permute(0, 3, 1, 2)


# -- scatter ----------------------------------------------------
def scatter_blocks_torch(t, r_idx, c_idx, y, off, bs):
    """Write (N, C, bs, bs) blocks into storage ``t`` at (off + r * bs, off + c * bs)."""
    c = t.shape[1]
    inner = t[0, :, off:, off:]
    rows, cols = (inner.shape[1]) // bs, (inner.shape[2]) // bs
    view = inner[:, :rows * bs, :cols * bs].reshape(c, rows, bs, cols, bs).permute(1, 3, 2, 4, 0)
    view[r_idx, c_idx] = y.permute(0, 2, 3, 1).to(t.dtype)


def scatter_blocks(t, r_idx, c_idx, y, off, bs, cuda: Optional[bool] = None):
    if not _use_cuda(t, cuda):
        return scatter_blocks_torch(t, r_idx, c_idx, y, off, bs)
    dst, strides = _hwc(t)
    n, c = int(r_idx.numel()), t.shape[1]
    if n:
        import cupy
        yy = y.permute(0, 2, 3, 1).contiguous().to(t.dtype)
        _launch('scatter_blocks', n * bs * bs * c, (
            _cp(dst), _cp(r_idx.long().contiguous()), _cp(c_idx.long().contiguous()), _cp(yy),
            cupy.int32(n), cupy.int32(c), *strides, cupy.int32(off), cupy.int32(bs)))


# -- MV warp ----------------------------------------------------
def warp_bilinear_torch(t, flow, off, h, w):
    """(1, C, h, w) of the valid region of storage ``t`` (at offset off) sampled bilinearly at
    (y + flow[1], x + flow[0]), border-clamped (as ``grid_sample`` align_corners=True)."""
    from fluxshard_kernels.warp import sampling_grid
    v = t[:, :, off:off + h, off:off + w]
    return F.grid_sample(v, sampling_grid(flow.to(v.dtype)), mode='bilinear',
                         padding_mode='border', align_corners=True)


def warp_bilinear(t, flow, off, h, w, cuda: Optional[bool] = None):
    if not _use_cuda(t, cuda):
        return warp_bilinear_torch(t, flow, off, h, w)
    src, strides = _hwc(t)
    c = t.shape[1]
    out = torch.empty((h, w, c), dtype=t.dtype, device=t.device)
    import cupy
    _launch('warp_bilinear', h * w * c, (
        _cp(src), _cp(flow.to(device=t.device, dtype=torch.float32).contiguous()), _cp(out),
        cupy.int32(h), cupy.int32(w), cupy.int32(c), *strides, cupy.int32(off)))
    return out.permute(2, 0, 1)[None]
