"""The server's per-edge incremental model keeps following the edge's motion vectors across a
background refresh (the refresh's caches describe the batch it started on)."""

import numpy as np
import pytest

from fluxshard_kernels import blocks, data, motion
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_server.inference import background_paused, EdgeModel, load_model


def _proxy_stream(n, b=16, sequence='davis-parkour'):
    """Proxy states as the server gets them: each frame's misses over the MV-warped previous
    state, with the batch's MV field and carried blocks."""
    frames = list(data.iter_frames(sequence, n))
    grid = BlockGrid(frames[0].shape[0], frames[0].shape[1], b)
    state, out = frames[0], [(frames[0], None, None)]
    for f in frames[1:]:
        fld = motion.estimate_motion(f, state, b)
        mvx, mvy = fld.mv[..., 0].reshape(-1), fld.mv[..., 1].reshape(-1)
        warped = blocks.warp_image_int(state, grid, mvx, mvy)
        miss = fld.dissimilarity.reshape(-1) >= 10.0
        state = warped.copy()
        for i in np.flatnonzero(miss):
            r, c = divmod(int(i), grid.cols)
            state[r * b:(r + 1) * b, c * b:(c + 1) * b] = f[r * b:(r + 1) * b,
                                                            c * b:(c + 1) * b]
        out.append((state, fld.mv, np.flatnonzero(miss)))
    return out, grid


def test_refresh_then_motion_vectors_still_used():
    stream, grid = _proxy_stream(5)
    em = EdgeModel('incremental', 'detect', load_model('detect'), refresh_interval=2)
    blocks = []
    for seq, (state, mv, changed) in enumerate(stream, 1):
        em(state, seq, mv, seq - 1 if seq > 1 else None, 16, changed)
        blocks.append(em.last_blocks)
        if em.refresh.running:
            em.refresh.wait()  # let the background refresh finish before the next batch
    em.close()
    assert em.refresh.completed >= 1
    assert blocks[0] == grid.count
    # after each refresh the next batch recomputes only what its MVs do not explain
    assert max(blocks[1:]) < 0.6 * grid.count, blocks


def test_pause_background_holds_a_running_refresh_until_resumed():
    import time
    stream, _ = _proxy_stream(2)
    em = EdgeModel('incremental', 'detect', load_model('detect'), refresh_interval=1)
    em(stream[0][0], 1, None, None)
    em(stream[1][0], 2, stream[1][1], 1, 16, stream[1][2])  # starts a refresh (interval 1)
    assert em.refresh.running
    done = em.refresh.completed
    with background_paused([em]):  # another edge's job runs
        time.sleep(0.5)
        assert em.refresh.running and em.refresh.completed == done  # parked at a layer
    em.refresh.wait(30)
    assert em.refresh.completed == done + 1
    em.close()


@pytest.mark.parametrize('block', [8, 32])
def test_the_batch_geometry_is_used_at_every_block_size(block):
    """The server takes block size, MVs and changed blocks from the batch (no 16 px
    assumption): at 8 and 32 px it recomputes exactly the carried blocks."""
    stream, grid = _proxy_stream(3, block)
    em = EdgeModel('incremental', 'detect', load_model('detect'), refresh_interval=1000)
    em(stream[0][0], 1, None, None, block)
    assert em.last_blocks == grid.count
    for seq, (state, mv, changed) in enumerate(stream[1:], 2):
        em(state, seq, mv, seq - 1, block, changed)
        assert em.last_blocks == len(changed) < grid.count
    with pytest.raises(ValueError, match='does not match'):
        em(stream[1][0], 9, stream[1][1][:-1], 8, block, stream[1][2])
    em.close()


def test_path_costs_choose_the_faster_path_and_re_measure_the_other():
    from fluxshard_server.inference import PathCosts
    c = PathCosts(probe_every=5)
    assert c.choose(10) == 'onnxruntime'  # nothing measured: onnxruntime first
    c.observe_dense(0.05)
    assert c.choose(10) == 'incremental'  # then the incremental pass, to measure it
    for k, t in ((10, 0.30), (50, 0.32), (100, 0.35)):
        c.observe_incremental(k, t)
    path = [c.choose(20) for _ in range(12)]
    # probes only: the first after PROBE_FIRST frames, then every probe_every
    assert [i for i, p in enumerate(path) if p == 'incremental'] == [4, 10], path
    c2 = PathCosts(probe_every=5)
    c2.observe_dense(0.05)
    for k, t in ((10, 0.01), (50, 0.02), (100, 0.03)):  # a fast engine (a GPU)
        c2.observe_incremental(k, t)
    assert c2.choose(20) == 'incremental' and c2.choose(2000) == 'onnxruntime'


