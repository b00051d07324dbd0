"""The incremental engine's compiled CPU kernels (``csrc/engine.c``: the per-layer ones as
the ``_engine`` module's fast-call functions, the per-frame ones through ctypes).

One call per layer instead of a storm of small torch ops: gather the active blocks' windows
(or a convolution's im2col rows, so the conv is one matrix product), scatter results, warp
the moving pixels of a cache in place. (The per-frame image updates, integer block-MV warp
and pasting recomputed blocks, are ``blocks.warp_image_int`` / ``blocks.paste_blocks`` on the
same library.) Each function takes torch tensors or numpy arrays and works on their memory;
``serves(t)`` says whether a tensor can go through them (CPU, float32, channels-last pixels).
The torch code in ``sparse.py`` and ``incremental.py`` stays the reference (and the path on
CUDA, or when the kernel is not built); tests compare the two.
"""

import threading
from typing import Optional

import numpy as np
import torch

from fluxshard_kernels import native
from fluxshard_kernels.native import ENV  # noqa: F401 - the switch, re-exported


def _lib():
    return native.engine()


_BUILT: list = []  # [whether the module was found], once per process


def available() -> bool:
    """The C kernels are built and not switched off (``FLUXSHARD_ENGINE_KERNELS=torch``)."""
    if not native.KERNELS_ON:
        return False
    if not _BUILT:
        _BUILT.append(_lib() is not None)
    return _BUILT[0]


def serves(t: torch.Tensor) -> bool:
    """``t`` (1, C, H, W) can go through the kernels: CPU float32 with contiguous channels."""
    # the cheapest tests first: the engine asks this a few hundred times a frame
    return (native.KERNELS_ON and t.is_cpu and t.dtype == torch.float32 and t.stride(1) == 1
            and available())


#: Queue the small per-layer kernel calls inside ``stream`` (see ``stream``); False: every
#: call runs at once (the previous behaviour, and the reference the queue is tested against).
QUEUE = True
_Q = threading.local()  # .on: this thread queues its kernel calls; .keep: what they use


class stream:
    """Within it, this thread's small per-layer kernel calls (those that would run on one
    thread: a big call still splits over the threads, after the queue empties) are queued to
    the engine's worker thread and return at once; the worker runs them in order while this
    thread's Python prepares the next layers (on two cores the interpreter's time and the
    kernels' overlap). Anything that reads or writes a map outside these kernels calls
    ``sync`` first (``sparse.FMap.valid`` and the torch paths do); leaving waits for every
    queued call. Queues only where torch may use two threads or more (a core for the worker)
    and ``on``."""

    __slots__ = ('on', 'prev', 'threads')

    def __init__(self, on: bool = True):
        self.on = on

    def __enter__(self):
        self.prev = getattr(_Q, 'on', False)
        self.threads = torch.get_num_threads()
        _Q.on = bool(self.on and would_queue())
        if _Q.on:  # two threads, this one and the worker: no thread pool spinning beside them
            _Q.threads = self.threads
            if getattr(_Q, 'keep', None) is None:
                _Q.keep = []
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if _Q.on:
            torch.set_num_threads(self.threads)
        _Q.on = self.prev
        sync()
        return False


def sync():
    """Wait until every kernel call this thread queued has run (a failed one raises
    RuntimeError here), and let go of what they used."""
    keep = getattr(_Q, 'keep', None)
    if keep:
        try:
            _fx().sync()
        finally:
            keep.clear()


def would_queue() -> bool:
    """Whether a ``stream`` entered now would queue (the kernels built, ``QUEUE``, torch on
    two threads or more)."""
    return QUEUE and available() and torch.get_num_threads() >= 2


def queued() -> bool:
    """Whether this thread is queueing its kernel calls now (in a ``stream``)."""
    return getattr(_Q, 'on', False)


def _threads() -> int:
    """The threads a kernel call may use: torch's setting (in a stream, the one it found)."""
    return _Q.threads if getattr(_Q, 'on', False) else torch.get_num_threads()


