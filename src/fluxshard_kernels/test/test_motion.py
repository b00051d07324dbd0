"""Block motion: C kernel == Python reference, recovered shifts, D and hit/miss, any frame size,
quality against DIS optical flow averaged per block on real sequences."""

import cv2
from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from fluxshard_kernels import blocks, data, motion


@pytest.fixture(scope='module')
def parkour():
    return [cv2.resize(f, (427, 240)) for f in data.iter_frames('davis-parkour', limit=4)]


def test_c_kernel_is_built():
    assert motion._lib() is not None, 'fluxshard_kernels._motion was not compiled'


@pytest.mark.parametrize('bs', [8, 16, 32])
def test_c_kernel_equals_python_reference(parkour, bs):
    cur, ref = parkour[1][:90, :130], parkour[0][:90, :130]  # partial blocks on both axes
    a = motion.estimate_motion(cur, ref, bs, use_c=True)
    b = motion.estimate_motion(cur, ref, bs, use_c=False)
    assert np.array_equal(a.mv, b.mv)
    assert np.array_equal(a.dissimilarity, b.dissimilarity)
    prev = a.mv
    a2 = motion.estimate_motion(parkour[2][:90, :130], cur, bs, prev, use_c=True)
    b2 = motion.estimate_motion(parkour[2][:90, :130], cur, bs, prev, use_c=False)
    assert np.array_equal(a2.mv, b2.mv)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80), bsz=st.sampled_from([4, 8, 12, 16, 32]),
       limit=st.integers(0, 20), seed=st.integers(0, 2 ** 16))
def test_block_search_kernel_equals_the_reference_on_any_block_width(h, w, bsz, limit, seed):
    """The C search finds the same MVs and SADs as the Python reference for any block and
    frame size (partial blocks of every width), from random predictors."""
    rng = np.random.default_rng(seed)
    cur = rng.integers(0, 256, (h, w), dtype=np.uint8)
    ref = np.clip(np.roll(cur, (1, -2), (0, 1)).astype(int) + rng.integers(-9, 10, (h, w)),
                  0, 255).astype(np.uint8)
    pad = limit + bsz + 2
    ref_pad = cv2.copyMakeBorder(ref, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    rows, cols = -(-h // bsz), -(-w // bsz)
    preds = rng.integers(-limit - 3, limit + 4, (rows * cols, 3, 2)).astype(np.int32)
    a = motion._search(cur, ref_pad, pad, bsz, rows, cols, preds, limit, use_c=True)
    b = motion._search_reference(cur, ref_pad, pad, bsz, rows, cols, preds, limit)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize('dx, dy', [(0, 0), (5, -3), (-17, 9), (30, 0)])
def test_global_shift_is_recovered_with_zero_dissimilarity(parkour, dx, dy):
    ref = motion.to_gray(parkour[0])
    h, w = ref.shape
    # cur[y, x] = ref[y + dy, x + dx]  (source = destination + mv)
    cur = np.ascontiguousarray(ref[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)])
    ref_c = np.ascontiguousarray(ref[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)])
    f = motion.estimate_motion(cur, ref_c, 16)
    inner = f.mv[1:-1, 1:-1].reshape(-1, 2)
    frac = np.mean(np.all(inner == (dx, dy), axis=1))
    assert frac > 0.9, frac
    assert np.median(f.dissimilarity[1:-1, 1:-1]) == 0


def test_hits_misses_and_sorting(parkour):
    f = motion.estimate_motion(parkour[1], parkour[0], 16)
    miss = f.misses(8.0)
    d = f.dissimilarity.reshape(-1)
    assert np.all(d[miss] >= 8.0) and np.all(np.diff(d[miss]) <= 0)
    assert f.hits(8.0).sum() + miss.size == f.grid.count


def test_rejects_bad_arguments(parkour):
    with pytest.raises(ValueError, match='differ in size'):
        motion.estimate_motion(parkour[0], parkour[1][:100], 16)
    with pytest.raises(ValueError, match='block_size'):
        motion.estimate_motion(parkour[0], parkour[1], 12)


def _warp_err(prev, cur, grid, mvx, mvy):
    w = blocks.warp_image_int(prev, grid, mvx, mvy)
    return float(np.abs(w.astype(np.int16) - cur.astype(np.int16)).mean())


@pytest.mark.parametrize('seq', ['davis-parkour', 'davis-bmx-trees', 'pets09-s2l1'])
def test_block_matching_warps_better_than_block_averaged_dis(seq):
    frames = [cv2.resize(f, (640, 480)) for f in data.iter_frames(seq, limit=4)]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    ours, theirs, prev_mv = [], [], None
    for a, b in zip(frames, frames[1:]):
        f = motion.estimate_motion(b, a, 16, prev_mv)
        prev_mv = f.mv
        ours.append(_warp_err(a, b, f.grid, f.mv_x, f.mv_y))
        flow = dis.calc(motion.to_gray(b), motion.to_gray(a), None)
        fb = cv2.resize(flow, (f.grid.cols, f.grid.rows), interpolation=cv2.INTER_AREA)
        theirs.append(_warp_err(a, b, f.grid, np.rint(fb[..., 0]).reshape(-1),
                                np.rint(fb[..., 1]).reshape(-1)))
    assert np.mean(ours) <= np.mean(theirs), (ours, theirs)


