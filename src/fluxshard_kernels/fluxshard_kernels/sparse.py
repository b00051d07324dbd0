"""Sparse block execution of CNN layers (paper section 4.3): gather the active blocks with their
halos, run the layer, scatter the results into the cached output.

Feature maps live in :class:`FMap` storage: the valid (h, w) region padded up to whole blocks
and surrounded by a zero margin, so a block's input window (block + halo) is a strided view
of the storage, and dense zero-padding is reproduced exactly. All layers of a network share one
image-block grid (rows x cols); at stride s a block is ``block / s`` feature pixels, so stride-2
layers map block (r, c) to block (r, c) and active masks need only dilation by the halo.

Two layouts for the gathered blocks:
  * ``batch``: blocks stacked along the batch dimension, one conv call, no padding.
  * ``hw``: horizontally adjacent active blocks merged into runs (halos shared), runs tiled
    along height and width into one canvas, one conv call.

Written with torch ops only, so the same code runs on CPU and CUDA.
"""

from dataclasses import dataclass
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from fluxshard_kernels import compiled, cuda


def _cuda_kernels(t: torch.Tensor) -> bool:
    """The cupy kernels serve this storage (CUDA float32 and cupy working); else torch ops."""
    return t.is_cuda and t.dtype == torch.float32 and cuda.available()


class Stages:
    """Per-stage wall time of the engine (``bench``'s breakdown). Off unless ``STAGES.on``:
    ``with STAGES('conv'):`` then costs one attribute test. On CUDA each stage synchronises
    the device so the time is the stage's own."""

    def __init__(self):
        self.on = False
        self.seconds: dict = {}
        self._cuda = False

    def reset(self, on: bool = True, cuda: bool = False):
        self.on, self.seconds, self._cuda = on, {}, cuda

    def __call__(self, name: str):
        return _Stage(self, name) if self.on else _NOSTAGE


class _Stage:
    __slots__ = ('st', 'name', 't0')

    def __init__(self, st, name):
        self.st, self.name = st, name

    def __enter__(self):
        if self.st._cuda:
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if self.st._cuda:
            torch.cuda.synchronize()
        d = self.st.seconds
        d[self.name] = d.get(self.name, 0.0) + time.perf_counter() - self.t0


class _NoStage:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NOSTAGE = _NoStage()
#: The process's stage timer (one engine step at a time is profiled).
STAGES = Stages()

MARGIN = 2  # largest halo of a YOLO11 layer at stride 1 (5x5 max-pool)
SLACK = 16  # extra storage right/bottom: output grids of strided layers may reach past the input

LAYOUTS = ('batch', 'hw')


