"""The engine's compiled CPU kernels equal their torch references: sparse layers (im2col
convs, grouped convs, max-pools, point-wise ops) on hypothesis-generated maps, masks, strides and
channel slices; the moving-pixel cache warp on integer and sub-pixel motion; the integer image
warp and block paste; the per-frame plan's masks; and a whole engine step on real frames."""

import contextlib

import numpy as np
from hypothesis import given, settings, strategies as st
import pytest
import torch
import torch.nn.functional as F

from fluxshard_kernels import blocks, compiled, native, sparse as S
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.plan import FramePlan


def test_the_kernels_are_built():
    """colcon builds csrc/engine.c (scripts/setup.sh); without it every test below would
    compare the torch path with itself."""
    assert compiled.available()


@contextlib.contextmanager
def torch_path():
    """Inside it every kernel runs its torch reference."""
    old = native.use_kernels(False)
    try:
        yield
    finally:
        native.use_kernels(old)


@contextlib.contextmanager
def unfused():
    """Inside it a convolution layer runs as separate im2col, addmm, SiLU and scatter calls
    (as where torch has no BLAS to hand to the kernels) instead of ``compiled.conv_blocks``."""
    compiled.fused()
    old = compiled._BLAS[0]
    compiled._BLAS[0] = False
    try:
        yield
    finally:
        compiled._BLAS[0] = old


