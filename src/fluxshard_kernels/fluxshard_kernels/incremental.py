"""Incremental (motion-aware sparse) execution of a YOLO11 network over a frame sequence
(paper sections 4.3-4.4).

Every primitive of the network (conv, add, max-pool, upsample, the attention block) keeps its
output from the previous frame as a cache; a concat is a view of its inputs (``sparse.CatMap``),
read straight from their caches. Each frame:
  1. the caches are warped by the frame's block MV field, scaled to each layer's stride (the
     "virtually wrapped" cache): by default bilinear, at the exact fractional position of the
     moving pixels (``warp='bilinear'``); ``warp='integer'`` is an index remap instead, each
     block's features read from the source position its motion rounds to at that stride with
     the sub-pixel remainder carried to the next frame, so a block whose motion rounds to zero
     is not touched (fewer pixels warped on a static camera, but measured with ``evaluate
     --warp integer`` 7 points of retention lost on pets09-s2l1, where walkers move a few
     pixels a frame and lag their boxes by up to half a feature pixel);
  2. the changed (miss) blocks of the input are recomputed through the network: a layer's
     active set is its input's grown by the layer's halo; layers at strides up to
     ``max_sparse_stride`` run on the sparse engine, deeper ones (and anything above the
     ``dense_above`` active fraction) run dense on the warped input;
  3. the result is decoded by the model head.
A dense pass (``dense``) fills the caches; ``Refresh`` runs it in the background, preemptible
between layers. All activity is counted (MACs, active fraction per layer, time).
"""

from dataclasses import dataclass, field
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from fluxshard_kernels import blocks, compiled, cuda, sparse as S
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.head import HeadDecoder
from fluxshard_kernels.plan import ActiveBlocks, CameraToNet, FramePlan
from fluxshard_kernels.yolo import model as M
from fluxshard_kernels.yolo.processing import (Letterbox, letterbox_canvas, letterbox_geometry,
                                               letterbox_hwc)
from fluxshard_kernels.yolo.processing import WARM_SHAPES  # noqa: F401 (re-export)


#: Layers deeper than this stride always run dense on their (warped) input.
MAX_SPARSE_STRIDE = 32
#: Above stride 8 a 16-px block is one or two feature pixels, so a sparse layer there costs a
#: fixed overhead (masks, gathers, small convs) whatever it saves; such layers run dense once
#: their active fraction passes this. Measured (2 threads, ``bench``/``evaluate``): the moving
#: camera runs ~20 % faster with deep layers dense (equal retention), the static camera keeps
#: its MAC savings (dense deep layers would take it from 6 % to 55 % of the dense MACs for no
#: time gained).
DEEP_DENSE_ABOVE = 0.1
#: How cached features follow the block motion (``IncrementalExecutor``'s ``warp``).
WARPS = ('integer', 'bilinear')