@dataclass
class FMap:
    """A feature map in block storage.

    Attributes:
        t: (1, C, rows * b + 2 * MARGIN, cols * b + 2 * MARGIN) storage; zero outside the
            valid region.
        b: block edge in feature pixels at this layer.
        rows, cols: block grid (shared by all layers).
        h, w: valid size in feature pixels.
    """

    t: torch.Tensor
    b: int
    rows: int
    cols: int
    h: int
    w: int

    def cd(self):
        """(data pointer, row stride, column stride, channels, fits the compiled kernels) of
        the storage, found once (a map keeps its storage): the kernels' arguments."""
        d = self.__dict__.get('_cd')
        if d is None:
            t = self.t
            d = self.__dict__['_cd'] = (t.data_ptr(), t.stride(2), t.stride(3), t.shape[1],
                                        t.is_cpu and t.dtype == torch.float32 and
                                        t.stride(1) == 1)
        return d

    def serves(self) -> bool:
        """The compiled kernels can run on this map now (``compiled.serves`` of its
        storage, the storage's part of it found once)."""
        d = self.__dict__.get('_cd') or self.cd()
        return d[4] and compiled.available()

    @staticmethod
    def empty(c: int, b: int, rows: int, cols: int, h: int, w: int, like: torch.Tensor):
        # channels-last storage: a block's window is C-contiguous runs (fast gathers), and
        # oneDNN convolutions run faster on it too (benchmark)
        t = torch.zeros((1, c, rows * b + 2 * MARGIN + SLACK, cols * b + 2 * MARGIN + SLACK),
                        dtype=like.dtype, device=like.device).contiguous(
                            memory_format=torch.channels_last)
        return FMap(t, b, rows, cols, h, w)

    @staticmethod
    def from_dense(x: torch.Tensor, b: int, rows: int, cols: int):
        """Wrap a dense (1, C, h, w) tensor (copied into block storage)."""
        m = FMap.empty(x.shape[1], b, rows, cols, x.shape[2], x.shape[3], x)
        if x.shape[2] > rows * b or x.shape[3] > cols * b:
            raise ValueError(f'{tuple(x.shape)} does not fit a {rows}x{cols} grid of {b}px')
        m.valid.copy_(x)
        return m

    @property
    def channels(self) -> int:
        return self.t.shape[1]

    @property
    def valid(self) -> torch.Tensor:
        """(1, C, h, w) view of the valid region (after every queued kernel call has run:
        ``compiled.stream``)."""
        compiled.sync()
        return self.t[:, :, MARGIN:MARGIN + self.h, MARGIN:MARGIN + self.w]

    @property
    def interior(self) -> torch.Tensor:
        """(1, C, rows * b, cols * b) view of the block-padded region (queue run)."""
        compiled.sync()
        return self.t[:, :, MARGIN:MARGIN + self.rows * self.b,
                      MARGIN:MARGIN + self.cols * self.b]

    def block_view(self) -> torch.Tensor:
        """(C, rows, b, cols, b) view of the interior."""
        return self.interior[0].view(self.channels, self.rows, self.b, self.cols, self.b)

    def blocks_nhwc(self) -> torch.Tensor:
        """(rows, cols, b, b, C) view of the interior (for batch gathers/scatters)."""
        return self.block_view().permute(1, 3, 2, 4, 0)

    def gather(self, r_idx, c_idx) -> torch.Tensor:
        """(N, C, b, b) copy of the blocks (r_idx, c_idx), channels-last."""
        if self.serves():
            return compiled.gather(self.t, r_idx, c_idx, MARGIN, self.b, self.b,
                                   self.valid_box)
        r_idx, c_idx = _on(r_idx, self.t), _on(c_idx, self.t)
        return self.blocks_nhwc()[r_idx, c_idx].permute(0, 3, 1, 2)

    def scatter(self, r_idx, c_idx, y: torch.Tensor):
        """Write (N, C, b, b) block values into the blocks (r_idx, c_idx). The compiled
        kernels write the valid region only (the padding stays zero); the torch path writes
        whole blocks (``clear_padding`` after it)."""
        if self.serves():
            compiled.scatter(self.t, MARGIN, self.h, self.w, y, r_idx, c_idx, self.b)
            return
        r_idx, c_idx = _on(r_idx, self.t), _on(c_idx, self.t)
        if _cuda_kernels(self.t):
            cuda.scatter_blocks(self.t, r_idx, c_idx, y, MARGIN, self.b)
            return
        self.blocks_nhwc()[r_idx, c_idx] = y.permute(0, 2, 3, 1).to(self.t.dtype)

    @property
    def valid_box(self):
        """(y0, y1, x0, x1) of the valid region in storage coordinates."""
        return MARGIN, MARGIN + self.h, MARGIN, MARGIN + self.w

    def clear_padding(self):
        """Zero the block padding beyond the valid region (keeps dense zero-padding exact)."""
        compiled.sync()
        e = self.rows * self.b
        if self.h < e:
            self.t[:, :, MARGIN + self.h:MARGIN + e, :] = 0
        e = self.cols * self.b
        if self.w < e:
            self.t[:, :, :, MARGIN + self.w:MARGIN + e] = 0


@dataclass
class CatMap:
    """Maps concatenated along channels without a copy: the engine's concat, whose readers (a
    1x1 convolution, the head) take the parts' channels straight from the parts' caches, so
    the concatenation has no cache of its own to warp or fill. ``valid`` (the dense view) and
    ``materialize`` (block storage) copy, for the readers that need one tensor."""

    parts: list

    def __post_init__(self):
        p = self.parts[0]
        self.b, self.rows, self.cols, self.h, self.w = p.b, p.rows, p.cols, p.h, p.w

    @property
    def channels(self) -> int:
        return sum(p.channels for p in self.parts)

    @property
    def valid(self) -> torch.Tensor:
        return torch.cat([p.valid for p in self.parts], 1)

    def materialize(self) -> FMap:
        return FMap.from_dense(self.valid, self.b, self.rows, self.cols)