def _maps(c, h, w, b, seed, extra=0):
    """Source map (channels [extra:] of a wider storage when extra > 0: a channel slice, as the
    C2f split hands on), a destination cache, and a random block mask."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = -(-h // b), -(-w // b)
    wide = S.FMap.from_dense(torch.randn(1, c + extra, h, w, generator=g), b, rows, cols)
    src = S.FMap(wide.t[:, extra:], b, rows, cols, h, w)
    return src, g, rows, cols


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 12), c_out=st.integers(1, 12), h=st.integers(5, 40),
       w=st.integers(5, 40), b=st.sampled_from([2, 4, 8]), k=st.sampled_from([1, 3]),
       s=st.sampled_from([1, 2]), frac=st.floats(0.0, 1.0), act=st.booleans(),
       extra=st.sampled_from([0, 3]), seed=st.integers(0, 2 ** 16))
def test_sparse_conv_kernels_equal_the_torch_path(c, c_out, h, w, b, k, s, frac,
                                                  act, extra, seed):
    if b % s:
        return
    src, g, rows, cols = _maps(c, h, w, b, seed, extra)
    op = S.conv_op(torch.randn(c_out, c, k, k, generator=g), torch.randn(c_out, generator=g),
                   s, act='silu' if act else None)
    mask = torch.rand(rows, cols, generator=g) < frac
    dense = S.dense_windowed(src, op)
    outs = []
    for path in ('fused', 'torch', 'calls'):  # one call per layer, the reference, or
        dst = S.FMap.from_dense(torch.zeros_like(dense), b // s, rows, cols)  # a call a step
        if path == 'torch':
            with torch_path():
                S.sparse_windowed(src, dst, mask, op)
        elif path == 'calls':
            with unfused():
                S.sparse_windowed(src, dst, mask, op)
        else:
            S.sparse_windowed(src, dst, mask, op)
        outs.append(dst)
    torch.testing.assert_close(outs[0].t, outs[1].t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[2].t, outs[1].t, rtol=1e-5, atol=1e-5)
    full = S.FMap.from_dense(torch.zeros_like(dense), b // s, rows, cols)
    S.sparse_windowed(src, full, torch.ones(rows, cols, dtype=torch.bool), op)
    torch.testing.assert_close(full.valid, dense, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 8), h=st.integers(5, 33), w=st.integers(5, 33),
       b=st.sampled_from([2, 4, 8]), frac=st.floats(0.0, 1.0), pool=st.booleans(),
       s=st.sampled_from([1, 2]), act=st.booleans(), extra=st.sampled_from([0, 3]),
       seed=st.integers(0, 2 ** 16))
def test_maxpool_and_depthwise_equal_the_torch_path(c, h, w, b, frac, pool, s, act, extra,
                                                    seed):
    """Max-pools (``compiled.maxpool_blocks``) and depthwise convs (``compiled.dwconv_blocks``),
    any stride, with or without SiLU, reading a channel slice, equal the torch path."""
    src, g, rows, cols = _maps(c, h, w, b, seed, extra)
    if pool:
        op = {'kind': 'maxpool', 'kernel': 5, 'stride': s, 'padding': 2}
    else:
        op = S.conv_op(torch.randn(c, 1, 3, 3, generator=g), torch.randn(c, generator=g), s,
                       act='silu' if act else None, groups=c)
    if b % s:
        return
    mask = torch.rand(rows, cols, generator=g) < frac
    ho, wo = (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1  # 3x3 pad 1 and 5x5 pad 2 alike
    outs = []
    for ref in (False, True):
        dst = S.FMap.from_dense(torch.zeros(1, c, ho, wo), b // s, rows, cols)
        if ref:
            with torch_path():
                S.sparse_windowed(src, dst, mask, op)
        else:
            S.sparse_windowed(src, dst, mask, op)
        outs.append(dst.t)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(4, 30), w=st.integers(4, 30), b=st.sampled_from([2, 4]),
       frac=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_pointwise_and_upsample_equal_the_torch_path(h, w, b, frac, seed):
    a, g, rows, cols = _maps(3, h, w, b, seed)
    bb, _, _, _ = _maps(3, h, w, b, seed + 1, extra=2)
    mask = torch.rand(rows, cols, generator=g) < frac
    for fn in (torch.add, lambda *t: torch.cat(t, 1)):
        outs = []
        for ref in (False, True):
            c_out = fn(a.valid, bb.valid).shape[1]
            dst = S.FMap.from_dense(torch.zeros(1, c_out, h, w), b, rows, cols)
            if ref:
                with torch_path():
                    S.sparse_pointwise(fn, [a, bb], dst, mask)
            else:
                S.sparse_pointwise(fn, [a, bb], dst, mask)
            outs.append(dst.t)
        assert torch.equal(outs[0], outs[1])
    outs = []
    for ref in (False, True):
        up = S.FMap.from_dense(torch.zeros(1, 3, 2 * h, 2 * w), 2 * b, rows, cols)
        if ref:
            with torch_path():
                S.sparse_upsample2x(a, up, mask)
        else:
            S.sparse_upsample2x(a, up, mask)
        outs.append(up.t)
    assert torch.equal(outs[0], outs[1])


@settings(max_examples=25, deadline=None)
@given(h=st.integers(4, 30), w=st.integers(4, 30), b=st.sampled_from([1, 2, 4]),
       frac=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_direct_add_equals_the_torch_path(h, w, b, frac, seed):
    """The executor's residual add writes straight between the maps (no gather / scatter round
    trip): the same blocks as the torch reference, inputs of any channel slice."""
    a, g, rows, cols = _maps(3, h, w, b, seed)
    bb, _, _, _ = _maps(3, h, w, b, seed + 1, extra=2)
    mask = torch.rand(rows, cols, generator=g) < frac
    r, c = [x.numpy() for x in torch.nonzero(mask, as_tuple=True)]
    init = torch.randn(1, 3, h, w, generator=g)
    ref = S.FMap.from_dense(init, b, rows, cols)
    with torch_path():
        S.sparse_pointwise(torch.add, [a, bb], ref, mask)
    out = S.FMap.from_dense(init, b, rows, cols)
    compiled.add_blocks(a.t, bb.t, out.t, S.MARGIN, h, w, r, c, b)
    assert torch.equal(out.t, ref.t)


def test_the_fused_silu_equals_torch_over_the_float_range():
    """``conv_blocks`` applies its own vectorised SiLU: through an identity 1x1 conv it equals
    torch's SiLU to a few ulp from -1e4 to 1e4 (the clamped tails included), and never gives
    a NaN or an infinity."""
    if not compiled.fused():
        pytest.skip('torch has no BLAS to hand to the kernels here')
    tails = torch.tensor([-1e4, -88.5, -87.2, -1e-30, 0.0, 1e-30, 88.7, 1e4])
    vals = torch.cat([torch.linspace(-120, 120, 48001), tails])
    n = vals.numel() // 8 * 8
    x = vals[:n].view(1, 8, -1, 1)  # channels of pixels stacked down one column
    h = x.shape[2]
    src = S.FMap.from_dense(x, 1, h, 1)
    op = S.conv_op(torch.eye(8).view(8, 8, 1, 1), torch.zeros(8), 1, act='silu')
    dst = S.FMap.from_dense(torch.zeros_like(x), 1, h, 1)
    S.sparse_windowed(src, dst, torch.ones(h, 1, dtype=torch.bool), op)
    assert torch.isfinite(dst.valid).all()
    torch.testing.assert_close(dst.valid, F.silu(x), rtol=2e-6, atol=1e-30)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(4, 30), w=st.integers(4, 30), b=st.sampled_from([1, 2, 4]),
       frac=st.floats(0.0, 1.0), act=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_a_1x1_conv_reads_a_concat_from_its_parts(h, w, b, frac, act, seed):
    """The engine's concat is never copied (``CatMap``): a 1x1 conv over it takes each part's
    channels straight into its im2col columns, and equals the conv over the concatenated map
    (the reference path, which copies it into one map first)."""
    a, g, rows, cols = _maps(3, h, w, b, seed)
    bb, _, _, _ = _maps(2, h, w, b, seed + 1, extra=3)
    cat = S.CatMap([a, bb])
    op = S.conv_op(torch.randn(4, 5, 1, 1, generator=g), torch.randn(4, generator=g), 1,
                   act='silu' if act else None)
    mask = torch.rand(rows, cols, generator=g) < frac
    idx = [x.numpy() for x in torch.nonzero(mask, as_tuple=True)]
    init = torch.randn(1, 4, h, w, generator=g)
    got = S.FMap.from_dense(init, b, rows, cols)
    S.sparse_conv1x1_parts(cat, got, idx, op)
    calls = S.FMap.from_dense(init, b, rows, cols)
    with unfused():
        S.sparse_conv1x1_parts(cat, calls, idx, op)
    ref = S.FMap.from_dense(init, b, rows, cols)
    with torch_path():
        S.sparse_windowed(cat.materialize(), ref, mask, op)
    torch.testing.assert_close(got.t, ref.t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(calls.t, ref.t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('task', ['detect', 'pose'])
def test_head_decoder_redoes_the_changed_anchors_only(task):
    """The incremental head decode equals the dense decode, and decodes exactly the anchors
    whose raw outputs changed."""
    from fluxshard_kernels.head import HeadDecoder
    from fluxshard_kernels.yolo import model as M
    model = M.load(task, '', 'cpu')
    head = model.model[23]
    g = torch.Generator().manual_seed(1)

    def level(c, h, w):
        return torch.randn(1, c, h, w, generator=g).contiguous(
            memory_format=torch.channels_last)
    shapes = ((12, 16), (6, 8), (3, 4))
    feats = {'det': [level(head.no, h, w) for h, w in shapes]}
    if task == 'pose':
        feats['extra'] = [level(head.nk, h, w) for h, w in shapes]
    dec = HeadDecoder()
    first = dec(model, feats)
    kept = first.clone()
    torch.testing.assert_close(first, model.head_outputs(feats))
    assert dec.decoded == 12 * 16 + 6 * 8 + 3 * 4
    feats['det'][0][:, :, 2:4, 5:8] += 1  # 6 anchors of level 0
    (feats['extra'] if task == 'pose' else feats['det'])[2][:, 0, 1, 1] -= 1  # 1 of level 2
    torch.testing.assert_close(dec(model, feats), model.head_outputs(feats))
    assert dec.decoded == 7
    torch.testing.assert_close(dec(model, feats), model.head_outputs(feats))
    assert dec.decoded == 0
    assert torch.equal(first, kept)  # an output handed out is never changed afterwards


def test_input_canvas_equals_the_letterbox():
    """The engine's input written block by block from the uint8 canvas (changed blocks only)
    equals the float letterbox of the whole frame, frame after frame."""
    from fluxshard_kernels.incremental import IncrementalExecutor
    from fluxshard_kernels.yolo.processing import letterbox_canvas, letterbox_hwc
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    ex = IncrementalExecutor(16)
    for i in range(3):
        if i:
            y, x = rng.integers(0, 100), rng.integers(0, 180)
            img[y:y + 20, x:x + 20] = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        canvas, lb = letterbox_canvas(img, 160)
        fm = ex.input_canvas(canvas, 16, -(-lb.in_h // 16), -(-lb.in_w // 16))
        ref, _ = letterbox_hwc(img, 160)
        assert torch.equal(fm.valid[0].permute(1, 2, 0), torch.from_numpy(ref))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(6, 40), w=st.integers(6, 40),
       stride=st.sampled_from([1, 2, 4, 8, 16, 32]), slack=st.integers(0, 20),
       integer=st.booleans(), moving=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_cache_warp_equals_grid_sample(h, w, stride, slack, integer, moving, seed):
    """The C warp of the moving pixels equals the torch reference (grid_sample, bilinear,
    border) on sub-pixel and integer motion; pixels that do not move are untouched. Strides
    above the block size, and maps reaching past the block grid (``slack``), included."""
    from fluxshard_kernels.incremental import warp_moving
    rng = np.random.default_rng(seed)
    grid = BlockGrid(max(16, h * stride - slack), max(16, w * stride - slack), 16)
    mv = rng.integers(-9, 10, (grid.rows, grid.cols, 2)).astype(np.float32)
    if not integer:
        mv += rng.random((grid.rows, grid.cols, 2)).astype(np.float32)
    mv[rng.random((grid.rows, grid.cols)) > moving] = 0
    b = max(1, 16 // stride)
    rows, cols = -(-h // b), -(-w // b)
    x = torch.from_numpy(rng.standard_normal((1, 5, h, w)).astype(np.float32))
    ref, got = S.FMap.from_dense(x, b, rows, cols), S.FMap.from_dense(x, b, rows, cols)
    warp_moving(ref, mv, grid, stride)
    plan = FramePlan(np.zeros((h, w), bool), 8, 'cpu').warp(mv, grid, stride, h, w, None, b)
    if plan is not None:
        compiled.warp(got.t, S.MARGIN, h, w, plan.ys, plan.xs, plan.sy, plan.sx)
    torch.testing.assert_close(got.t, ref.t, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(6, 40), w=st.integers(6, 40), stride=st.sampled_from([1, 2, 4, 8, 16]),
       frac=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_warp_less_skip_blocks_in_one_call(h, w, stride, frac, seed):
    """The warp that leaves the skip blocks alone inside the kernel (``warp_skip``) equals
    the warp of the plan filtered by the skip blocks, bit for bit."""
    rng = np.random.default_rng(seed)
    grid = BlockGrid(h * stride, w * stride, 16)
    mv = (rng.integers(-6, 7, (grid.rows, grid.cols, 2)) +
          rng.random((grid.rows, grid.cols, 2))).astype(np.float32)
    b = max(1, 16 // stride)
    rows, cols = -(-h // b), -(-w // b)
    x = torch.from_numpy(rng.standard_normal((1, 6, h, w)).astype(np.float32))
    plan = FramePlan(np.zeros((h, w), bool), 8, 'cpu')
    skip_px = torch.from_numpy(rng.random((h, w)) < frac * 0.2)
    plan._np[id(skip_px)] = skip_px.numpy()
    skip = plan.blocks(skip_px, b, rows, cols)
    got, ref = S.FMap.from_dense(x, b, rows, cols), S.FMap.from_dense(x, b, rows, cols)
    base = plan.warp(mv, grid, stride, h, w, None, b)
    filtered = plan.warp(mv, grid, stride, h, w, skip, b)
    compiled.warp_skip(got.cd(), S.MARGIN, h, w, base, skip.array, b)
    if filtered is not None:
        compiled.warp(ref.t, S.MARGIN, h, w, filtered.ys, filtered.xs, filtered.sy, filtered.sx)
    assert torch.equal(got.t, ref.t)
    if filtered is not None:  # and it did move pixels
        assert not torch.equal(got.t, S.FMap.from_dense(x, b, rows, cols).t)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 50), w=st.integers(1, 50),
       stride=st.sampled_from([1, 2, 4, 8, 16, 32]), slack=st.integers(-20, 20),
       moving=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_moving_pixels_in_c_equal_numpy(h, w, stride, slack, moving, seed):
    """The moving pixels of a map, generated in C from the moving blocks, equal the numpy
    reference: the same pixels, order and source coordinates, on grids smaller or larger
    than the map."""
    from fluxshard_kernels.plan import _moving_c, _moving_np
    rng = np.random.default_rng(seed)
    grid = BlockGrid(max(1, h * stride + slack), max(1, w * stride + slack), 16)
    field = (rng.integers(-9, 10, (grid.rows, grid.cols, 2)) +
             rng.random((grid.rows, grid.cols, 2))).astype(np.float32)
    field[rng.random((grid.rows, grid.cols)) > moving] = 0
    a, b = _moving_c(field, grid, stride, h, w), _moving_np(field, grid, stride, h, w)
    assert (a is None) == (b is None)
    if a is not None:
        for x, y in ((a.ys, b.ys), (a.xs, b.xs), (a.sy, b.sy), (a.sx, b.sx)):
            assert x.dtype == y.dtype and np.array_equal(x, y)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), c=st.sampled_from([1, 3]),
       block=st.sampled_from([8, 16]), seed=st.integers(0, 2 ** 16))
def test_image_warp_and_paste_equal_numpy(h, w, c, block, seed):
    """uint8 images go through the C kernels; the numpy reference gives the same."""
    rng = np.random.default_rng(seed)
    shape = (h, w, c) if c > 1 else (h, w)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    grid = BlockGrid(h, w, block)
    reach = int(rng.choice([20, 100]))  # 100: sources wholly outside small frames
    mvx = rng.integers(-reach, reach + 1, grid.count)
    mvy = rng.integers(-reach, reach + 1, grid.count)
    mvx[rng.random(grid.count) < 0.3] = 0
    still = rng.random(grid.count) < 0.4  # runs of blocks without motion (copied per row)
    mvx[still], mvy[still] = 0, 0
    assert np.array_equal(blocks.warp_image_int(img, grid, mvx, mvy),
                          blocks._warp_image_int_numpy(img, grid, mvx, mvy))
    new = rng.integers(0, 256, shape, dtype=np.uint8)
    idx = np.flatnonzero(rng.random(grid.count) < 0.4)
    ref = img.copy()
    full = grid.expand(np.isin(np.arange(grid.count), idx))
    ref[full] = new[full]
    got = img.copy()
    blocks.paste_blocks(new, got, grid, idx)
    assert np.array_equal(got, ref)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), s=st.integers(1, 33),
       dh=st.integers(-3, 3), dw=st.integers(-3, 3), frac=st.floats(0.0, 0.5),
       seed=st.integers(0, 2 ** 16))
def test_pool_any_in_c_equals_numpy(h, w, s, dh, dw, frac, seed):
    """The mask pooling (any pixel per s x s cell) in C equals numpy's, on output grids
    smaller or larger than ceil(h / s) x ceil(w / s)."""
    from fluxshard_kernels.plan import pool_any
    m = np.random.default_rng(seed).random((h, w)) < frac
    hh, ww = max(1, -(-h // s) + dh), max(1, -(-w // s) + dw)
    got = pool_any(m, s, hh, ww)
    with torch_path():
        ref = pool_any(m, s, hh, ww)
    assert got.dtype == ref.dtype == bool and np.array_equal(got, ref)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(8, 64), w=st.integers(8, 64),
       stride=st.sampled_from([1, 2, 4, 8, 16, 32]),
       halo=st.sampled_from([0, 4, 8]), frac=st.floats(0.0, 0.3), seed=st.integers(0, 2 ** 16))
def test_plan_masks_equal_the_torch_pooling(h, w, stride, halo, frac, seed):
    """The plan's changed pixels at a stride: the input mask max-pooled to the stride (ceil),
    fitted to the layer, grown by the halo; its block masks: any pixel per block."""
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) < frac
    plan = FramePlan(m, halo, 'cpu')
    oh, ow = -(-h // stride), -(-w // stride)
    px = plan.pixels(stride, (oh, ow))
    t = torch.from_numpy(m)[None, None].float()
    if stride > 1:
        t = F.max_pool2d(t, stride, stride, ceil_mode=True)
    r = int(round(halo / stride))
    if r:
        t = F.max_pool2d(t, 2 * r + 1, 1, r)
    assert torch.equal(px, t[0, 0] > 0)
    b = 4
    rows, cols = -(-oh // b), -(-ow // b)
    ab = plan.blocks(px, b, rows, cols)
    ref = F.max_pool2d(F.pad(px[None, None].float(), (0, cols * b - ow, 0, rows * b - oh)),
                       b, b)[0, 0] > 0
    assert torch.equal(ab.mask, ref)
    assert ab.count == int(ref.sum()) and list(zip(ab.rows, ab.cols)) == [
        tuple(x) for x in torch.nonzero(ref).tolist()]


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 1300), w=st.integers(1, 1300), block=st.sampled_from([8, 16, 32]),
       net_block=st.sampled_from([16, 32]), frac=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
       seed=st.integers(0, 2 ** 16))
def test_camera_misses_map_to_the_network_input_as_on_full_images(h, w, block, net_block,
                                                                  frac, seed):
    """The network's changed pixels from the camera's miss blocks, found on the block grid
    (``CameraToNet.miss_mask``), equal the full-image way: blocks expanded to pixels,
    letterboxed with a nearest resize, dilated by one pixel."""
    from fluxshard_kernels.plan import CameraToNet
    from fluxshard_kernels.yolo.processing import letterbox_geometry
    rng = np.random.default_rng(seed)
    lb = letterbox_geometry(h, w, 640, square=False)
    cam = BlockGrid(h, w, block)
    m = CameraToNet(cam, lb, BlockGrid(lb.in_h, lb.in_w, net_block))
    miss = rng.choice(cam.count, int(round(frac * cam.count)), replace=False)
    got, ref = m.miss_mask(miss), m.miss_mask_reference(miss)
    assert got.shape == (lb.in_h, lb.in_w) and got.flags.c_contiguous
    assert np.array_equal(got, ref)


def test_engine_step_equals_the_torch_path():
    """A whole incremental step on real frames (real motion, misses) gives the same raw
    outputs with the compiled kernels and with the torch reference path."""
    from fluxshard_kernels import data, motion
    from fluxshard_kernels.incremental import IncrementalYOLO
    from fluxshard_kernels.yolo import model as M
    det_model = M.load_onnx(str(data.model_path('detect')))
    frames = list(data.iter_frames('davis-parkour', limit=3))
    outs = []
    for ref in (False, True):
        r = IncrementalYOLO(det_model, 16)
        r.dense(frames[0])
        r.ex.costs = None  # the same fixed per-layer choice on both paths (not their timings)
        for f in frames[1:]:
            fld = motion.estimate_motion(f, r.state, 16)
            miss = np.flatnonzero(fld.dissimilarity.reshape(-1) >= 10)
            if ref:
                with torch_path():
                    raw, _, st_ = r.step(f, fld.mv, miss, 16)
            else:
                raw, _, st_ = r.step(f, fld.mv, miss, 16)
        assert any(x.mode == 'sparse' for x in st_.layers)
        outs.append(raw)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-3)


def test_fused_calls_split_over_threads_inside_c_give_the_same_results(monkeypatch):
    """The fused conv, the depthwise conv and the skip-aware warp split big calls over
    OpenMP threads inside the C call: the same results as one thread (the warp and the
    depthwise conv bit for bit; the conv within float rounding, the BLAS may block rows
    differently)."""
    if not compiled.fused():
        pytest.skip('torch has no BLAS to hand to the kernels here')
    threads = torch.get_num_threads()
    try:
        src, g, rows, cols = _maps(8, 40, 48, 4, 11, extra=3)
        mask = torch.rand(rows, cols, generator=g) < 0.6
        ops = [S.conv_op(torch.randn(6, 8, 3, 3, generator=g), torch.randn(6, generator=g), 1),
               S.conv_op(torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, generator=g), 1,
                         groups=8)]
        rng = np.random.default_rng(5)
        grid = BlockGrid(40, 48, 16)
        mv = (rng.integers(-5, 6, (grid.rows, grid.cols, 2)) + 0.5).astype(np.float32)
        plan = FramePlan(np.zeros((40, 48), bool), 8, 'cpu')
        wp = plan.warp(mv, grid, 1, 40, 48, None, 4)
        skip = np.asarray(mask.numpy())
        outs = []
        for split in (False, True):
            torch.set_num_threads(2 if split else 1)
            monkeypatch.setattr(compiled, 'SPLIT_BYTES', 0 if split else 1 << 40)
            got = []
            for op in ops:
                dst = S.FMap.from_dense(torch.zeros(1, op['weight'].shape[0], 40, 48), 4,
                                        rows, cols)
                S.sparse_windowed(src, dst, mask, op)
                got.append(dst.t.clone())
            wmap = S.FMap.from_dense(src.valid.clone(), 4, rows, cols)
            compiled.warp_skip(wmap.cd(), S.MARGIN, 40, 48, wp, skip, 4)
            got.append(wmap.t)
            outs.append(got)
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
        assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][2], outs[1][2])
        assert not torch.equal(outs[1][2], S.FMap.from_dense(src.valid.clone(), 4, rows,
                                                             cols).t)  # the warp moved
    finally:
        torch.set_num_threads(threads)


def test_big_calls_split_over_two_threads_give_the_same_results(monkeypatch):
    """Calls above SPLIT_BYTES run in two halves on two threads (im2col, gather, scatter) or
    over two OpenMP threads inside the C call (the warp): exactly what one call gives (the
    same calls: the layer fused into one call, whose SiLU differs from torch's in the last
    bits, is tested below)."""
    monkeypatch.setattr(compiled, '_BLAS', [False])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        src, g, rows, cols = _maps(8, 40, 48, 4, 7, extra=3)
        mask = torch.rand(rows, cols, generator=g) < 0.6
        ops = [S.conv_op(torch.randn(6, 8, 3, 3, generator=g), torch.randn(6, generator=g), 1),
               {'kind': 'maxpool', 'kernel': 5, 'stride': 1, 'padding': 2}]
        rng = np.random.default_rng(3)
        grid = BlockGrid(40, 48, 16)
        mv = (rng.integers(-5, 6, (grid.rows, grid.cols, 2)) + 0.5).astype(np.float32)
        plan = FramePlan(np.zeros((40, 48), bool), 8, 'cpu').warp(mv, grid, 1, 40, 48, None, 4)
        outs = []
        for split in (False, True):
            monkeypatch.setattr(compiled, 'SPLIT_BYTES', 0 if split else 1 << 40)
            got = []
            for op in ops:
                c_out = 6 if op['kind'] == 'conv' else 8
                dst = S.FMap.from_dense(torch.zeros(1, c_out, 40, 48), 4, rows, cols)
                S.sparse_windowed(src, dst, mask, op)
                got.append(dst.t.clone())
            w = S.FMap.from_dense(src.valid.clone(), 4, rows, cols)
            compiled.warp(w.t, S.MARGIN, 40, 48, plan.ys, plan.xs, plan.sy, plan.sx)
            got.append(w.t)
            outs.append(got)
        for a, b in zip(*outs):
            assert torch.equal(a, b)
        assert not torch.equal(outs[1][2], S.FMap.from_dense(src.valid.clone(), 4, rows,
                                                             cols).t)  # the warp moved
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('seq', ['pets09-s2l1', 'davis-parkour'])
def test_queued_kernel_calls_give_the_results_of_calls_run_at_once(seq, monkeypatch):
    """On two threads a sparse step queues its small kernel calls to the engine's worker
    thread and splits its big ones between the worker and itself (``compiled.stream``): on
    real frames (a static and a moving camera) every step's raw outputs and every cache equal,
    bit for bit, those of the same engine with every call run at once. Every layer runs
    sparse, through the kernels (a layer run dense is a torch op, on one thread inside the
    stream: its float rounding may differ from two threads')."""
    if not compiled.fused():
        pytest.skip('torch has no BLAS to hand to the kernels here')
    from fluxshard_kernels import data, motion
    from fluxshard_kernels.incremental import IncrementalYOLO
    from fluxshard_kernels.yolo import model as M
    det_model = M.load_onnx(str(data.model_path('detect')))
    frames = list(data.iter_frames(seq, limit=5))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = {}
        for queue in (False, True):
            monkeypatch.setattr(compiled, 'QUEUE', queue)
            r = IncrementalYOLO(det_model, 16)
            r.dense(frames[0])
            r.ex.costs, r.ex.force = None, 'sparse'
            runs0 = compiled._fx().queue_stats()[1]
            raws = []
            for f in frames[1:]:
                fld = motion.estimate_motion(f, r.state, 16)
                miss = np.flatnonzero(fld.dissimilarity.reshape(-1) >= 10)
                raws.append(r.step(f, fld.mv, miss, 16)[0].clone())
                assert compiled._fx().queue_stats()[0] == 0  # a step ends with the queue empty
            got[queue] = (raws, {k: c.t.clone() for k, c in r.ex.caches.items()},
                          compiled._fx().queue_stats()[1] - runs0)
        assert got[False][2] == 0 and got[True][2] > 100  # the worker ran the calls
        for a, b in zip(got[False][0], got[True][0]):
            assert torch.equal(a, b)
        assert got[False][1].keys() == got[True][1].keys()
        for k in got[False][1]:
            assert torch.equal(got[False][1][k], got[True][1][k]), k
    finally:
        torch.set_num_threads(threads)


def test_a_stream_left_by_an_exception_has_run_its_queued_calls():
    """An error inside ``compiled.stream`` (a layer that raises) still waits for the calls
    queued before it: their writes are there, nothing stays queued."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = torch.randn(1, 8, 20, 24), torch.randn(1, 8, 20, 24)
        ma, mb, out = (S.FMap.from_dense(x, 4, 5, 6) for x in (a, b, torch.zeros_like(a)))
        rows, cols = np.repeat(np.arange(5), 6), np.tile(np.arange(6), 5)
        with pytest.raises(ValueError, match='a layer failed'):
            with compiled.stream():
                compiled.add_blocks(ma.t, mb.t, out.t, S.MARGIN, 20, 24, rows, cols, 4)
                if compiled.QUEUE and compiled.available():
                    assert compiled._Q.keep  # queued, not run yet
                raise ValueError('a layer failed')
        assert compiled._fx().queue_stats()[0] == 0 and not compiled._Q.keep
        torch.testing.assert_close(out.valid, a + b, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('columns', [False, True])
def test_head_decode_kernel_equals_the_torch_decode(columns):
    """The compiled head decode (DFL boxes, class sigmoids) of raw outputs as rows or
    columns equals ``Detect.decode_columns_torch`` within float rounding, on outputs from
    strongly peaked to flat distributions; a subset of the anchors decodes to exactly the
    values the whole decode gives them."""
    from fluxshard_kernels.yolo import model as M
    head = M.load('detect', '', 'cpu').model[23]
    g = torch.Generator().manual_seed(3)
    shapes = ((12, 16), (6, 8), (3, 4))
    n = sum(h * w for h, w in shapes)
    rows = torch.randn(n, head.no, generator=g) * torch.tensor([0.1, 1.0, 8.0]).repeat(
        n // 3 + 1)[:n, None]  # flat, typical and peaked distributions and scores
    anchors, strides = M.make_anchors(shapes, head.strides, rows.device, rows.dtype)
    ref = head.decode_columns_torch(rows.t()[None], anchors, strides)
    geom = (anchors[0].contiguous(), anchors[1].contiguous(), strides[0].contiguous())
    src = rows.t().contiguous() if columns else rows
    out = torch.full_like(ref, float('nan'))
    compiled.decode_rows(src, None, geom, head.dfl_weights(), head.nc, out, columns=columns)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    idx = np.array([0, 5, 191, n - 1])
    part = torch.full_like(ref, float('nan'))
    compiled.decode_rows(src, idx, geom, head.dfl_weights(), head.nc, part, columns=columns)
    assert torch.equal(part[:, :, idx], out[:, :, idx])
    assert torch.isnan(part[:, :, 1]).all()  # the others untouched