def _halves_queued(n: int, keep, q, now, args) -> bool:
    """In a stream, a big call over n items in two halves: [n // 2, n) queued to the worker,
    [0, n // 2) run here at once, after the queue has emptied (so both see every earlier
    write; the halves write apart). ``args(i0, i1)``: the call's arguments for items [i0, i1).
    False outside a stream."""
    if not getattr(_Q, 'on', False):
        return False
    sync()
    h = n // 2
    _Q.keep.append(keep)
    q(*args(h, n))
    now(*args(0, h))
    return True


def _queue(keep) -> bool:
    """Whether this call is queued (this thread is in a ``stream``); ``keep`` then stays alive
    until the queue has run it."""
    if getattr(_Q, 'on', False):
        _Q.keep.append(keep)
        return True
    return False


_SCRATCH = threading.local()


def _scratch(n: int) -> np.ndarray:
    """A float32 work buffer of at least n values, kept per thread (the warp's samples)."""
    buf = getattr(_SCRATCH, 'buf', None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.buf = np.empty(max(n, 1 << 16), np.float32)
    return buf


#: Calls moving at least this many bytes run in two halves on two threads when torch may use
#: more than one (ctypes releases the GIL for the call); smaller ones are not worth the handoff.
SPLIT_BYTES = 1 << 19
_POOL = []


def _halves(n: int, nbytes: int, run):
    """run(i0, i1) over [0, n): in two halves on two threads (this one and a worker) when the
    call is big and the engine may use two threads, else at once."""
    if not _split(n, nbytes):
        run(0, n)
        return
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor
        _POOL.append(ThreadPoolExecutor(1, thread_name_prefix='fluxshard-kernels'))
    h = n // 2
    fut = _POOL[0].submit(run, h, n)
    run(0, h)
    fut.result()


_PTRS: dict = {}  # id(array) -> (array, address): the engine passes the same index arrays
#                  to every layer of a frame, and numpy's ``.ctypes.data`` costs ~4 us a call


def _ptr(a) -> int:
    if isinstance(a, torch.Tensor):
        return a.data_ptr()
    hit = _PTRS.get(id(a))
    if hit is not None and hit[0] is a:
        return hit[1]
    if len(_PTRS) > 128:  # the entries keep their arrays alive (no id reuse): a few frames
        _PTRS.clear()
    p = a.__array_interface__['data'][0]
    _PTRS[id(a)] = (a, p)
    return p


def _i64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _fx():
    """The engine module's METH_FASTCALL kernel functions (``csrc/engine.c``, the end): the
    same library as ``_lib()``, without ctypes' per-argument cost."""
    if not _FX:
        from fluxshard_kernels import _engine
        _FX.append(_engine)
    return _FX[0]


_FX: list = []


def _split(n: int, nbytes: int) -> bool:
    """Whether a call over n items moving nbytes runs in two halves (``_halves``)."""
    return n >= 2 and nbytes >= SPLIT_BYTES and _threads() >= 2


def gather(t: torch.Tensor, rows, cols, off: int, step: int, p: int, valid, fill: float = 0.0
           ) -> torch.Tensor:
    """(N, C, p, p) channels-last copy of the p x p windows at storage (off + r * step,
    off + c * step) of blocks (rows[i], cols[i]); pixels outside ``valid`` = (y0, y1, x0, x1)
    (storage coordinates) read ``fill``."""
    rows, cols = _i64(rows), _i64(cols)
    n, c = len(rows), t.shape[1]
    out = torch.empty((n, p, p, c), dtype=torch.float32)
    f, pt, pr, pc, po, per = _fx().gather, t.data_ptr(), _ptr(rows), _ptr(cols), \
        out.data_ptr(), p * p * c * 4
    head = (pt, t.stride(2), t.stride(3), c, valid[0], valid[1], valid[2], valid[3], float(fill))
    if not _split(n, n * per):
        f(*head, pr, pc, n, off, step, p, po)
    else:
        _halves(n, n * per, lambda i0, i1: f(*head, pr + 8 * i0, pc + 8 * i0, i1 - i0, off,
                                             step, p, po + per * i0))
    return out.permute(0, 3, 1, 2)


def scatter(t: torch.Tensor, margin: int, h: int, w: int, y: torch.Tensor, rows, cols, b: int):
    """Write y (N, C, b, b), or its (N * b * b, C) rows, into blocks (rows[i], cols[i]) of
    ``t`` inside the valid h x w region."""
    rows, cols = _i64(rows), _i64(cols)
    if y.dim() == 4:
        y = y.permute(0, 2, 3, 1)
    if not y.is_contiguous() or y.dtype != torch.float32:
        y = y.to(torch.float32).contiguous()
    c, n = t.shape[1], len(rows)
    f, pt, py, pr, pc, per = _fx().scatter, t.data_ptr(), y.data_ptr(), _ptr(rows), \
        _ptr(cols), b * b * c * 4
    rs, cs = t.stride(2), t.stride(3)
    if not _split(n, n * per):
        f(pt, rs, cs, c, margin, h, w, py, pr, pc, n, b)
    else:
        _halves(n, n * per, lambda i0, i1: f(pt, rs, cs, c, margin, h, w, py + per * i0,
                                             pr + 8 * i0, pc + 8 * i0, i1 - i0, b))


def im2col(t: torch.Tensor, rows, cols, off: int, k: int, s: int, bo: int, valid,
           fill: float = 0.0) -> torch.Tensor:
    """(N * bo * bo, k * k * C) rows of a k x k, stride-``s`` convolution for the output
    blocks (rows[i], cols[i]) of ``bo`` pixels, windows at storage (off + r * bo * s, ...);
    columns ordered (ky, kx, c). Pixels outside ``valid`` read ``fill``."""
    rows, cols = _i64(rows), _i64(cols)
    n, c = len(rows), t.shape[1]
    out = torch.empty((n * bo * bo, k * k * c), dtype=torch.float32)
    f, pt, pr, pc, po, per = _fx().im2col, t.data_ptr(), _ptr(rows), _ptr(cols), \
        out.data_ptr(), bo * bo * k * k * c * 4
    head = (pt, t.stride(2), t.stride(3), c, valid[0], valid[1], valid[2], valid[3], float(fill))
    if not _split(n, n * per):
        f(*head, pr, pc, n, off, k, s, bo, po)
    else:
        _halves(n, n * per, lambda i0, i1: f(*head, pr + 8 * i0, pc + 8 * i0, i1 - i0, off, k,
                                             s, bo, po + per * i0))
    return out


def warp(t: torch.Tensor, margin: int, h: int, w: int, ys: np.ndarray, xs: np.ndarray,
         sy: np.ndarray, sx: np.ndarray):
    """Pixels (ys, xs) of the h x w map := bilinear samples at (sy, sx) (clamped to the map),
    all read before any is written (``warp_skip``'s kernel with no block skipped; a big warp
    splits over the threads inside it)."""
    n, c = len(ys), t.shape[1]
    threads = torch.get_num_threads() if _split(n, n * c * 16) else 1
    _fx().warp_skip(t.data_ptr(), t.stride(2), t.stride(3), c, margin, h, w, _ptr(ys),
                    _ptr(xs), _ptr(sy), _ptr(sx), n, _ptr(_scratch(n * c)), 0, 1, 1, 1,
                    threads)


def warp_skip(cd, margin: int, h: int, w: int, wp, skip: Optional[np.ndarray], b: int):
    """``warp`` of the moving pixels of plan ``wp`` (``plan.WarpPlan``) of the map with
    storage descriptor ``cd`` (``sparse.FMap.cd()``), less those in the ``skip`` blocks (bool
    (rows, cols), blocks of b pixels; None: none): one call, no per-layer filtering of the
    plan; a big warp splits over the threads inside it."""
    n, c = len(wp.ys), cd[3]
    p = wp.__dict__.get('_p')
    if p is None:
        p = wp.__dict__['_p'] = (_ptr(wp.ys), _ptr(wp.xs), _ptr(wp.sy), _ptr(wp.sx))
    if skip is not None:
        skip = np.ascontiguousarray(skip)
        ps, sr, sc = _ptr(skip), skip.shape[0], skip.shape[1]
    else:
        ps, sr, sc = 0, 1, 1
    if _split(n, n * c * 16) and not getattr(_Q, 'on', False):  # both threads inside it
        _fx().warp_skip(cd[0], cd[1], cd[2], c, margin, h, w, p[0], p[1], p[2], p[3], n,
                        _ptr(_scratch(n * c)), ps, sr, sc, b, torch.get_num_threads())
    else:  # work buffer 0: the running thread's own (a queued call runs on the worker)
        (_fx().q_warp_skip if _queue((wp, skip)) else _fx().warp_skip)(
            cd[0], cd[1], cd[2], c, margin, h, w, p[0], p[1], p[2], p[3], n, 0, ps, sr, sc, b,
            1)


def add_blocks(a: torch.Tensor, b_: torch.Tensor, dst: torch.Tensor, margin: int, h: int,
               w: int, rows, cols, b: int):
    """Blocks (rows[i], cols[i]) of ``dst`` := a + b_ (a residual add), inside the valid
    h x w region."""
    rows, cols = _i64(rows), _i64(cols)
    c, f, n = dst.shape[1], _fx().add_blocks, len(rows)
    head = (a.data_ptr(), a.stride(2), a.stride(3), b_.data_ptr(), b_.stride(2), b_.stride(3),
            dst.data_ptr(), dst.stride(2), dst.stride(3), c, margin, h, w)
    pr, pc = _ptr(rows), _ptr(cols)
    if not _split(n, n * b * b * c * 12):
        (_fx().q_add_blocks if _queue((rows, cols)) else f)(*head, pr, pc, n, b)
    elif not _halves_queued(n, (rows, cols), _fx().q_add_blocks, _fx().n_add_blocks,
                            lambda i0, i1: (*head, pr + 8 * i0, pc + 8 * i0, i1 - i0, b)):
        _halves(n, n * b * b * c * 12,
                lambda i0, i1: f(*head, pr + 8 * i0, pc + 8 * i0, i1 - i0, b))


def upsample2x_blocks(src: torch.Tensor, dst: torch.Tensor, margin: int, h: int, w: int, rows,
                      cols, b: int):
    """Blocks (rows[i], cols[i]) of 2b pixels of ``dst`` (valid h x w) := the same blocks of b
    pixels of ``src``, nearest 2x upsampled."""
    rows, cols = _i64(rows), _i64(cols)
    c, f, n = src.shape[1], _fx().upsample2x_blocks, len(rows)
    head = (src.data_ptr(), src.stride(2), src.stride(3), dst.data_ptr(), dst.stride(2),
            dst.stride(3), c, margin, h, w)
    pr, pc = _ptr(rows), _ptr(cols)
    if not _split(n, n * 4 * b * b * c * 8):
        (_fx().q_upsample2x_blocks if _queue((rows, cols)) else f)(*head, pr, pc, n, b)
    elif not _halves_queued(n, (rows, cols), _fx().q_upsample2x_blocks,
                            _fx().n_upsample2x_blocks,
                            lambda i0, i1: (*head, pr + 8 * i0, pc + 8 * i0, i1 - i0, b)):
        _halves(n, n * 4 * b * b * c * 8,
                lambda i0, i1: f(*head, pr + 8 * i0, pc + 8 * i0, i1 - i0, b))


def diff_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Indices of the rows of (n, d) contiguous float32 ``a`` that differ bitwise from ``b``'s."""
    n, d = a.shape
    out = np.empty(n, np.uint8)
    _lib().fs_diff_rows(_ptr(a), _ptr(b), n, d, out.ctypes.data)
    return np.flatnonzero(out)


def rows_update(parts, shapes, rows: torch.Tensor) -> np.ndarray:
    """The head's raw rows kept in place: level l's parts (``parts[l]``, (1, C_i, h, w)
    channels-last maps) go into their columns of the rows of that level's anchors; returns
    the indices of the rows that changed (bitwise)."""
    changed = np.zeros(rows.shape[0], np.uint8)
    f, pr, ld, pc = _fx().rows_update, rows.data_ptr(), rows.shape[1], _ptr(changed)
    a0 = 0
    for level, (h, w) in zip(parts, shapes):
        c0 = 0
        for t in level:
            f(t.data_ptr(), t.stride(2), t.stride(3), t.shape[1], h, w, pr, ld, c0, a0, pc)
            c0 += t.shape[1]
        a0 += h * w
    return np.flatnonzero(changed)


def decode_rows(src: torch.Tensor, idx: Optional[np.ndarray], geom: tuple, dfl: torch.Tensor,
                nc: int, out: torch.Tensor, columns: bool = False):
    """The detection head's decode (``Detect.decode_columns``) of anchors ``idx`` (None: all)
    of the raw outputs ``src``, float32 (n, width) rows (``columns``: (width, n)), into their
    columns of ``out`` (1, 4 + nc [+ more], n), in one pass; ``geom``: the anchors' (x, y,
    stride), contiguous float32 (n,) each; ``dfl``: the distribution's R weights."""
    a, c = (1, 0) if columns else (0, 1)
    n, sa, sc = src.shape[a], src.stride(a), src.stride(c)
    k = n if idx is None else len(idx)
    idx = None if idx is None else _i64(idx)
    _fx().decode_rows(src.data_ptr(), sa, sc, 0 if idx is None else _ptr(idx), k,
                      geom[0].data_ptr(), geom[1].data_ptr(), geom[2].data_ptr(),
                      dfl.data_ptr(), dfl.numel(), nc, out.data_ptr(), out.stride(1),
                      torch.get_num_threads())


def input_blocks(canvas: np.ndarray, prev: np.ndarray, dst: torch.Tensor, margin: int, bs: int,
                 force: bool):
    """The blocks of the BGR uint8 ``canvas`` that differ from ``prev`` (all when ``force``)
    -> RGB in [0, 1] into the 3-channel storage ``dst``; ``prev`` := ``canvas`` there."""
    h, w = canvas.shape[:2]
    _lib().fs_input_blocks(canvas.ctypes.data, prev.ctypes.data, h, w, bs, _ptr(dst),
                           dst.stride(2), dst.stride(3), margin, int(force))


_BLAS: list = []


def fused() -> bool:
    """Whether one convolution layer runs as one call (``conv_blocks``): the kernels are on
    and torch's own BLAS ``sgemm_`` (MKL in torch's x86 wheels) was found and handed to them,
    once per process. Without it the layer runs as im2col, addmm, SiLU and scatter calls."""
    if not _BLAS:
        ok = False
        if available() and torch.backends.mkl.is_available():
            import ctypes
            import os
            try:
                lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), 'lib',
                                               'libtorch_cpu.so'))
                sgemm = ctypes.cast(lib.sgemm_, ctypes.c_void_p).value
                threads = getattr(lib, 'MKL_Set_Num_Threads_Local', None)  # (int), by value
                _fx().set_blas(sgemm, ctypes.cast(threads, ctypes.c_void_p).value
                               if threads is not None else 0)
                ok = True
            except (OSError, AttributeError):
                ok = False
        _BLAS.append(ok)
    return _BLAS[0] and native.KERNELS_ON