def sparse_conv1x1_parts(src: CatMap, dst: FMap, idx, op: dict) -> FMap:
    """Recompute blocks ``idx`` of dst = 1x1 conv (stride 1) of the concatenation ``src``:
    each part's channels go straight into their columns of the im2col rows (compiled
    kernels), then one matrix product."""
    rows, cols = idx
    if not len(rows):
        return dst
    b = dst.b
    with STAGES('gather'):
        a = torch.empty((len(rows) * b * b, src.channels), dtype=torch.float32)
        c0 = 0
        for p in src.parts:
            compiled.rows_into(p.t, MARGIN, p.h, p.w, rows, cols, b, a, c0)
            c0 += p.channels
    with STAGES('conv'):
        if compiled.fused():
            compiled.conv_blocks(None, rows, cols, 0, 1, 1, (0, 0, 0, 0), a, op, dst.cd(),
                                 MARGIN, dst.h, dst.w, b)
            return dst
        y = (torch.addmm(op['bias'], a, op['wmat']) if op.get('bias') is not None
             else a @ op['wmat'])
        if op.get('act') == 'silu':
            F.silu(y, inplace=True)
    with STAGES('scatter'):
        dst.scatter(rows, cols, y)
    return dst


def _on(idx, t: torch.Tensor) -> torch.Tensor:
    """Block indices (numpy from the engine's plan, or a tensor) as a tensor on t's device."""
    if isinstance(idx, np.ndarray):
        return torch.from_numpy(idx).to(t.device)
    return idx


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """(rows, cols) bool block mask grown by ``r`` blocks in each direction."""
    if r <= 0 or not mask.any():
        return mask
    m = mask[None, None].float()
    return F.max_pool2d(m, 2 * r + 1, 1, r)[0, 0] > 0


