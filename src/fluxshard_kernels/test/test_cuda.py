"""The cupy kernels (gather, scatter, MV warp) against their torch references, and the
engine on CUDA against the engine on the CPU. The references are checked against the engine's
CPU paths here; everything that needs a GPU skips cleanly without one (``scripts/gpu-check.sh``
runs it where there is one)."""

import numpy as np
import pytest
import torch

from fluxshard_kernels import cuda, data, incremental as inc, motion, sparse as S
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.warp import flow_at_stride, sampling_grid

GPU = pytest.mark.skipif(not cuda.available(), reason='no CUDA device (or cupy) here')


def _storage(c=5, rows=4, cols=6, b=4, seed=0, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, rows * b - 1, cols * b - 2, generator=g)
    return S.FMap.from_dense(x.to(device), b, rows, cols)


def _blocks(rows, cols, frac=0.4, seed=1, device='cpu'):
    rng = np.random.default_rng(seed)
    m = torch.from_numpy(rng.random((rows, cols)) < frac).to(device)
    return torch.nonzero(m, as_tuple=True)


def _flow(h, w, seed=2, device='cpu'):
    """A sub-pixel block MV field at stride 4 (some samples beyond the border)."""
    g = BlockGrid(h * 4, w * 4, 16)
    rng = np.random.default_rng(seed)
    mv = rng.integers(-6, 7, (g.rows, g.cols, 2)) + rng.random((g.rows, g.cols, 2))
    return flow_at_stride(mv.astype(np.float32), g, 4, h, w, device)


def test_torch_references_are_the_engine_paths():
    """Each kernel's torch reference gives what the engine's CPU code computes."""
    fm = _storage()
    r, c = _blocks(fm.rows, fm.cols)
    win, p_len = S._windows(fm, 3, 1, 1, fm.b, fm.rows, fm.cols)
    ref = win.permute(1, 2, 3, 4, 0)[r, c].permute(0, 3, 1, 2)
    got = cuda.gather_windows(fm.t, r, c, S.MARGIN - 1, fm.b, p_len, cuda=False)
    assert torch.equal(got, ref)
    y = torch.randn(len(r), fm.channels, fm.b, fm.b)
    a, b = _storage(), _storage()
    a.scatter(r, c, y)
    a.clear_padding()  # the torch path writes whole blocks, the compiled one the valid part
    cuda.scatter_blocks(b.t, r, c, y, S.MARGIN, b.b, cuda=False)
    b.clear_padding()
    assert torch.equal(a.t, b.t)
    flow = _flow(fm.h, fm.w)
    ref = torch.nn.functional.grid_sample(fm.valid, sampling_grid(flow), mode='bilinear',
                                          padding_mode='border', align_corners=True)
    got = cuda.warp_bilinear(fm.t, flow, S.MARGIN, fm.h, fm.w, cuda=False)
    torch.testing.assert_close(got, ref)
    assert not torch.equal(got, fm.valid)  # it moved


@GPU
def test_cupy_kernels_equal_the_torch_references():
    """On whole channels-last storages and on channel slices of them (the C2f split hands the
    next layer a non-contiguous view), with the engine's window geometry at strides 1 and 2
    (a stride-s layer reads windows of its output block b / s, s apart, one input block
    step)."""
    fm = _storage(c=24, rows=9, cols=13, b=8, device='cuda')
    r, c = _blocks(fm.rows, fm.cols, device='cuda')
    for t in (fm.t, fm.t[:, 5:17]):
        for k, s, pad in ((3, 1, 1), (3, 2, 1), (1, 1, 0), (5, 1, 2)):
            b_out = fm.b // s
            p_len = (b_out - 1) * s + k
            args = (t, r, c, S.MARGIN - pad, b_out * s, p_len)
            torch.testing.assert_close(cuda.gather_windows(*args, cuda=True),
                                       cuda.gather_windows(*args, cuda=False), rtol=0, atol=0)
    for sl in (slice(None), slice(5, 17)):
        a, b = _storage(24, 9, 13, 8, device='cuda'), _storage(24, 9, 13, 8, device='cuda')
        ta, tb = a.t[:, sl], b.t[:, sl]
        y = torch.randn(len(r), ta.shape[1], fm.b, fm.b, device='cuda')
        cuda.scatter_blocks(ta, r, c, y, S.MARGIN, 8, cuda=True)
        cuda.scatter_blocks(tb, r, c, y, S.MARGIN, 8, cuda=False)
        assert torch.equal(a.t, b.t)
        flow = _flow(fm.h, fm.w, device='cuda')
        torch.testing.assert_close(
            cuda.warp_bilinear(fm.t[:, sl], flow, S.MARGIN, fm.h, fm.w, cuda=True),
            cuda.warp_bilinear(fm.t[:, sl], flow, S.MARGIN, fm.h, fm.w, cuda=False),
            rtol=1e-4, atol=1e-4)  # grid_sample's normalised coordinates round differently
    got = cuda.gather_windows(fm.t, r, c, S.MARGIN - 1, fm.b, fm.b + 2, cuda=True,
                              pad_to=cuda.bucket(len(r)))
    assert got.shape[0] == cuda.bucket(len(r)) >= len(r) and not got[len(r):].any()


@GPU
def test_incremental_engine_on_cuda_equals_cpu():
    """The same frames, MVs and misses: the raw head outputs of the engine on CUDA (cupy
    kernels) and on the CPU (torch) agree, dense pass and incremental steps alike."""
    from fluxshard_kernels.yolo import model as M
    imgs = list(data.iter_frames('davis-parkour', limit=4))
    outs = {}
    # full fp32 on the GPU too: TF32 convolutions (torch's default for cuDNN) differ from the
    # CPU by ~1e-3 per layer, which is the arithmetic, not the engine
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    for dev in ('cpu', 'cuda'):
        runner = inc.IncrementalYOLO(M.load('detect', '', dev), 16)
        raws = [runner.dense(imgs[0])[0]]
        for img in imgs[1:]:
            f = motion.estimate_motion(img, runner.state, 16)
            miss = np.flatnonzero(f.dissimilarity.reshape(-1) >= 10)
            raws.append(runner.step(img, f.mv, miss, 16)[0])
        outs[dev] = [r.cpu() for r in raws]
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    diffs = [float((a - b).abs().max()) for a, b in zip(outs['cpu'], outs['cuda'])]
    for a, b in zip(outs['cpu'], outs['cuda']):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2, msg=f'max |diff| per frame '
                                   f'(dense, then steps): {diffs}')