def feature_block(stride: int, base: int) -> int:
    """Block edge (feature pixels) used at a layer of ``stride``: ``base`` / stride, at
    least 1 and at most 8."""
    return int(min(8, max(1, base // stride)))


@dataclass
class SF:
    """A value flowing through the incremental network.

    Attributes:
        fmap: block storage of the map (the cache of the op that produced it).
        mask: (h, w) bool, feature pixels changed this frame (exact receptive-field tracking).
        stride: stride relative to the network input.
    """

    fmap: S.FMap
    mask: torch.Tensor
    stride: int

    def tensor(self) -> torch.Tensor:
        return self.fmap.valid


@dataclass
class LayerStat:
    name: str
    kind: str
    stride: int
    macs_dense: int
    macs_done: int = 0
    active: float = 0.0
    mode: str = 'skip'


@dataclass
class StepStats:
    """Work done for one frame."""

    layers: List[LayerStat] = field(default_factory=list)
    seconds: float = 0.0
    warp_seconds: float = 0.0
    input_active: float = 0.0

    @property
    def macs_done(self) -> int:
        return sum(x.macs_done for x in self.layers)

    @property
    def macs_dense(self) -> int:
        return sum(x.macs_dense for x in self.layers)

    @property
    def mac_ratio(self) -> float:
        return self.macs_done / max(self.macs_dense, 1)


def grow(px: torch.Tensor, k: int, s: int, pad: int) -> torch.Tensor:
    """Pixels of a windowed op's output that see a changed input pixel."""
    if k == 1 and s == 1:
        return px
    return F.max_pool2d(px[None, None].float(), k, s, pad)[0, 0] > 0


class LayerCosts:
    """Measured time of each layer on each path, on this machine: the dense pass as an EWMA of
    its seconds, the sparse pass as ``a + b n`` of its active blocks n (least squares with
    exponential forgetting, O(1) per sample and per prediction; a, b >= 0). Warping the
    layer's cache counts on the sparse side, as a dense layer needs no warp.
    ``sparse_faster`` is None until a layer has both. Between ``begin_calibration`` and
    ``end_calibration`` the samples are held, and each layer keeps the fastest of its
    repeats per path and size: a calibration pass that the machine interrupted (a busy core)
    would otherwise set a layer's path for good where nothing re-measures it (queued kernel
    calls are not timed).

    At run time (``choose``) a busy moment must not set a layer's path for good either: a
    sample counts at most ``SPIKE`` times its path's prediction, and a layer that runs dense
    runs sparse once (a probe) after ``PROBE_MIN`` of its decisions, then at doubling
    intervals up to ``PROBE_MAX`` while the verdict holds; a probe moves the layer's sparse
    line through its sample (the slope kept), so one that finds sparse faster turns the layer
    at once.
    At most ``PROBES_PER_FRAME`` layers probe in one frame (``new_frame``); a turn that finds
    none left waits for the next frame, so the probes of layers measured together spread out.
    Before both, a layer that a slow moment turned dense never ran sparse again
    (``scripts/busy_costs.py``: two busy processes for 3 s left 7-24 of pets09-s2l1's 99
    layers dense to the clip's end; the cap alone keeps them sparse there, and the probes
    are for a layer that a long slow stretch turned dense). Only the
    sparse side is probed: a layer's dense pass costs its whole MACs (probing it too raised
    pets09-s2l1's MACs from about 15 to 20 % of dense), and every dense pass of the engine
    (the periodic refresh) re-measures it anyway. Where kernel calls are queued (two threads,
    ``compiled.stream``) the sparse side is not timed at run time, so nothing is probed."""

    SPIKE = 2.0
    PROBE_MIN, PROBE_MAX = 16, 128
    PROBES_PER_FRAME = 2

    def __init__(self, forget: float = 0.9, alpha: float = 0.3):
        self.forget, self.alpha = forget, alpha
        self.dense: Dict[str, float] = {}
        self.sparse: Dict[str, list] = {}  # name -> [sum w, sum w n, sum w t, w n^2, w n t]
        self._held: Optional[Dict[tuple, float]] = None
        #: per layer running dense: [decisions since it last ran sparse, probe interval]
        self._probe: Dict[str, list] = {}
        self._probing: Dict[str, str] = {}  # layer -> the path its probe runs
        self.probes = 0  # probes run (diagnostics, tests)
        self._budget = 0

    def new_frame(self):
        self._budget = self.PROBES_PER_FRAME

    def begin_calibration(self):
        self._held = {}

    def end_calibration(self):
        """Each layer's fastest sample per path (and per active-set size) becomes its cost."""
        held, self._held = self._held or {}, None
        for (name, path, count), seconds in sorted(held.items()):
            if path == 'dense':
                self.dense[name] = seconds
            else:
                self.observe(name, path, count, seconds)

    def observe(self, name: str, path: str, count: int, seconds: float):
        if self._held is not None:
            key = (name, path, count if path != 'dense' else 0)
            old = self._held.get(key)
            self._held[key] = seconds if old is None else min(old, seconds)
            return
        probe = self._probing.pop(name, None) == path
        if path == 'dense':
            old = self.dense.get(name)
            if old is None:
                self.dense[name] = seconds
            else:
                a = 0.5 if probe else self.alpha
                self.dense[name] = (1 - a) * old + a * min(seconds, self.SPIKE * old)
            return
        pred = self.predict_sparse(name, count)
        if pred is not None and pred > 0:
            seconds = min(seconds, self.SPIKE * pred)
        acc = self.sparse.get(name)
        if acc is None:
            acc = self.sparse[name] = [0.0] * 5
        elif probe and pred is not None:  # the line moves through the probe, slope kept
            delta = pred - seconds
            acc[2] -= delta * acc[0]
            acc[4] -= delta * acc[1]
        f, n = self.forget, float(count)
        acc[0] = f * acc[0] + 1.0
        acc[1] = f * acc[1] + n
        acc[2] = f * acc[2] + seconds
        acc[3] = f * acc[3] + n * n
        acc[4] = f * acc[4] + n * seconds

    def predict_sparse(self, name: str, count: int) -> Optional[float]:
        acc = self.sparse.get(name)
        if acc is None:
            return None
        w, sn, st, snn, snt = acc
        det = w * snn - sn * sn
        mean_n, mean_t = sn / w, st / w
        if det <= 1e-9 * max(w * snn, 1.0):  # one size seen: proportional above it
            return mean_t * max(1.0, count / max(mean_n, 1.0))
        b = (w * snt - sn * st) / det
        if b < 0:
            return mean_t
        return max(mean_t - b * mean_n, 0.0) + b * count

    def sparse_faster(self, name: str, count: int) -> Optional[bool]:
        d = self.dense.get(name)
        if d is None:
            return None
        sp = self.predict_sparse(name, count)
        return None if sp is None else sp < d

    def choose(self, name: str, count: int, may_probe_sparse: bool = True) -> Optional[bool]:
        """``sparse_faster``, except on a probe's turn (see the class): then sparse.
        ``may_probe_sparse``: False where a sparse probe would cost too much (most of the
        layer active); the turn then waits."""
        v = self.sparse_faster(name, count)
        if v is None or self._held is not None:
            return v
        if v:  # sparse runs (and is measured): a later dense stretch starts afresh
            if self._probe:
                self._probe.pop(name, None)
            return True
        st = self._probe.get(name)
        if st is None:
            self._probe[name] = [0, self.PROBE_MIN]
            return False
        st[0] += 1
        if st[0] < st[1] or self._budget <= 0 or not may_probe_sparse:
            return False
        self._budget -= 1
        st[0], st[1] = 0, min(2 * st[1], self.PROBE_MAX)
        self._probing[name] = 'sparse'
        self.probes += 1
        return True


class IncrementalExecutor:
    """Executes the YOLO11 primitives over per-primitive caches (see module docstring).

    Args:
        block: image block edge at the network input (MV and miss granularity).
        layout: sparse layout ('batch' or 'hw'); dense_above: active-block fraction above which
            a layer runs dense (``deep_dense_above`` above stride 8); exact_global: treat the
            attention block's output as changed everywhere when its input changed (exact)
            instead of near the change only.
        warp: 'bilinear' (default) or 'integer' (index remap, the remainder carried).
    """

    def __init__(self, block: int, layout: str = 'batch', dense_above: float = 0.5,
                 exact_global: bool = False, max_sparse_stride: int = MAX_SPARSE_STRIDE,
                 halo: str = 'fixed', halo_px: int = 8,
                 deep_dense_above: float = DEEP_DENSE_ABOVE, warp: str = 'bilinear'):
        if halo not in ('fixed', 'exact'):
            raise ValueError(f"halo must be 'fixed' or 'exact', got {halo!r}")
        if warp not in WARPS:
            raise ValueError(f'warp must be one of {WARPS}, got {warp!r}')
        self.warp = warp
        #: per stride, the motion (input px, per net block) not yet applied to the caches of
        #: that stride (integer warp); dropped when no cache of the stride was kept
        self.carry: Dict[int, np.ndarray] = {}
        self._fields: Dict[int, Optional[np.ndarray]] = {}
        self._kept: set = set()
        self._miss_blocks: Optional[np.ndarray] = None
        self.halo, self.halo_px = halo, halo_px
        self._plans = {}
        self.plan = FramePlan(None, halo_px, 'cpu')
        self.input_mask: Optional[torch.Tensor] = None
        self.B = block
        self.layout, self.dense_above = layout, dense_above
        self.deep_dense_above = deep_dense_above
        self.exact_global = exact_global
        self.max_sparse_stride = max_sparse_stride
        self.caches: Dict[str, S.FMap] = {}
        self._input: Optional[S.FMap] = None
        self._canvas: Optional[np.ndarray] = None  # the canvas _input holds (input_canvas)
        self._warped: Dict[str, int] = {}
        #: per layer, (input map, cache, its prepared fused call or None): see _windowed
        self._calls: Dict[str, tuple] = {}
        self.frame = 0
        self.mode = 'dense'
        self.mv: Optional[np.ndarray] = None
        self.grid: Optional[BlockGrid] = None
        self.stats = StepStats()
        self.checkpoint = None  # callable run between primitives (background preemption)
        self._ops = {}
        #: measured per-layer costs: where a layer has both, they choose sparse or dense
        #: (``IncrementalYOLO.calibrate`` measures both at start); None: fixed thresholds
        self.costs: Optional[LayerCosts] = None
        self.force: Optional[str] = None  # 'sparse': every layer sparse (calibration)
        self.head = HeadDecoder()

    def begin(self, mode: str, mv: Optional[np.ndarray], grid: BlockGrid,
              input_mask: Optional[torch.Tensor] = None):
        self.mode, self.grid = mode, grid
        self.input_mask = input_mask
        self._plans = {}
        if self.costs is not None:
            self.costs.new_frame()
        device = input_mask.device if input_mask is not None else 'cpu'
        self.plan = FramePlan(None if input_mask is None else
                              input_mask.detach().cpu().numpy().astype(bool), self.halo_px,
                              device)
        self.mv = mv if (mv is not None and np.any(mv)) else None
        self.frame += 1
        self.stats = StepStats()
        if mode == 'dense':  # every cache is rebuilt: nothing left to carry
            self.carry = {}
        else:  # a stride whose every layer ran dense last frame is aligned again
            self.carry = {s: c for s, c in self.carry.items() if s in self._kept}
        self._fields, self._kept, self._miss_blocks = {}, set(), None

    def adopt(self, caches: Dict[str, S.FMap]):
        """Take the caches of a dense pass (a background refresh's): aligned, nothing carried."""
        self.caches, self._warped, self.carry = caches, {}, {}

    def _field(self, stride: int) -> Optional[np.ndarray]:
        """The block motion (input px, (rows, cols, 2)) the caches of ``stride`` are warped by
        this frame, None when nothing moves there. ``bilinear``: the frame's MVs. ``integer``:
        the MVs plus the carried remainder, rounded to whole feature pixels; the new remainder
        is carried (zero on the recomputed blocks), so it never exceeds half a feature pixel."""
        if self.warp == 'bilinear':
            return self.mv
        if stride in self._fields:
            return self._fields[stride]
        field = None
        if self.mv is not None:
            tot = self.mv.astype(np.float32)
            old = self.carry.get(stride)
            if old is not None:
                tot = tot + old
            shift = np.round(tot / stride)
            carry = tot - shift * stride
            if self._miss_blocks is None and self.plan.input_mask is not None:
                from fluxshard_kernels.plan import pool_any
                self._miss_blocks = pool_any(self.plan.input_mask, self.B, self.grid.rows,
                                             self.grid.cols)
            if self._miss_blocks is not None:
                carry[self._miss_blocks] = 0
            self.carry[stride] = carry
            if np.any(shift):
                field = (shift * stride).astype(np.int32)
        self._fields[stride] = field
        return field

    # -- caches ----------------------------------------------------------------------------------
    def _cache(self, name: str, stride: int, skip: Optional[ActiveBlocks] = None
               ) -> Optional[S.FMap]:
        """The cache of ``name``, MV-warped to the current frame (once per frame). ``skip``:
        blocks about to be recomputed whole, which the warp leaves alone."""
        c = self.caches.get(name)
        if c is None or self.mode == 'dense':
            return c
        self._kept.add(stride)
        if self._warped.get(name) != self.frame:
            t0 = time.perf_counter()
            with S.STAGES('warp'):
                field = self._field(stride)
                if field is None:
                    pass
                elif c.serves():  # the moving pixels only, one C call
                    wp = self.plan.warp(field, self.grid, stride, c.h, c.w, None, c.b)
                    if wp is not None:
                        compiled.warp_skip(c.cd(), S.MARGIN, c.h, c.w, wp,
                                           None if skip is None else skip.array, c.b)
                else:
                    warp_moving(c, field, self.grid, stride, self._plans,
                                None if skip is None else skip.mask)
            self.stats.warp_seconds += time.perf_counter() - t0
            self._warped[name] = self.frame
        return c

    def _store(self, name: str, y: torch.Tensor, stride: int) -> S.FMap:
        compiled.sync()  # a queued call may still write the cache this replaces
        c = self.caches.get(name)
        if c is not None and (c.channels, c.h, c.w) == (y.shape[1], y.shape[2], y.shape[3]):
            c.valid.copy_(y)
        else:
            b = feature_block(stride, self.B)
            c = S.FMap.from_dense(y, b, -(-y.shape[2] // b), -(-y.shape[3] // b))
            self.caches[name] = c
        self._warped[name] = self.frame
        return c

    def input_map(self, x: torch.Tensor, b: int, rows: int, cols: int) -> S.FMap:
        """The network input in block storage, kept from frame to frame (one copy a frame)."""
        m = self._input
        if m is None or (m.channels, m.h, m.w, m.b, m.rows, m.cols, m.t.device) != (
                x.shape[1], x.shape[2], x.shape[3], b, rows, cols, x.device):
            m = self._input = S.FMap.from_dense(x, b, rows, cols)
        else:
            m.valid.copy_(x)
        self._canvas = None  # input_canvas must rewrite every block next time
        return m

    def input_canvas(self, canvas: np.ndarray, b: int, rows: int, cols: int) -> S.FMap:
        """The network input from the letterboxed BGR uint8 canvas: only the blocks that
        differ from the last canvas are converted and written (compiled kernels)."""
        m, h, w = self._input, canvas.shape[0], canvas.shape[1]
        force = m is None or (m.channels, m.h, m.w, m.b, m.rows, m.cols, m.t.device) != (
            3, h, w, b, rows, cols, torch.device('cpu')) or self._canvas is None
        if force:
            m = self._input = S.FMap.empty(3, b, rows, cols, h, w, torch.empty(0))
            self._canvas = np.empty_like(canvas)
        compiled.input_blocks(np.ascontiguousarray(canvas), self._canvas, m.t, S.MARGIN, b,
                              force)
        return m

    def _tick(self):
        if self.checkpoint is not None:
            self.checkpoint()  # may raise (a cancelled background refresh stops here)

    def _stat(self, name, kind, stride, macs, active, mode, done):
        self.stats.layers.append(LayerStat(name, kind, stride, int(macs), int(done),
                                           float(active), mode))

    def _mask(self, grown, stride: int, shape) -> torch.Tensor:
        """Changed pixels at a layer of output ``shape``: exact receptive-field growth
        (``halo='exact'``: ``grown()``), or the paper's motion-triggered set: the input misses
        at this stride plus ``halo_px`` (computed once per stride and frame; ``grown`` is then
        not evaluated)."""
        if self.halo == 'exact' or self.input_mask is None:
            return grown()
        return self.plan.pixels(stride, shape)

    def _blocks(self, px: torch.Tensor, cache):
        """(active blocks, active fraction) of ``px`` on ``cache``'s grid (the frame's plan:
        once per mask and grid per frame)."""
        if cache is None:
            return None, 1.0
        ab = self.plan.blocks(px, cache.b, cache.rows, cache.cols)
        return ab, ab.frac

    def _sparse_ok(self, cache, frac, stride, name: str = '', count: int = 0):
        """Run this layer sparse: by its measured costs where it has both (``costs``), else
        by the fixed thresholds (``dense_above``, ``deep_dense_above`` past stride 8)."""
        if self.mode == 'dense' or cache is None or stride > self.max_sparse_stride:
            return False
        if self.force == 'sparse':
            return True
        if self.costs is not None and name:
            verdict = self.costs.choose(name, count,
                                        frac <= self.dense_above and not compiled.queued())
            if verdict is not None:
                return verdict
        limit = self.dense_above if stride <= 8 else min(self.dense_above,
                                                         self.deep_dense_above)
        return frac <= limit

    def _observe(self, name, path, count, t0):
        # a queued layer's time is not its work (``compiled.stream``): the costs keep what
        # was measured with every call run at once (``IncrementalYOLO.calibrate``)
        if self.costs is not None and not compiled.queued():
            self.costs.observe(name, path, count, time.perf_counter() - t0)

    # -- primitives ------------------------------------------------------------------------------
    def _windowed(self, name, x: SF, op, s, k, pad, c_out, macs_px, dense_fn, kind):
        self._tick()
        s_out = x.stride * s
        ho = (x.fmap.h + 2 * pad - k) // s + 1
        wo = (x.fmap.w + 2 * pad - k) // s + 1
        macs = macs_px * ho * wo
        if self.mode == 'dense':
            t0 = time.perf_counter()
            c = self._store(name, dense_fn(x.tensor()), s_out)
            self._observe(name, 'dense', 0, t0)
            self._stat(name, kind, s_out, macs, 1.0, 'dense', macs)
            return SF(c, torch.ones(ho, wo, dtype=torch.bool, device=x.mask.device), s_out)
        with S.STAGES('masks'):
            px = self._mask(lambda: grow(x.mask, k, s, pad), s_out, (ho, wo))
            cache = self.caches.get(name)
            bm, frac = self._blocks(px, cache)
        t0 = time.perf_counter()
        sparse = frac > 0 and self._sparse_ok(cache, frac, s_out, name,
                                              bm.count if bm is not None else 0)
        if cache is not None and (frac == 0 or sparse):
            # warp only caches that will be reused, and not the blocks recomputed next
            cache = self._cache(name, s_out, bm if frac else None)
        if cache is not None and frac == 0:
            self._stat(name, kind, s_out, macs, 0.0, 'skip', 0)
            return SF(cache, px, s_out)
        if sparse:
            if not isinstance(x.fmap, S.CatMap):
                call = self._calls.get(name)
                if call is None or call[0] is not x.fmap or call[1] is not cache:
                    call = self._calls[name] = (x.fmap, cache, S.prepare_windowed(
                        x.fmap, cache, op, self.layout))
                if call[2] is not None and compiled.fused():  # one call, arguments kept
                    with S.STAGES('conv'):
                        call[2](*bm.ptrs(), bm)
                else:
                    S.sparse_windowed(x.fmap, cache, bm.mask, op, self.layout, idx=bm.idx)
            elif k == 1 and s == 1 and 'wmat' in op and cache.serves() and all(
                    p.serves() for p in x.fmap.parts):
                S.sparse_conv1x1_parts(x.fmap, cache, bm.idx, op)
            else:  # one tensor for the reference path (and any other reader of a concat)
                S.sparse_windowed(x.fmap.materialize(), cache, bm.mask, op, self.layout,
                                  idx=bm.idx)
            self._observe(name, 'sparse', bm.count, t0)
            done = bm.count * cache.b * cache.b * macs_px
            self._stat(name, kind, s_out, macs, frac, 'sparse', min(done, macs))
            return SF(cache, px, s_out)
        with S.STAGES('dense layers'):
            c = self._store(name, dense_fn(x.tensor()), s_out)
        self._observe(name, 'dense', 0, t0)
        self._stat(name, kind, s_out, macs, frac, 'dense', macs)
        return SF(c, px, s_out)

    def _conv_like(self, name, conv: torch.nn.Conv2d, act, x: SF):
        k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        key = id(conv)
        if key not in self._ops:
            self._ops[key] = S.conv_op(conv.weight.detach(), conv.bias.detach()
                                       if conv.bias is not None else None, s, pad,
                                       'silu' if act else None, conv.groups)
        op = self._ops[key]
        macs_px = conv.out_channels * (conv.in_channels // conv.groups) * k * k

        def dense_fn(t):
            y = F.conv2d(t, conv.weight, conv.bias, s, pad, groups=conv.groups)
            return F.silu(y) if act else y
        return self._windowed(name, x, op, s, k, pad, conv.out_channels, macs_px, dense_fn,
                              'conv')

    def conv(self, m: 'M.Conv', x: SF) -> SF:
        return self._conv_like(m._fs_name, m.conv, m.act, x)

    def conv2d(self, m: torch.nn.Conv2d, x: SF) -> SF:
        return self._conv_like(m._fs_name, m, False, x)

    def maxpool(self, name, x: SF, k) -> SF:
        op = {'kind': 'maxpool', 'kernel': k, 'stride': 1, 'padding': k // 2}
        return self._windowed(name, x, op, 1, k, k // 2, x.fmap.channels, 0,
                              lambda t: F.max_pool2d(t, k, 1, k // 2), 'maxpool')

    def _blockwise(self, name, xs: List[SF], px, stride, fn_sparse, fn_dense, kind, macs=0):
        """Ops whose output block depends only on the same block of the inputs."""
        self._tick()
        if self.mode == 'dense':
            t0 = time.perf_counter()
            c = self._store(name, fn_dense(), stride)
            self._observe(name, 'dense', 0, t0)
            self._stat(name, kind, stride, macs, 1.0, 'dense', macs)
            return SF(c, px, stride)
        with S.STAGES('masks'):
            cache = self.caches.get(name)
            bm, frac = self._blocks(px, cache)
        t0 = time.perf_counter()
        sparse = frac > 0 and self._sparse_ok(cache, frac, stride, name,
                                              bm.count if bm is not None else 0)
        if cache is not None and (frac == 0 or sparse):
            # a sparse op rewrites the bm blocks whole; a dense fallback rewrites everything
            cache = self._cache(name, stride, bm if frac else None)
        if cache is not None and frac == 0:
            self._stat(name, kind, stride, macs, 0.0, 'skip', 0)
            return SF(cache, px, stride)
        if sparse and fn_sparse(cache, bm):
            self._observe(name, 'sparse', bm.count, t0)
            self._stat(name, kind, stride, macs, frac, 'sparse', macs * frac)
            return SF(cache, px, stride)
        with S.STAGES('dense layers'):
            c = self._store(name, fn_dense(), stride)
        if not sparse:  # a sparse op that cannot run here: its dense fallback is no sample
            self._observe(name, 'dense', 0, t0)
        self._stat(name, kind, stride, macs, frac, 'dense', macs)
        return SF(c, px, stride)

    def _pointwise(self, name, xs: List[SF], fn, kind) -> SF:
        px = xs[0].mask
        if self.mode != 'dense':
            with S.STAGES('masks'):
                px = self._mask(lambda: torch.stack([x.mask for x in xs]).any(0), xs[0].stride,
                                px.shape)

        def sparse(cache, bm):
            if any(x.fmap.b != cache.b or x.fmap.rows != cache.rows for x in xs):
                return False
            if kind == 'add' and cache.serves() and all(x.fmap.serves() for x in xs):
                with S.STAGES('pointwise'):  # straight between the maps, one call
                    compiled.add_blocks(xs[0].fmap.t, xs[1].fmap.t, cache.t, S.MARGIN,
                                        cache.h, cache.w, bm.rows, bm.cols, cache.b)
                return True
            S.sparse_pointwise(fn, [x.fmap for x in xs], cache, bm.mask, idx=bm.idx)
            return True
        return self._blockwise(name, xs, px, xs[0].stride, sparse,
                               lambda: fn(*[x.tensor() for x in xs]), kind)

    def add(self, name, a: SF, b: SF) -> SF:
        return self._pointwise(name, [self._real(a), self._real(b)], torch.add, 'add')

    def cat(self, name, xs: List[SF]) -> SF:
        """A concat without a copy (``sparse.CatMap``): its readers take the parts' channels
        from the parts' caches. Its changed pixels are the union of the parts'."""
        def geometry(f):
            return (f.b, f.rows, f.cols, f.h, f.w)
        if any(isinstance(x.fmap, S.CatMap) or geometry(x.fmap) != geometry(xs[0].fmap)
               for x in xs):
            return self._pointwise(name, [self._real(x) for x in xs],
                                   lambda *t: torch.cat(t, 1), 'concat')
        self._tick()
        px = xs[0].mask
        if self.mode != 'dense':
            with S.STAGES('masks'):
                px = self._mask(lambda: torch.stack([x.mask for x in xs]).any(0), xs[0].stride,
                                px.shape)
        self._stat(name, 'concat', xs[0].stride, 0, 0.0, 'virtual', 0)
        return SF(S.CatMap([x.fmap for x in xs]), px, xs[0].stride)

    @staticmethod
    def _real(x: SF) -> SF:
        """``x`` with its map in block storage (a concat's parts copied into one)."""
        if isinstance(x.fmap, S.CatMap):
            return SF(x.fmap.materialize(), x.mask, x.stride)
        return x

    def split(self, name, x: SF, sizes) -> List[SF]:
        x = self._real(x)
        out, c0 = [], 0
        f = x.fmap
        for n in sizes:
            out.append(SF(S.FMap(f.t[:, c0:c0 + n], f.b, f.rows, f.cols, f.h, f.w), x.mask,
                          x.stride))
            c0 += n
        return out

    def _up_mask(self, x: SF, s_out: int) -> torch.Tensor:
        def up():
            return F.interpolate(x.mask[None, None].float(), scale_factor=2.0)[0, 0] > 0
        if self.mode == 'dense':
            return up()
        h, w = x.mask.shape
        with S.STAGES('masks'):
            return self._mask(up, s_out, (2 * h, 2 * w))

    def upsample(self, name, x: SF) -> SF:
        x = self._real(x)
        s_out = x.stride // 2
        px = self._up_mask(x, s_out)

        def sparse(cache, bm):
            f = x.fmap
            if not ((cache.b == 2 * f.b and cache.rows == f.rows) or cache.b == f.b):
                return False
            S.sparse_upsample2x(f, cache, bm.mask, idx=bm.idx)
            return True
        return self._blockwise(name, [x], px, s_out, sparse, lambda: F.interpolate(
            x.tensor(), scale_factor=2.0, mode='nearest'), 'upsample')

    def convtranspose(self, m: torch.nn.ConvTranspose2d, x: SF) -> SF:
        x = self._real(x)
        s_out = x.stride // m.stride[0]
        px = self._up_mask(x, s_out)
        xt = x.tensor()
        macs = xt.shape[2] * xt.shape[3] * m.in_channels * m.out_channels * 4

        def sparse(cache, bm):
            if cache.b != 2 * x.fmap.b or cache.rows != x.fmap.rows:
                return False
            cache.scatter(bm.rows, bm.cols, m(x.fmap.gather(bm.rows, bm.cols)))
            if not cache.serves():
                cache.clear_padding()
            return True
        return self._blockwise(m._fs_name, [x], px, s_out, sparse, lambda: m(xt),
                               'convtranspose', macs)

    def global_op(self, name, fn, x: SF, stride, rows=None) -> SF:
        """An op with global reach (attention). ``rows(x, sel)``, where given, evaluates its
        output at some flat pixel indices only: the changed pixels are then recomputed (their
        queries against every pixel's keys and values) and the others keep their warped
        cache, as the layers after it treat them as unchanged."""
        if self.mode == 'dense' or self.exact_global:
            px = torch.ones_like(x.mask) if x.mask.any() else x.mask
        else:
            # approximation: the attention's global reach is left to the background refresh;
            # its output is treated as changed next to the changed input only
            px = self._mask(lambda: grow(x.mask, 3, 1, 1), x.stride, x.mask.shape)

        def sparse(cache, bm):
            if rows is None:
                return False
            ys, xs = block_pixels(bm.rows, bm.cols, cache.b, cache.h, cache.w)
            sel = torch.from_numpy(ys * cache.w + xs).to(cache.t.device)
            with S.STAGES('attention'):
                y = rows(x.tensor(), sel)[0]  # (C, P)
                compiled.sync()  # the cache's queued warp first
                cache.t[0][:, torch.from_numpy(ys + S.MARGIN).to(cache.t.device),
                           torch.from_numpy(xs + S.MARGIN).to(cache.t.device)] = y
            return True
        return self._blockwise(name, [x], px, x.stride, sparse, lambda: fn(x.tensor()),
                               'attention')


def block_pixels(rows, cols, b: int, h: int, w: int):
    """(ys, xs) int64 of the pixels of blocks (rows[i], cols[i]) of ``b`` pixels inside an
    h x w map."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if b == 1:
        return rows, cols
    yy = (rows[:, None] * b + np.arange(b)).reshape(-1, b, 1)
    xx = (cols[:, None] * b + np.arange(b)).reshape(-1, 1, b)
    yy, xx = np.broadcast_arrays(yy, xx)
    keep = (yy < h) & (xx < w)
    return yy[keep], xx[keep]


def _warp_plan(mv: np.ndarray, grid: BlockGrid, stride: int, h: int, w: int, device, dtype,
               skip: Optional[torch.Tensor] = None, b: int = 0):
    """Sampling grid of an MV warp at one stride: None (nothing moves), ('dense', grid) or
    ('sparse', (ys, xs, grid)) for the moving pixels only, less the ``skip`` blocks (of ``b``
    feature pixels) that are recomputed anyway."""
    from fluxshard_kernels.warp import flow_at_stride, sampling_grid
    flow = flow_at_stride(mv, grid, stride, h, w, device).to(dtype)
    moving = (flow[0] != 0) | (flow[1] != 0)
    if skip is not None:
        moving &= ~skip.repeat_interleave(b, 0).repeat_interleave(b, 1)[:h, :w]
    n_moving = int(moving.sum())
    if not n_moving:
        return None
    if n_moving > 0.4 * h * w:  # most pixels move: one dense bilinear pass is cheaper
        return 'dense', sampling_grid(flow), flow
    ys, xs = torch.nonzero(moving, as_tuple=True)
    sy = (ys.to(dtype) + flow[1][ys, xs]).clamp(0, h - 1)
    sx = (xs.to(dtype) + flow[0][ys, xs]).clamp(0, w - 1)
    g = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], -1)
    return 'sparse', (ys, xs, g.view(1, 1, -1, 2))


def warp_moving(fm: S.FMap, mv: np.ndarray, grid: BlockGrid, stride: int,
                plans: Optional[dict] = None, skip: Optional[torch.Tensor] = None):
    """Bilinear MV warp of a cache in place, touching only pixels whose flow is non-zero and
    that lie outside the ``skip`` blocks (recomputed right after, so their warp is wasted).

    ``plans`` (one dict per frame) shares the sampling grids between the caches of a stride
    and skip mask (the engine reuses one block mask object per mask and grid per frame).
    """
    key = (stride, fm.h, fm.w, fm.t.device, fm.t.dtype, id(skip))
    if plans is not None and key in plans:
        plan = plans[key]
    else:
        plan = _warp_plan(mv, grid, stride, fm.h, fm.w, fm.t.device, fm.t.dtype, skip, fm.b)
        if plans is not None:
            plans[key] = plan
    if plan is None:
        return
    v = fm.valid
    if plan[0] == 'dense':
        # border padding: a sample beyond the map takes the edge value (clamped source)
        if S._cuda_kernels(fm.t):  # one cupy kernel reading the channels-last storage
            v.copy_(cuda.warp_bilinear(fm.t, plan[2], S.MARGIN, fm.h, fm.w))
        else:
            v.copy_(F.grid_sample(v, plan[1], mode='bilinear', padding_mode='border',
                                  align_corners=True))
        return
    ys, xs, g = plan[1]
    vals = F.grid_sample(v, g, mode='bilinear', padding_mode='border',
                         align_corners=True)[0, :, 0]  # (C, P), read before writing
    v[0][:, ys, xs] = vals


class IncrementalYOLO:
    """A YOLO11 model run incrementally over camera frames.

    The runner keeps its own reference image (``state``, camera pixels): the frame its caches
    describe, advanced each step exactly like a proxy state (integer MV warp, then the
    recomputed blocks pasted from the new frame). Estimate motion against ``state``.

    Args:
        model: a loaded ``YOLO11``.
        block: block edge at the network input, pixels (feature blocks are block / stride).
        max_sparse_stride, layout, dense_above, exact_global, halo, halo_px,
            deep_dense_above, warp: see IncrementalExecutor.
        imgsz: letterbox size.
    """

    def __init__(self, model: 'M.YOLO11', block: int = 16,
                 max_sparse_stride: int = MAX_SPARSE_STRIDE,
                 layout: str = 'batch', dense_above: float = 0.8, imgsz: int = 640,
                 exact_global: bool = False, halo: str = 'fixed', halo_px: int = 8,
                 deep_dense_above: float = DEEP_DENSE_ABOVE, warp: str = 'bilinear'):
        self.model = model.eval()
        self.device = next(model.parameters()).device  # the engine runs where the model is
        self.block, self.imgsz = block, imgsz
        self.cfg = dict(max_sparse_stride=max_sparse_stride, layout=layout,
                        dense_above=dense_above, exact_global=exact_global, halo=halo,
                        deep_dense_above=deep_dense_above,
                        halo_px=halo_px, warp=warp)
        self.ex: Optional[IncrementalExecutor] = None
        self.layer_costs: Dict[tuple, LayerCosts] = {}  # per network input shape
        self.state: Optional[np.ndarray] = None
        #: (state, raw output) of the last pass: a frame that changes nothing returns it
        self._last: Optional[tuple] = None
        self.lb: Optional[Letterbox] = None
        self._cam_to_net: Optional[CameraToNet] = None
        self._lock = threading.Lock()
        self._queue = True  # a sparse pass queues its small kernel calls (compiled.stream)

    # -- geometry -------------------------------------------------------------------------------
    def _setup(self, shape):
        lb = letterbox_geometry(shape[0], shape[1], self.imgsz, square=False)
        if self.lb is None or (lb.in_h, lb.in_w, lb.src_h, lb.src_w) != (
                self.lb.in_h, self.lb.in_w, self.lb.src_h, self.lb.src_w):
            self.lb = lb
            self.net_grid = BlockGrid(lb.in_h, lb.in_w, self.block)
            self.ex = IncrementalExecutor(self.block, **self.cfg)
            if self.device.type == 'cpu':  # host timers time CPU work, not GPU launches
                self.ex.costs = self.layer_costs.setdefault((lb.in_h, lb.in_w), LayerCosts())

    def _to_net(self, cam_grid: BlockGrid, mv_cam: Optional[np.ndarray], miss_cam):
        """Camera-grid MVs and misses -> network-grid MVs (input px) and miss mask (the
        mapping is built once per geometry, ``plan.CameraToNet``)."""
        m = self._cam_to_net
        if m is None or (m.cam_grid, m.lb, m.net_grid) != (cam_grid, self.lb, self.net_grid):
            m = self._cam_to_net = CameraToNet(cam_grid, self.lb, self.net_grid)
        return m.mv(mv_cam), torch.from_numpy(m.miss_mask(miss_cam)).to(self.device)

    def _full(self) -> torch.Tensor:
        return torch.ones(self.lb.in_h, self.lb.in_w, dtype=torch.bool, device=self.device)

    # -- execution -------------------------------------------------------------------------------
    def _run(self, img: np.ndarray, mode, mv_net, mask, ex=None):
        ex = ex or self.ex
        t0 = time.perf_counter()
        with S.STAGES('letterbox'):
            ex.begin(mode, mv_net, self.net_grid, mask)
            if self.device.type == 'cpu' and compiled.available():
                canvas, _ = letterbox_canvas(img, self.imgsz, square=False)
                fm = ex.input_canvas(canvas, self.block, self.net_grid.rows, self.net_grid.cols)
            else:
                x, _ = letterbox_hwc(img, self.imgsz, square=False)
                fm = ex.input_map(torch.from_numpy(x).permute(2, 0, 1)[None].to(self.device),
                                  self.block, self.net_grid.rows, self.net_grid.cols)
        inp = SF(fm, mask, 1)
        m = ex.plan.input_mask  # the frame's mask on the host (a count, not a float copy)
        ex.stats.input_active = (np.count_nonzero(m) / max(m.size, 1) if m is not None
                                 else float(mask.float().mean()))
        # on the CPU the small kernel calls of a sparse pass are queued to the engine's worker
        # thread, overlapping this thread's Python (``compiled.stream``; done when it ends)
        with torch.no_grad():
            with compiled.stream(mode != 'dense' and self.device.type == 'cpu' and
                                 self._queue):
                feats = self.model.features(inp, ex)
            self.last_masks = {k: ([v.mask for v in vals] if isinstance(vals, list) else
                                   vals.mask) for k, vals in feats.items()}
            with S.STAGES('head'):  # the anchors whose raw outputs changed
                raw = ex.head(self.model, feats)
        ex.stats.seconds = time.perf_counter() - t0
        return raw

    def dense(self, frame: np.ndarray):
        """Dense pass on ``frame``: fills every cache; state := frame. Returns (raw, lb, stats)."""
        with self._lock:
            return self._dense_locked(frame)

    def step(self, frame: np.ndarray, mv_cam: Optional[np.ndarray], miss_cam,
             cam_block: int = 16):
        """Incremental pass: warp caches by ``mv_cam`` (camera block MVs against ``state``),
        recompute the ``miss_cam`` camera blocks. Returns (raw, lb, stats)."""
        with self._lock:
            if self.state is None or self.state.shape != frame.shape:
                return self._dense_locked(frame)
            cam_grid = BlockGrid(frame.shape[0], frame.shape[1], cam_block)
            miss_cam = np.asarray(miss_cam, dtype=np.int64)
            if miss_cam.size == 0 and (mv_cam is None or not np.any(mv_cam)) and \
                    self._last is not None and self._last[0] is self.state:
                # nothing moved and nothing missed: every layer would keep its cache and the
                # head its output (a refresh that swapped the state in runs the network)
                self.ex.stats = StepStats()
                return self._last[1], self.lb, self.ex.stats
            with S.STAGES('state image'):
                new, mv_net, mask = self._advance(frame, mv_cam, miss_cam, cam_grid)
            raw = self._run(new, 'sparse', mv_net, mask)
            self.state = new
            self._last = (new, raw)
            return raw, self.lb, self.ex.stats

    def _advance(self, frame, mv_cam, miss_cam, cam_grid):
        """The next state image (integer MV warp, misses pasted), net-grid MVs and miss mask."""
        if mv_cam is not None and np.any(mv_cam):
            mvx = np.asarray(mv_cam)[..., 0].reshape(-1)
            mvy = np.asarray(mv_cam)[..., 1].reshape(-1)
            new = blocks.warp_image_int(self.state, cam_grid, mvx, mvy)
        else:
            new = self.state.copy()
        blocks.paste_blocks(frame, new, cam_grid, miss_cam)
        mv_net, mask = self._to_net(cam_grid, mv_cam, miss_cam)
        return new, mv_net, mask

    def warm_up(self, shapes=WARM_SHAPES):
        """Per camera ``shape``: build kernels and buffers (the first pass at a size does) and
        measure every layer on both paths (``calibrate``), then forget the frames: the first
        real frame is not a warm-up frame. Returns the seconds it took."""
        t0 = time.perf_counter()
        for shape in shapes:
            self.calibrate(shape)
        with self._lock:
            self.state, self.lb, self.ex, self._last = None, None, None, None
        return time.perf_counter() - t0

    def calibrate(self, shape, fractions=(0.05, 0.3)):
        """Measure each layer's dense pass and its sparse pass at two sizes of active set on
        blank frames of camera ``shape`` (the cost of a layer does not depend on the pixels),
        so that from the first real frame every layer runs on its measured faster path
        (``LayerCosts``; without it the fixed thresholds decide until both paths have run).
        Where a sparse pass will queue its kernel calls (``compiled.stream``), a layer it runs
        dense is a torch op on one thread: the dense side is measured on one thread then."""
        blank = np.zeros(tuple(shape)[:2] + (3,), np.uint8)
        grid = BlockGrid(blank.shape[0], blank.shape[1], 16)
        mv = np.zeros((grid.rows, grid.cols, 2), np.int32)
        mv[::2, :, 0] = 1  # half the blocks move: the sparse side pays a typical cache warp
        threads = torch.get_num_threads()
        one = self.device.type == 'cpu' and compiled.would_queue()

        def dense():
            if one:
                torch.set_num_threads(1)
            try:
                self.dense(blank)
            finally:
                torch.set_num_threads(threads)
        dense()  # the first pass at a size allocates (not timed: no costs yet)
        costs = self.ex.costs
        with self._lock:  # the first sparse step allocates: not timed
            self.ex.force, self.ex.costs, self._queue = 'sparse', None, False
        try:
            self.step(blank, mv, self._calibration_misses(grid, fractions[0]), 16)
        finally:
            with self._lock:
                self.ex.force, self.ex.costs, self._queue = None, costs, True
        costs.begin_calibration()
        try:
            # each size and the dense pass twice, apart in time: a layer keeps its fastest
            for _ in range(2):
                dense()
                for frac in fractions:
                    with self._lock:
                        self.ex.force = 'sparse'
                        self._queue = False  # each layer's own time: its calls run at once
                    try:
                        self.step(blank, mv, self._calibration_misses(grid, frac), 16)
                    finally:
                        with self._lock:
                            self.ex.force, self._queue = None, True
        finally:
            costs.end_calibration()

    @staticmethod
    def _calibration_misses(grid, frac):
        # a compact region (the top rows): the active set at each layer stays near frac
        return np.arange(max(1, int(round(frac * grid.count))))

    def shadow_executor(self) -> 'IncrementalExecutor':
        """A fresh executor with this runner's configuration (a background refresh fills its
        caches, then they replace the runner's)."""
        return IncrementalExecutor(self.block, **self.cfg)

    def _dense_locked(self, frame):
        self._setup(frame.shape)
        raw = self._run(frame, 'dense', None, self._full())
        self.state = frame.copy()
        self._last = (self.state, raw)
        return raw, self.lb, self.ex.stats
