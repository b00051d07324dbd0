"""Sparse engine: sparse == dense where every changed block is active (zero MVs), for each layer
type and both layouts, over random masks; empty and full masks; errors."""

from hypothesis import given, settings, strategies as st
import pytest
import torch

from fluxshard_kernels import sparse as S

B_IN = 8


def _pair(c, h, w, b, frac, seed):
    g = torch.Generator().manual_seed(seed)
    rows, cols = -(-h // b), -(-w // b)
    x0 = torch.randn(1, c, h, w, generator=g)
    mask = torch.rand(rows, cols, generator=g) < frac
    m = mask.repeat_interleave(b, 0).repeat_interleave(b, 1)[:h, :w]
    x1 = x0.clone()
    x1[0][:, m] += torch.randn(c, int(m.sum()), generator=g)
    return x0, x1, mask, rows, cols


def _check(op, layout, h, w, frac, seed, c_in=6):
    x0, x1, mask, rows, cols = _pair(c_in, h, w, B_IN, frac, seed)
    s = op['stride']
    src0 = S.FMap.from_dense(x0, B_IN, rows, cols)
    src1 = S.FMap.from_dense(x1, B_IN, rows, cols)
    d0, d1 = S.dense_windowed(src0, op), S.dense_windowed(src1, op)
    out = S.FMap.from_dense(d0, B_IN // s, rows, cols)
    k = op['weight'].shape[-1] if op['kind'] == 'conv' else op['kernel']
    active = S.dilate(mask, S.halo_blocks(k, op['padding'], B_IN))
    S.sparse_windowed(src1, out, active, op, layout)
    assert out.valid.shape == d1.shape
    torch.testing.assert_close(out.valid, d1, rtol=1e-5, atol=1e-5)
    # padding beyond the valid region stays zero
    pad = out.interior.clone()
    pad[:, :, :out.h, :out.w] = 0
    assert float(pad.abs().max()) == 0.0


def _conv(k, s, c_in=6, c_out=5, act='silu', seed=0):
    g = torch.Generator().manual_seed(seed)
    return S.conv_op(torch.randn(c_out, c_in, k, k, generator=g) * 0.2,
                     torch.randn(c_out, generator=g), s, act=act)


@pytest.mark.parametrize('layout', S.LAYOUTS)
@pytest.mark.parametrize('k, s', [(1, 1), (3, 1), (3, 2), (1, 2)])
@pytest.mark.parametrize('h, w', [(64, 96), (61, 90)])  # whole and partial blocks
def test_conv_sparse_equals_dense(layout, k, s, h, w):
    _check(_conv(k, s), layout, h, w, 0.2, seed=k * 10 + s)


@pytest.mark.parametrize('layout', S.LAYOUTS)
def test_maxpool_sparse_equals_dense(layout):
    _check({'kind': 'maxpool', 'kernel': 5, 'stride': 1, 'padding': 2}, layout, 56, 72, 0.2, 3)


@pytest.mark.parametrize('layout', S.LAYOUTS)
@pytest.mark.parametrize('frac', [0.0, 1.0])
def test_empty_and_full_masks(layout, frac):
    _check(_conv(3, 1), layout, 40, 48, frac, seed=5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), frac=st.floats(0.0, 1.0), layout=st.sampled_from(S.LAYOUTS),
       ks=st.sampled_from([(1, 1), (3, 1), (3, 2)]), h=st.integers(9, 70), w=st.integers(9, 70))
def test_property_random_masks_and_sizes(seed, frac, layout, ks, h, w):
    _check(_conv(*ks, seed=seed), layout, h, w, frac, seed)


def test_pointwise_add_concat_and_upsample():
    x0, x1, mask, rows, cols = _pair(4, 48, 64, B_IN, 0.3, 7)
    y0, y1 = x0 * 0.5 + 1, x1 * 0.5 + 1  # a second branch changing in the same blocks
    a1 = S.FMap.from_dense(x1, B_IN, rows, cols)
    b1 = S.FMap.from_dense(y1, B_IN, rows, cols)
    add = S.FMap.from_dense(x0 + y0, B_IN, rows, cols)
    S.sparse_pointwise(torch.add, [a1, b1], add, mask)
    torch.testing.assert_close(add.valid, x1 + y1)
    cat = S.FMap.from_dense(torch.cat([x0, y0], 1), B_IN, rows, cols)
    S.sparse_pointwise(lambda a, b: torch.cat([a, b], 1), [a1, b1], cat, mask)
    torch.testing.assert_close(cat.valid, torch.cat([x1, y1], 1))
    up = S.FMap.from_dense(torch.nn.functional.interpolate(x0, scale_factor=2), 2 * B_IN,
                           rows, cols)
    S.sparse_upsample2x(a1, up, mask)
    torch.testing.assert_close(up.valid, torch.nn.functional.interpolate(x1, scale_factor=2))


def test_errors():
    x = torch.randn(1, 2, 16, 16)
    src = S.FMap.from_dense(x, 8, 2, 2)
    dst = S.FMap.from_dense(x, 8, 2, 2)
    with pytest.raises(ValueError, match='layout'):
        S.sparse_windowed(src, dst, torch.ones(2, 2, dtype=torch.bool), _conv(3, 1, 2, 2), 'x')
    big = S.FMap.from_dense(torch.randn(1, 2, 64, 64), 8, 8, 8)
    with pytest.raises(ValueError, match='too small'):
        S.sparse_windowed(src, big, torch.ones(8, 8, dtype=torch.bool), _conv(3, 2, 2, 2))
    with pytest.raises(ValueError, match='margin'):
        S.sparse_windowed(src, dst, torch.ones(2, 2, dtype=torch.bool),
                          S.conv_op(torch.randn(2, 2, 7, 7), None, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device here')
@pytest.mark.parametrize('layout', S.LAYOUTS)
def test_cuda_path_matches_cpu(layout):
    op = _conv(3, 1)
    x0, x1, mask, rows, cols = _pair(6, 64, 96, B_IN, 0.25, 11)
    outs = []
    for dev in ('cpu', 'cuda'):
        opd = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in op.items()}
        src1 = S.FMap.from_dense(x1.to(dev), B_IN, rows, cols)
        out = S.FMap.from_dense(S.dense_windowed(S.FMap.from_dense(x0.to(dev), B_IN, rows,
                                                                   cols), opd),
                                B_IN, rows, cols)
        S.sparse_windowed(src1, out, S.dilate(mask.to(dev), 1), opd, layout)
        outs.append(out.valid.cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kernels', [True, False])
def test_upsample_between_equal_block_sizes(kernels):
    """Deep strides: a block is one feature pixel (or the same size) on both sides of a 2x
    upsample; the changed output blocks are exact, the rest keep the cache."""
    from fluxshard_kernels import native
    old = native.use_kernels(kernels)
    try:
        for b in (1, 2):
            g = torch.Generator().manual_seed(b)
            x0 = torch.rand(1, 8, 7, 10, generator=g)
            x1 = x0.clone()
            x1[..., 2:4, 5:7] += 1  # the input changed in a few pixels
            rows, cols = -(-7 // b), -(-10 // b)
            src = S.FMap.from_dense(x1, b, rows, cols)
            up = torch.nn.functional.interpolate
            dst = S.FMap.from_dense(up(x0, scale_factor=2), b, -(-14 // b), -(-20 // b))
            mask = torch.zeros(dst.rows, dst.cols, dtype=torch.bool)
            mask[4 // b:8 // b, 10 // b:14 // b] = True  # the changed output pixels' blocks
            S.sparse_upsample2x(src, dst, mask)
            torch.testing.assert_close(dst.valid, up(x1, scale_factor=2))
    finally:
        native.use_kernels(old)