def test_path_costs_do_not_extrapolate_samples_of_one_size():
    """Three steps of nearly the same size (as a live static camera gives) predict their
    median for any size, not a quadratic's wild extrapolation; a wide spread is fitted."""
    from fluxshard_server.inference import PathCosts
    c = PathCosts()
    for k, t in ((36, 0.119), (27, 0.126), (28, 0.120)):  # measured live, pets09-s2l1
        c.observe_incremental(k, t)
    assert c.predict_incremental(60) == pytest.approx(0.120)
    c.observe_dense(0.150)
    assert c.choose(60) == 'incremental'
    for k, t in ((200, 0.3), (400, 0.5)):
        c.observe_incremental(k, t)
    assert c.predict_incremental(800) > 0.5  # now fitted over 27-400 blocks


def test_auto_backend_serves_every_frame_by_the_cheaper_measured_path():
    """Over real proxy states: each frame's detections come from one of the two paths, both
    are measured, and the path chosen after warm-up is the one measured faster here; the
    onnxruntime frames give exactly onnxruntime's detections of the proxy state."""
    from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
    stream, grid = _proxy_stream(10)
    em = EdgeModel('auto', 'detect', load_model('detect'), refresh_interval=1000)
    em.costs.PROBE_FIRST = em.costs.probe_every  # no re-measure in these 10 frames
    ref = OnnxYolo(str(data.model_path('detect')))
    paths = []
    for seq, (state, mv, changed) in enumerate(stream, 1):
        det = em(state, seq, mv, seq - 1 if seq > 1 else None, 16, changed)
        paths.append(em.last_path)
        if em.last_path == 'onnxruntime':
            want = ref(state)
            assert np.allclose(det.boxes, want.boxes) and np.array_equal(det.class_ids,
                                                                         want.class_ids)
        assert len(det) > 0
    em.close()
    c = em.costs
    assert len(c.dense) >= 1 and len(c.inc) >= 2, paths  # both measured
    faster = ('incremental' if c.predict_incremental(np.median([k for k, _ in c.inc]))
              < np.median(c.dense) else 'onnxruntime')
    assert paths[-1] == faster, (paths, list(c.inc), list(c.dense))
    assert sum(c.chosen.values()) == len(stream)


def test_a_probe_after_onnxruntime_frames_measures_a_real_step():
    """Frames served by onnxruntime leave the caches behind, so the incremental probe first
    resyncs them (a dense pass, no cost sample); the frame after it runs incremental as well
    and gives a step sample - a probe can change the path back. The first step after the
    runner is built (allocations) is not a sample either."""
    stream, grid = _proxy_stream(12)
    em = EdgeModel('auto', 'detect', load_model('detect'), refresh_interval=1000)
    em.costs.probe_every = 3
    # onnxruntime measured much faster than any step: the engine runs only when probed
    em.costs.observe_dense(1e-4)
    paths, samples = [], []
    for seq, (state, mv, changed) in enumerate(stream, 1):
        n = len(em.costs.inc)
        em(state, seq, mv, seq - 1 if seq > 1 else None, 16, changed)
        paths.append(em.last_path)
        samples.append(len(em.costs.inc) - n)
        if em.last_path == 'onnxruntime':  # a dense frame adds no blocks to the named ones
            assert em.last_drifted == em.last_mixed == 0
    em.close()
    # each run of incremental frames that follows onnxruntime frames (a probe) gives a sample
    runs, start = [], None
    for i, p in enumerate(paths + ['onnxruntime']):
        if p == 'incremental' and start is None:
            start = i
        elif p != 'incremental' and start is not None:
            runs.append((start, i))
            start = None
    probes = [(a, b) for a, b in runs if a > 0 and paths[a - 1] == 'onnxruntime' and b < len(
        paths)]
    assert probes, paths
    for a, b in probes:
        assert sum(samples[a:b]) >= 1, (paths, samples)
    assert sum(em.costs.chosen.values()) == len(stream)