def _conv_args(op: dict) -> tuple:
    """The weight arguments of ``conv_blocks`` for the convolution ``op`` (rows K of its
    matrix, its address, the bias's or 0, columns N, SiLU or not), found once per op (the op
    keeps its tensors, so the addresses stay valid)."""
    ca = op.get('cargs')
    if ca is None:
        wmat, bias = op['wmat'], op.get('bias')
        ca = op['cargs'] = (wmat.shape[0], wmat.data_ptr(),
                            bias.data_ptr() if bias is not None else 0, wmat.shape[1],
                            int(op.get('act') == 'silu'))
    return ca


def conv_blocks(src, rows, cols, off: int, k: int, s: int, valid, a: Optional[torch.Tensor],
                op: dict, dst, margin: int, h: int, w: int, bo: int):
    """Blocks (rows[i], cols[i]) of bo pixels of ``dst`` (valid h x w) := act(A W + bias)
    for the convolution ``op`` (``sparse.conv_op``: its (K, N) matrix ``wmat``, bias, act),
    A the rows of ``im2col(src, rows, cols, off, k, s, bo, valid)`` (or ``a``, rows already
    made), in one call: the matrix product is torch's own sgemm (see ``fused``). ``src`` and
    ``dst`` are storage descriptors (``sparse.FMap.cd()``; src None with ``a``)."""
    rows, cols = _i64(rows), _i64(cols)
    ca = _conv_args(op)
    sp, rs, cs, c = src[:4] if src is not None else (0, 0, 0, 0)
    n = len(rows)
    # a big layer: its blocks split over the threads inside the call (OpenMP), else one
    pa = a.data_ptr() if a is not None else 0
    if _split(n, n * bo * bo * ca[0] * 4):
        per = bo * bo * ca[0] * 4 if a is not None else 0
        pr, pc = _ptr(rows), _ptr(cols)
        if _halves_queued(n, (rows, cols, a), _fx().q_conv_blocks, _fx().n_conv_blocks,
                          lambda i0, i1: (sp, rs, cs, c, *valid, pr + 8 * i0, pc + 8 * i0,
                                          i1 - i0, off, k, s, bo, pa + per * i0, *ca, 1,
                                          *dst[:3], margin, h, w)):
            return
        f, threads = _fx().conv_blocks, _threads()
    else:
        f, threads = _fx().q_conv_blocks if _queue((rows, cols, a)) else _fx().conv_blocks, 1
    f(sp, rs, cs, c, valid[0], valid[1], valid[2], valid[3], _ptr(rows),
      _ptr(cols), n, off, k, s, bo, pa, ca[0], ca[1], ca[2], ca[3], ca[4], threads, dst[0],
      dst[1], dst[2], margin, h, w)