def test_independent_motion_flags_movers_against_the_background():
    from fluxshard_kernels.blocks import BlockGrid
    grid = BlockGrid(96, 160, 16)
    mv = np.zeros((grid.rows, grid.cols, 2), np.int32)
    mv[..., 0] = 7                      # camera pan: everything moves alike
    mv[2, 4] = (-3, 5)                  # one object moves on its own
    f = motion.MotionField(grid, mv, np.zeros((grid.rows, grid.cols), np.float32))
    ind = f.independent(4)
    assert ind[2, 4] and ind.sum() == 1
    assert set(f.misses(10.0, independent_px=4)) == {2 * grid.cols + 4}
    assert f.misses(10.0).size == 0


def test_mixed_motion_marks_the_edges_of_a_mover_in_a_still_scene_only():
    from fluxshard_kernels.blocks import BlockGrid
    grid = BlockGrid(160, 256, 16)  # 10 x 16 blocks
    mv = np.zeros((grid.rows, grid.cols, 2), np.int32)
    mv[3:6, 5:9] = (6, 0)  # a car crossing a still scene
    f = motion.MotionField(grid, mv, np.zeros((grid.rows, grid.cols), np.float32))
    mixed = f.mixed(4)
    want = np.zeros_like(mixed)
    want[2:7, 4:10] = True  # both sides of its edge: its own blocks, the still ones around
    want[4, 6:8] = False    # the car's inside moves as one: warping it is right
    assert (mixed == want).all()
    assert not f.mixed(7).any()  # an edge below px is not one
    miss = f.misses(10.0, mixed_px=4)
    assert set(miss) == set(np.flatnonzero(want))
    assert f.extra_misses() is None and f.misses(10.0).size == 0
    # a robot's camera shaking by a pixel: the background still moves as one
    rng = np.random.default_rng(0)
    shaky = mv + rng.integers(-1, 2, mv.shape).astype(np.int32)
    shaky[3:6, 5:9] = (6, 0)
    assert (motion.MotionField(grid, shaky, f.dissimilarity).mixed(4) == want).all()
    # the same car seen from a panning camera: no still background, D decides alone
    pan = motion.MotionField(grid, mv + np.array([3, 1], np.int32), f.dissimilarity)
    assert pan.still_share() == 0.0 and not pan.mixed(4).any()


@pytest.mark.parametrize('seq,opens', [('sam2-bedroom', True), ('davis-parkour', False),
                                       ('davis-bmx-trees', False)])
def test_the_motion_edge_gate_opens_on_a_noisy_still_camera_and_not_on_a_moving_one(seq, opens):
    """Real consecutive frames: sam2-bedroom's still camera leaves under half of its blocks at
    exactly zero motion (noise moves the rest by a pixel), yet its background moves as one,
    so its motion edges are marked; the moving cameras of davis-parkour and davis-bmx-trees
    (a pan with parallax) mark none."""
    frames = list(data.iter_frames(seq, limit=4))
    prev = None
    for ref, cur in zip(frames, frames[1:]):
        f = motion.estimate_motion(cur, ref, 16, prev)
        prev = f.mv
        exact = float(np.mean(np.abs(f.mv).max(axis=2) == 0))
        if opens:
            assert exact < motion.STILL_SHARE <= f.still_share(), (exact, f.still_share())
            assert f.mixed(motion.MIXED_PX).mean() > 0.05
        else:
            assert f.still_share() < motion.STILL_SHARE
            assert not f.mixed(motion.MIXED_PX).any()


def test_zero_bias_keeps_static_blocks_still_and_movers_moving():
    """Two consecutive frames of a static camera: the plain best match finds shifts on many
    blocks of the still background (codec noise, flicker); with the zero bias most stay at
    zero motion. A patch that really moved keeps its vector."""
    import numpy as np
    from fluxshard_kernels import data, motion
    ref, cur = list(data.iter_frames('pets09-s2l1', 2))
    cur = cur.copy()
    cur[160:224, 320:384] = ref[160:224, 315:379]  # a 64x64 patch moved 5 px right
    plain = motion.estimate_motion(cur, ref, 16, zero_bias=0.0)
    biased = motion.estimate_motion(cur, ref, 16, zero_bias=1.0)
    n_plain = int(np.any(plain.mv != 0, axis=2).sum())
    n_biased = int(np.any(biased.mv != 0, axis=2).sum())
    assert n_biased < 0.5 * n_plain, (n_plain, n_biased)
    inner = biased.mv[11:13, 21:23].reshape(-1, 2)  # blocks inside the moved patch
    assert (inner == [-5, 0]).all(), inner
    # a changed block's D is never raised by more than the bias
    assert np.all(biased.dissimilarity <= plain.dissimilarity + 1.0 + 1e-4)
    assert motion.ZERO_BIAS == 1.0  # on by default
    assert motion.estimate_motion(cur, ref, 16).mv.tolist() == biased.mv.tolist()


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), bs=st.sampled_from([8, 16, 32]),
       seed=st.integers(0, 2 ** 16))
def test_block_sums_equal_the_padded_block_view(h, w, bs, seed):
    """The zero-motion SAD's block sums (rows first, integers) equal the sums over the
    frame padded to whole blocks by edge replication, and the block areas count the pixels
    inside the frame."""
    from fluxshard_kernels.motion import _block_area, _block_sums
    d = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    grid = blocks.BlockGrid(h, w, bs)
    ref = grid.block_view(grid.pad(d.astype(np.float32))).sum(axis=(1, 3)).reshape(-1)
    got = _block_sums(d, grid)
    assert got.dtype == np.float32 and np.array_equal(got, ref)
    area = _block_area(h, w, bs)
    assert area.sum() == h * w and area.max() <= bs * bs