@pytest.mark.parametrize('scope', ['objects', 'frame'])
def test_the_drift_test_looks_where_model_drift_scope_says(scope):
    """A proxy that drifted (codec noise the batch does not name) in one block on an object
    and one far from every object: 'frame' recomputes both, 'objects' only the one on the
    object; the other waits for the refresh."""
    stream, grid = _proxy_stream(2)
    em = EdgeModel('incremental', 'detect', load_model('detect'), refresh_interval=1000,
                   drift_scope='objects')
    em(stream[0][0], 1, None, None, 16)
    em.drift_scope = scope  # as the live parameter sets it
    state, mv, changed = stream[1]
    from fluxshard_kernels.salience import object_blocks
    near = object_blocks(em._last_boxes, grid, mv)
    assert 0 < near.sum() < grid.count
    free = np.setdiff1d(np.arange(grid.count), changed)
    inside, outside = free[near[free]][0], free[~near[free]][-1]
    drifted = state.copy()
    for i in (inside, outside):
        r, c = divmod(int(i), grid.cols)
        patch = drifted[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].astype(np.int16)
        drifted[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = np.clip(patch + 12, 0, 255)
    em(drifted, 2, mv, 1, 16, changed)
    assert em.last_drifted == (1 if scope == 'objects' else 2)
    assert em.last_blocks == len(changed) + em.last_drifted
    em.close()


def test_a_profile_seeds_the_choice_until_the_first_real_sample_of_each_path():
    """A device profile measured apart from the nodes says onnxruntime is faster; the nodes'
    first real samples say otherwise, and from then on they alone decide."""
    from types import SimpleNamespace
    from fluxshard_server.inference import PathCosts
    c = PathCosts(probe_every=5)
    c.seed(SimpleNamespace(a=0.0, b=1e-4, c=0.075, dense_s=0.040), 1600)
    assert c.choose(40) == 'onnxruntime'
    c.observe_dense(0.070)  # the real onnxruntime pass, beside the other processes
    assert list(c.dense) == [0.070]
    c.observe_incremental(40, 0.055)  # a probe
    assert list(c.inc) == [(40.0, 0.055)]
    assert c.choose(40) == 'incremental'  # one real sample: measure another
    c.observe_incremental(60, 0.058)
    assert c.choose(50) == 'incremental' and len(c.inc) == 2


def _found(ref, det) -> int:
    """Reference boxes matched by a box of ``det`` at IoU >= 0.5."""
    if not len(ref) or not len(det):
        return 0
    a, b = ref.boxes[:, None], det.boxes[None]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0,
                     None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0,
                       None))
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return int(((inter / (area + area_b - inter)).max(axis=1) >= 0.5).sum())


def test_the_server_recomputes_the_motion_edges_of_a_still_scene():
    """model.mixed_px on a real still-camera clip: cars crossing the road match well in pixels
    (small D, so the edge names few blocks), but the cached features along their motion edges
    mix car and road. The server recomputes those blocks from its own field, the named ones
    stay named, and the detections follow the dense pass's; without the rule the warped
    caches lose some of them."""
    stream, grid = _proxy_stream(12, sequence='bgs-highway')
    model = load_model('detect')
    dense = EdgeModel('dense', 'detect', model)
    refs = [dense(s, i + 1) for i, (s, _, _) in enumerate(stream)]
    total = sum(len(r) for r in refs)
    assert total >= 5  # the clip has cars to lose
    found = {}
    for px in (0.0, motion.MIXED_PX):
        em = EdgeModel('incremental', 'detect', model, refresh_interval=1000, mixed_px=px)
        found[px], mixed = 0, []
        for i, (s, mv, changed) in enumerate(stream):
            det = em(s, i + 1, mv, i if i else None, 16, changed)
            if i:
                mixed.append(em.last_mixed)
                marked = motion.MotionField(grid, mv, None).mixed(px) if px else None
                want = 0 if marked is None else int(
                    np.setdiff1d(np.flatnonzero(marked), changed).size)
                assert em.last_mixed == want
                assert em.last_blocks == len(changed) + em.last_drifted + em.last_mixed
            found[px] += _found(refs[i], det)
        em.close()
        assert (sum(mixed) > 0) == (px > 0)
    assert found[motion.MIXED_PX] == total
    assert found[0.0] < total