class ConvCall:
    """``conv_blocks`` of one layer between two maps with its fixed arguments found once (the
    storages, windows, weights and output geometry): a frame hands it only the active
    blocks."""

    __slots__ = ('pre', 'mid', 'post', 'work')

    def __init__(self, src_cd, valid, off: int, k: int, s: int, op: dict, dst_cd, margin: int,
                 h: int, w: int, bo: int):
        ca = _conv_args(op)
        self.pre = (src_cd[0], src_cd[1], src_cd[2], src_cd[3], valid[0], valid[1], valid[2],
                    valid[3])
        self.mid = (off, k, s, bo, 0) + ca
        self.post = (dst_cd[0], dst_cd[1], dst_cd[2], margin, h, w)
        self.work = bo * bo * ca[0] * 4

    def __call__(self, rows_ptr: int, cols_ptr: int, n: int, keep=None):
        """Blocks (rows[i], cols[i]), i < n (int64 arrays at the given addresses, which
        ``keep`` holds: a queued call keeps it alive until it has run)."""
        if _split(n, n * self.work):
            if not _halves_queued(n, keep, _fx().q_conv_blocks, _fx().n_conv_blocks,
                                  lambda i0, i1: (*self.pre, rows_ptr + 8 * i0,
                                                  cols_ptr + 8 * i0, i1 - i0, *self.mid, 1,
                                                  *self.post)):
                _fx().conv_blocks(*self.pre, rows_ptr, cols_ptr, n, *self.mid, _threads(),
                                  *self.post)
        else:
            (_fx().q_conv_blocks if _queue(keep) else _fx().conv_blocks)(
                *self.pre, rows_ptr, cols_ptr, n, *self.mid, 1, *self.post)