def halo_blocks(kernel: int, padding: int, b_in: int) -> int:
    """Blocks an input change spreads to through a layer (dilation of the active mask)."""
    halo = max(padding, kernel - 1 - padding)
    return -(-halo // b_in) if halo else 0


_GEOMETRY: dict = {}


def _window_geometry(src: FMap, kernel: int, stride: int, padding: int, b_out: int, rows: int,
                     cols: int):
    """(window edge P, step between blocks, storage offset of block 0's window) of a
    windowed op; ValueError where the storage cannot hold the windows."""
    key = (src.t.shape[2], src.t.shape[3], kernel, stride, padding, b_out, rows, cols)
    g = _GEOMETRY.get(key)
    if g is None:
        g = _GEOMETRY[key] = _geometry(src, kernel, stride, padding, b_out, rows, cols)
    return g


def _geometry(src: FMap, kernel: int, stride: int, padding: int, b_out: int, rows: int,
              cols: int):
    p_len = (b_out - 1) * stride + kernel
    step = b_out * stride
    off = MARGIN - padding
    if off < 0 or kernel - 1 - padding > MARGIN:
        raise ValueError(f'kernel {kernel} / padding {padding} exceed the storage margin')
    need_h = off + (rows - 1) * step + p_len
    need_w = off + (cols - 1) * step + p_len
    if need_h > src.t.shape[2] or need_w > src.t.shape[3]:
        raise ValueError(f'input storage {tuple(src.t.shape[2:])} too small for a '
                         f'{rows}x{cols} grid of {b_out}px blocks at stride {stride}')
    return p_len, step, off


def _windows(src: FMap, kernel: int, stride: int, padding: int, b_out: int, rows: int,
             cols: int):
    """(C, rows, cols, P, P) strided view of every output block's input window, and P."""
    p_len, step, off = _window_geometry(src, kernel, stride, padding, b_out, rows, cols)
    v = src.t[0, :, off:, off:]
    return v.unfold(1, p_len, step).unfold(2, p_len, step)[:, :rows, :cols], p_len


def _runs(mask_np: np.ndarray):
    """Horizontal runs of active blocks: list of (row, c0, c1)."""
    runs = []
    for r in np.flatnonzero(mask_np.any(1)):
        row = np.concatenate([[0], mask_np[r].astype(np.int8), [0]])
        d = np.diff(row)
        for c0, c1 in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
            runs.append((int(r), int(c0), int(c1)))
    return runs


def _apply_op(x: torch.Tensor, op: dict) -> torch.Tensor:
    """Run one windowed op with padding 0 on gathered input ``x`` (N, C, P, P...)."""
    kind = op['kind']
    if kind == 'conv':
        y = F.conv2d(x, op['weight'], op.get('bias'), stride=op['stride'],
                     groups=op.get('groups', 1))
        if op.get('act') == 'silu':
            y = F.silu(y)
        return y
    if kind == 'maxpool':
        return F.max_pool2d(x, op['kernel'], op['stride'])
    raise ValueError(f'unknown op {kind!r}')


def prepare_windowed(src: FMap, dst: FMap, op: dict, layout: str = 'batch'
                     ) -> Optional['compiled.ConvCall']:
    """The one call that ``sparse_windowed`` makes for a convolution ``op`` from ``src`` into
    ``dst`` on the fused path, its fixed arguments found once (``compiled.ConvCall``: the
    engine keeps it per layer and hands it each frame's active blocks), or None where
    ``sparse_windowed`` takes another path."""
    if layout != 'batch' or op['kind'] != 'conv' or 'wmat' not in op or not (
            src.serves() and dst.serves() and compiled.fused()):
        return None
    k, s, pad = op['weight'].shape[-1], op['stride'], op['padding']
    _, _, off = _window_geometry(src, k, s, pad, dst.b, dst.rows, dst.cols)
    return compiled.ConvCall(src.cd(), src.valid_box, off, k, s, op, dst.cd(), MARGIN, dst.h,
                             dst.w, dst.b)


def sparse_windowed(src: FMap, dst: FMap, mask: torch.Tensor, op: dict,
                    layout: str = 'batch', idx=None) -> FMap:
    """Recompute the ``mask`` blocks of ``dst`` = op(src) in place.

    Args:
        src: input map (any block size); dst: output map (cache); output block (r, c) of dst
            reads the input window starting at (r * dst.b * stride - padding).
        mask: (rows, cols) bool blocks of dst to recompute.
        op: {'kind': 'conv', 'weight', 'bias', 'stride', 'padding', 'act': 'silu'|None,
             'groups'} or {'kind': 'maxpool', 'kernel', 'stride', 'padding'}.
        layout: 'batch' or 'hw'.
        idx: (rows, cols) numpy index arrays of the ``mask`` blocks when the caller has them
            (the engine's per-frame plan): no host sync here.

    Returns:
        dst.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
    k = op['weight'].shape[-1] if op['kind'] == 'conv' else op['kernel']
    s, pad = op['stride'], op['padding']
    pool = op['kind'] == 'maxpool'
    if layout == 'batch' and src.serves() and dst.serves():
        if idx is None:
            idx = [a.numpy() for a in torch.nonzero(mask.cpu(), as_tuple=True)]
        p_len, step, off = _window_geometry(src, k, s, pad, dst.b, dst.rows, dst.cols)
        if not len(idx[0]):
            return dst
        if 'wmat' in op and compiled.fused():
            with STAGES('conv'):  # im2col, product, bias, SiLU and scatter in one call
                compiled.conv_blocks(src.cd(), idx[0], idx[1], off, k, s, src.valid_box, None,
                                     op, dst.cd(), MARGIN, dst.h, dst.w, dst.b)
            return dst
        if pool:
            with STAGES('conv'):  # straight from the storage, one call
                compiled.maxpool_blocks(src.t, idx[0], idx[1], off, k, s, src.valid_box,
                                        dst.t, MARGIN, dst.h, dst.w, dst.b)
            return dst
        if 'wdw' in op:
            with STAGES('conv'):  # depthwise: straight from the storage, one call
                compiled.dwconv_blocks(src.t, idx[0], idx[1], off, k, s, src.valid_box,
                                       op['wdw'], op.get('bias'), op.get('act') == 'silu',
                                       dst.t, MARGIN, dst.h, dst.w, dst.b)
            return dst
        if 'wmat' in op:  # a convolution as one matrix product over the im2col rows
            with STAGES('gather'):
                a = compiled.im2col(src.t, idx[0], idx[1], off, k, s, dst.b, src.valid_box)
            with STAGES('conv'):
                y = (torch.addmm(op['bias'], a, op['wmat']) if op.get('bias') is not None
                     else a @ op['wmat'])
                if op.get('act') == 'silu':
                    F.silu(y, inplace=True)
        else:
            with STAGES('gather'):
                y = compiled.gather(src.t, idx[0], idx[1], off, step, p_len, src.valid_box,
                                    float('-inf') if pool else 0.0)
            with STAGES('conv'):
                y = _apply_op(y, op)
        with STAGES('scatter'):
            dst.scatter(idx[0], idx[1], y)
        return dst
    if not mask.any():
        return dst
    compiled.sync()  # the torch path reads and writes the storages directly
    if pool:
        # max-pool pads with -inf: mark everything outside the valid input as -inf
        src = _neg_inf_outside(src)
    win, p_len = _windows(src, k, s, pad, dst.b, dst.rows, dst.cols)
    if layout == 'batch':
        with STAGES('gather'):
            r_idx, c_idx = torch.nonzero(mask, as_tuple=True)
            n = int(r_idx.numel())
            if _cuda_kernels(src.t):  # batch padded to a size bucket (few cuDNN plans)
                x = cuda.gather_windows(src.t, r_idx, c_idx, MARGIN - pad, dst.b * s, p_len,
                                        pad_to=cuda.bucket(n))
            else:
                x = win.permute(1, 2, 3, 4, 0)[r_idx, c_idx].permute(0, 3, 1, 2)  # (N,C,P,P)
        with STAGES('conv'):
            y = _apply_op(x, op)[:n]
        with STAGES('scatter'):
            dst.scatter(r_idx, c_idx, y)
            dst.clear_padding()
    else:
        with STAGES('conv'):
            _hw_stacked(src, dst, mask, op, k, s, pad, p_len)
        dst.clear_padding()
    return dst


def run_windowed(src: FMap, dst: FMap, mask: torch.Tensor, op: dict, layout: str = 'batch',
                 dense_above: float = 0.5) -> FMap:
    """Sparse when the active fraction is at most ``dense_above``, else dense (whole map).

    ``dense_above`` is the measured crossover where dense becomes faster (the benchmark
    ``python -m fluxshard_kernels.bench`` prints it per layout).
    """
    if float(mask.float().mean()) > dense_above:
        dst.valid.copy_(dense_windowed(src, op))
        dst.clear_padding()
        return dst
    return sparse_windowed(src, dst, mask, op, layout)


def _neg_inf_outside(src: FMap) -> FMap:
    t = torch.full_like(src.t, float('-inf'))
    t[:, :, MARGIN:MARGIN + src.h, MARGIN:MARGIN + src.w] = src.valid
    return FMap(t, src.b, src.rows, src.cols, src.h, src.w)


def _hw_stacked(src, dst, mask, op, k, s, pad, p_len):
    runs = _runs(mask.cpu().numpy())
    step = dst.b * s
    extra = p_len - step  # halo shared by the blocks of a run
    band_h = -(-p_len // s) * s
    full_w = dst.cols * step + extra
    band_w = -(-full_w // s) * s
    # greedy packing of runs into bands of the full row width
    place, x, band = [], 0, 0
    for r, c0, c1 in runs:
        wr = (c1 - c0) * step + extra
        wr_al = -(-wr // s) * s
        if x + wr_al > band_w:
            band, x = band + 1, 0
        place.append((r, c0, c1, band, x, wr))
        x += wr_al
    canvas = src.t.new_zeros((1, src.channels, (band + 1) * band_h, band_w)).contiguous(
        memory_format=torch.channels_last)
    off = MARGIN - pad
    for r, c0, c1, bnd, x0, wr in place:
        y0s, x0s = off + r * step, off + c0 * step
        canvas[0, :, bnd * band_h:bnd * band_h + p_len, x0:x0 + wr] = \
            src.t[0, :, y0s:y0s + p_len, x0s:x0s + wr]
    y = _apply_op(canvas, op)
    bo = dst.b
    inner = dst.interior[0]
    for r, c0, c1, bnd, x0, _ in place:
        oy, ox = bnd * band_h // s, x0 // s
        out = y[0, :, oy:oy + bo, ox:ox + (c1 - c0) * bo]
        inner[:, r * bo:(r + 1) * bo, c0 * bo:c1 * bo] = out


def sparse_pointwise(fn, inputs, dst: FMap, mask: torch.Tensor, idx=None) -> FMap:
    """dst[mask blocks] = fn(*inputs[mask blocks]) for element-wise / channel-wise ops
    (residual add, concat, SiLU...). All maps share dst's block size. ``idx``: as in
    ``sparse_windowed``."""
    if idx is not None:
        if not len(idx[0]):
            return dst
        r_idx, c_idx = idx
    else:
        if not mask.any():
            return dst
        r_idx, c_idx = torch.nonzero(mask, as_tuple=True)
    with STAGES('gather'):
        xs = [m.gather(r_idx, c_idx) for m in inputs]
    with STAGES('pointwise'):
        y = fn(*xs)
    with STAGES('scatter'):
        dst.scatter(r_idx, c_idx, y)
        if not dst.serves():
            dst.clear_padding()
    return dst


def sparse_upsample2x(src: FMap, dst: FMap, mask: torch.Tensor, idx=None) -> FMap:
    """Nearest 2x upsampling of the ``mask`` blocks of ``dst``; ``idx`` as in
    ``sparse_windowed``. Blocks of ``dst`` twice the size of ``src``'s (the same grid), or of
    the same size (deep strides, where a block is one feature pixel): output block (r, c) then
    lies inside the upsampled input block (r // 2, c // 2), which is written whole."""
    if dst.b not in (src.b, 2 * src.b):
        raise ValueError('upsample2x needs dst.b == 2 * src.b or dst.b == src.b')
    if idx is None:
        if not mask.any():
            return dst
        idx = torch.nonzero(mask, as_tuple=True)
    elif not len(idx[0]):
        return dst
    r_idx, c_idx = idx
    fast = src.serves() and dst.serves()
    if dst.b == src.b:
        if fast:
            flat = np.unique((np.asarray(r_idx) // 2) * src.cols + np.asarray(c_idx) // 2)
            compiled.upsample2x_blocks(src.t, dst.t, MARGIN, dst.h, dst.w, flat // src.cols,
                                       flat % src.cols, src.b)
            return dst
        up = FMap.from_dense(F.interpolate(src.valid, scale_factor=2.0, mode='nearest'),
                             dst.b, dst.rows, dst.cols)
        dst.scatter(r_idx, c_idx, up.gather(r_idx, c_idx))
    elif fast:
        compiled.upsample2x_blocks(src.t, dst.t, MARGIN, dst.h, dst.w, r_idx, c_idx, src.b)
        return dst
    else:
        dst.scatter(r_idx, c_idx, F.interpolate(src.gather(r_idx, c_idx), scale_factor=2.0,
                                                mode='nearest'))
    if not dst.serves():
        dst.clear_padding()
    return dst


def dense_windowed(src: FMap, op: dict) -> torch.Tensor:
    """Reference: the same op applied densely to the valid region, (1, C', h', w')."""
    x = src.valid
    if op['kind'] == 'conv':
        y = F.conv2d(x, op['weight'], op.get('bias'), op['stride'], op['padding'],
                     groups=op.get('groups', 1))
        return F.silu(y) if op.get('act') == 'silu' else y
    return F.max_pool2d(x, op['kernel'], op['stride'], op['padding'])


def conv_op(weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int = 1,
            padding: Optional[int] = None, act: Optional[str] = 'silu', groups: int = 1):
    """Op dict of a conv with folded BN (+ SiLU), as YOLO11's Conv blocks."""
    k = weight.shape[-1]
    op = {'kind': 'conv', 'weight': weight.contiguous(memory_format=torch.channels_last),
          'bias': bias, 'stride': stride, 'padding': k // 2 if padding is None else padding,
          'act': act, 'groups': groups}
    if groups == 1 and weight.device.type == 'cpu' and weight.dtype == torch.float32:
        # (k * k * C_in, C_out), rows ordered as compiled.im2col's columns (ky, kx, c)
        op['wmat'] = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
    elif groups == weight.shape[0] and weight.shape[1] == 1 and weight.device.type == 'cpu' \
            and weight.dtype == torch.float32:  # depthwise: (k * k, C), taps by channel
        op['wdw'] = weight.reshape(weight.shape[0], -1).t().contiguous()
    return op