def dwconv_blocks(src: torch.Tensor, rows, cols, off: int, k: int, s: int, valid,
                  wdw: torch.Tensor, bias: Optional[torch.Tensor], act: bool,
                  dst: torch.Tensor, margin: int, h: int, w: int, bo: int):
    """A depthwise k x k convolution of ``src`` (weights ``wdw`` (k * k, C)) into blocks
    (rows[i], cols[i]) of bo pixels of ``dst`` (valid h x w), with bias and SiLU, read
    straight from the storage (windows as ``im2col``'s) in one call."""
    rows, cols = _i64(rows), _i64(cols)
    n = len(rows)
    head = (src.data_ptr(), src.stride(2), src.stride(3), src.shape[1], *valid)
    tail = (wdw.data_ptr(), bias.data_ptr() if bias is not None else 0, int(act), dst.data_ptr(),
            dst.stride(2), dst.stride(3), margin, h, w)
    if _split(n, n * bo * bo * k * k * src.shape[1] * 4):
        pr, pc = _ptr(rows), _ptr(cols)
        if _halves_queued(n, (rows, cols), _fx().q_dwconv_blocks, _fx().n_dwconv_blocks,
                          lambda i0, i1: (*head, pr + 8 * i0, pc + 8 * i0, i1 - i0, off, k, s,
                                          bo, *tail, 1)):
            return
        f, threads = _fx().dwconv_blocks, _threads()
    else:
        f, threads = _fx().q_dwconv_blocks if _queue((rows, cols)) else _fx().dwconv_blocks, 1
    f(*head, _ptr(rows), _ptr(cols), n, off, k, s, bo, *tail, threads)


def maxpool_blocks(src: torch.Tensor, rows, cols, off: int, k: int, s: int, valid,
                   dst: torch.Tensor, margin: int, h: int, w: int, bo: int):
    """A k x k max-pool of ``src`` into blocks (rows[i], cols[i]) of bo pixels of ``dst``
    (valid h x w), windows as ``im2col``'s, pixels outside ``valid`` not counting (torch's
    -inf padding), read straight from the storage in one call (queued in a ``stream``)."""
    rows, cols = _i64(rows), _i64(cols)
    f = _fx().q_maxpool_blocks if _queue((rows, cols)) else _fx().maxpool_blocks
    f(src.data_ptr(), src.stride(2), src.stride(3), src.shape[1], *valid, _ptr(rows),
      _ptr(cols), len(rows), off, k, s, bo, dst.data_ptr(), dst.stride(2), dst.stride(3),
      margin, h, w)


def rows_into(src: torch.Tensor, margin: int, h: int, w: int, rows, cols, b: int,
              out: torch.Tensor, c_off: int):
    """Columns [c_off, c_off + C) of the (N * b * b, ld) rows ``out`` := the C channels of the
    pixels of blocks (rows[i], cols[i]) of ``src`` (zeros outside its valid h x w): one input
    of a concat, straight into the rows of the 1x1 convolution that reads it."""
    rows, cols = _i64(rows), _i64(cols)
    c, f, n = src.shape[1], _fx().rows_into, len(rows)
    ps, pr, pc, po, ld = src.data_ptr(), _ptr(rows), _ptr(cols), out.data_ptr(), out.shape[1]
    per = b * b * ld * 4
    rs, cs = src.stride(2), src.stride(3)
    if not _split(n, n * b * b * c * 8):
        g = _fx().q_rows_into if _queue((rows, cols, out)) else f
        g(ps, rs, cs, c, margin, h, w, pr, pc, n, b, po, ld, c_off)
    elif not _halves_queued(n, (rows, cols, out), _fx().q_rows_into, _fx().n_rows_into,
                            lambda i0, i1: (ps, rs, cs, c, margin, h, w, pr + 8 * i0,
                                            pc + 8 * i0, i1 - i0, b, po + per * i0, ld, c_off)):
        _halves(n, n * b * b * c * 8, lambda i0, i1: f(
            ps, rs, cs, c, margin, h, w, pr + 8 * i0, pc + 8 * i0, i1 - i0, b, po + per * i0,
            ld, c_off))
