"""YOLO11 in torch: loading (ONNX initializers, Ultralytics .pt), agreement with onnxruntime on
real frames, sane detections; incremental execution equals dense where it must."""

import numpy as np
import pytest
import torch

from fluxshard_kernels import data, incremental as inc, metrics, motion, refresh
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.yolo import model as M
from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
from fluxshard_kernels.yolo.processing import decode, letterbox


@pytest.fixture(scope='module')
def det_model():
    return M.load_onnx(str(data.model_path('detect')))


@pytest.fixture(scope='module')
def parkour():
    return list(data.iter_frames('davis-parkour', limit=3))


@pytest.mark.parametrize('task', ['detect', 'segment', 'pose'])
def test_torch_model_matches_onnxruntime(task, parkour):
    import onnxruntime as ort
    path = str(data.model_path(task))
    m = M.load_onnx(path)
    assert m.task == task
    s = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    x, _ = letterbox(parkour[0], 640, square=(task != 'detect'))
    ref = s.run(None, {'images': x})
    out = m(torch.from_numpy(x))
    out = out if isinstance(out, tuple) else (out,)
    for o, r in zip(out, ref):
        assert o.shape == r.shape
    # boxes (cx, cy, w, h) in input pixels within 1e-2 px; everything else close too
    assert np.abs(out[0].numpy()[0, :4] - ref[0][0, :4]).max() < 1e-2
    assert np.abs(out[0].numpy() - ref[0]).max() < 1e-2


def test_ultralytics_pt_checkpoint_loads_without_ultralytics(parkour):
    m = M.load_ultralytics_pt(str(data.data_root() / 'models' / 'yolo11n-pose.pt'))
    onnx_m = M.load_onnx(str(data.model_path('pose')))
    x, _ = letterbox(parkour[0], 640, square=True)
    a, b = m(torch.from_numpy(x)), onnx_m(torch.from_numpy(x))
    assert m.task == 'pose' and m.names[0] == 'person'
    assert (a - b).abs().max() < 0.05  # fp16 checkpoint vs fp32 export


def test_missing_weights_are_named(tmp_path):
    import onnx
    m = onnx.load(str(data.model_path('detect')))
    keep = [i for i in m.graph.initializer if i.name != 'model.0.conv.weight']
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    p = tmp_path / 'broken.onnx'
    onnx.save(m, str(p))
    with pytest.raises(ValueError, match='model.0.conv.weight'):
        M.load_onnx(str(p))


def test_person_on_parkour_and_cat_on_chelsea(det_model, parkour):
    x, lb = letterbox(parkour[0], 640)
    det = decode(det_model(torch.from_numpy(x))[0].numpy(), lb, 80)
    names = [det_model.names[int(c)] for c in det.class_ids]
    assert 'person' in names
    i = names.index('person')
    gt = np.array([[509, 54, 600, 222]])  # bbox_from_mask.csv, frame 0
    assert metrics.box_iou(det.boxes[i:i + 1], gt)[0, 0] > 0.5
    skimage = pytest.importorskip('skimage.data', reason='scikit-image not installed')
    cat = skimage.chelsea()[:, :, ::-1].copy()
    x, lb = letterbox(cat, 640)
    det = decode(det_model(torch.from_numpy(x))[0].numpy(), lb, 80)
    assert det_model.names[int(det.class_ids[0])] == 'cat'


def test_onnx_backend_segment_and_pose_outputs(parkour):
    seg = OnnxYolo(str(data.model_path('segment')))(parkour[0])
    assert len(seg) and seg.masks.shape[1:] == parkour[0].shape[:2] and seg.masks[0].any()
    pose = OnnxYolo(str(data.model_path('pose')))(parkour[0])
    assert len(pose) and pose.keypoints.shape[1:] == (17, 3)


def test_incremental_equals_dense_when_all_changed_blocks_recomputed(det_model):
    frames = list(data.iter_frames('pets09-s2l1', limit=2))
    run = inc.IncrementalYOLO(det_model, 16, halo='exact', exact_global=True)
    run.dense(frames[0])
    grid = BlockGrid(frames[0].shape[0], frames[0].shape[1], 16)
    diff = np.abs(frames[1].astype(int) - frames[0]).max(axis=2)
    changed = np.flatnonzero(grid.block_view(grid.pad(diff)).max(axis=(1, 3)).reshape(-1))
    raw, lb, st = run.step(frames[1], None, changed)
    x, _ = letterbox(frames[1], 640)
    ref = det_model(torch.from_numpy(x))
    assert (raw - ref).abs().max() < 1e-2
    assert st.macs_done > 0


def test_incremental_saves_work_on_a_static_camera(det_model):
    frames = list(data.iter_frames('pets09-s2l1', limit=3))
    run = inc.IncrementalYOLO(det_model, 16)
    raw0, lb, st0 = run.dense(frames[0])
    run.ex.costs = None  # the fixed per-layer rule: the work saved, not this machine's timings
    assert st0.mac_ratio == 1.0
    for f in frames[1:]:
        mf = motion.estimate_motion(f, run.state, 16)
        raw, lb, st = run.step(f, mf.mv, mf.misses(10.0))
    assert 0 < st.mac_ratio < 0.3
    # nothing changed at all: nothing is recomputed, not a layer is run
    raw2, _, st2 = run.step(run.state.copy(), None, [])
    assert st2.macs_done == 0 and not st2.layers and torch.allclose(raw2, raw)
    # the same output as running every layer (each keeps its cache)
    run._last = None
    raw3, _, st3 = run.step(run.state.copy(), None, [])
    assert st3.layers and st3.macs_done == 0 and torch.equal(raw3, raw2)
    # a background refresh swapped in another frame's caches: the network runs again
    ref = refresh.Refresh(run)
    ref.start(frames[0])
    ref.wait(60)
    assert ref.completed == 1
    raw4, _, st4 = run.step(run.state.copy(), None, [])
    x, _ = letterbox(frames[0], 640)
    assert st4.layers and (raw4 - det_model(torch.from_numpy(x))).abs().max() < 1e-2


def test_refresh_is_preemptible_between_layers_and_swaps_caches(det_model):
    frames = list(data.iter_frames('pets09-s2l1', limit=2))
    run = inc.IncrementalYOLO(det_model, 16)
    run.dense(frames[0])
    ref = refresh.Refresh(run)
    ref.start(frames[1])
    assert ref.pause(timeout=10)          # parks at a layer boundary
    assert ref.running
    state_before = run.state.copy()
    ref.resume()
    ref.wait(30)
    assert ref.completed == 1 and not ref.running
    assert np.array_equal(run.state, frames[1]) and not np.array_equal(state_before,
                                                                       frames[1])
    ref.start(frames[0])
    ref.pause()
    ref.cancel()
    assert ref.cancelled == 1 and np.array_equal(run.state, frames[1])


def test_layer_costs_fit_the_sparse_side_and_compare_with_dense():
    c = inc.LayerCosts()
    assert c.sparse_faster('l', 10) is None  # nothing measured: the fixed thresholds decide
    c.observe('l', 'dense', 0, 0.010)
    assert c.sparse_faster('l', 10) is None
    c.observe('l', 'sparse', 10, 0.002)
    assert c.predict_sparse('l', 5) == 0.002 and c.predict_sparse('l', 20) == 0.004
    for n, t in ((100, 0.011), (10, 0.002), (100, 0.011)):
        c.observe('l', 'sparse', n, t)  # on the line t = 0.001 + 0.0001 n
    assert abs(c.predict_sparse('l', 50) - 0.006) < 1e-6
    assert c.sparse_faster('l', 20) and not c.sparse_faster('l', 200)


def test_a_calibration_keeps_each_layers_fastest_repeat():
    """A calibration pass the machine interrupted (a busy core) does not set a layer's path:
    its fastest repeat per path and size counts, and the samples before it are forgotten."""
    c = inc.LayerCosts()
    c.observe('l', 'dense', 0, 0.050)  # the allocating first pass
    c.begin_calibration()
    for t in (0.010, 0.030):
        c.observe('l', 'dense', 0, t)
    for n, t in ((10, 0.002), (100, 0.011), (10, 0.020), (100, 0.050)):  # 2nd round slowed
        c.observe('l', 'sparse', n, t)
    assert c.sparse_faster('l', 20) is None  # held until the calibration ends
    c.end_calibration()
    assert c.dense['l'] == 0.010
    assert abs(c.predict_sparse('l', 50) - 0.006) < 1e-6  # t = 0.001 + 0.0001 n
    assert c.sparse_faster('l', 20) and not c.sparse_faster('l', 200)
    c.observe('l', 'dense', 0, 0.020)  # afterwards samples count as they come
    assert abs(c.dense['l'] - 0.013) < 1e-9


def _costs(dense=0.005):
    """A layer measured at calibration: sparse 1 ms + 0.1 ms a block, dense ``dense``."""
    c = inc.LayerCosts()
    c.begin_calibration()
    c.observe('l', 'dense', 0, dense)
    for n in (10, 100):
        c.observe('l', 'sparse', n, 0.001 + 0.0001 * n)
    c.end_calibration()
    return c


def test_a_busy_moment_does_not_turn_a_layer_dense():
    """A sample at run time counts at most SPIKE times its prediction: one slow sparse pass
    (a busy core) leaves a layer whose sparse pass is clearly faster on the sparse path."""
    c = _costs()
    c.new_frame()
    assert c.choose('l', 10)
    c.observe('l', 'sparse', 10, 0.200)  # 100x the 2 ms it takes
    assert c.predict_sparse('l', 10) < 0.0035
    assert c.choose('l', 10)
    c.observe('l', 'dense', 0, 1.0)  # nor does a slow dense pass make dense look free
    assert c.dense['l'] <= 0.005 * (1 + 0.3)


def test_a_layer_running_dense_probes_sparse_again_and_turns_back():
    """A layer whose sparse estimate a long slow stretch raised runs dense; it runs sparse
    again (a probe) after PROBE_MIN decisions, at most PROBES_PER_FRAME layers a frame and
    not where most of it is active, and a fast probe turns it back at once. Without probes a
    layer once dense stayed dense (nothing measured its sparse side again)."""
    c = _costs()
    for _ in range(40):  # a long busy stretch: sparse looks 10x slower than it is
        c.observe('l', 'sparse', 10, 0.020)
    assert not c.sparse_faster('l', 10)
    choices = []
    for i in range(c.PROBE_MIN):
        if i != c.PROBE_MIN - 1:
            c.new_frame()  # the probe's turn comes in a frame without budget left: it waits
        choices.append(c.choose('l', 10))
    assert not any(choices) and c.probes == 0
    assert not c.choose('l', 10, may_probe_sparse=False)  # most of the layer active: waits
    c.new_frame()
    assert c.choose('l', 10) and c.probes == 1  # the probe
    c.observe('l', 'sparse', 10, 0.002)
    c.new_frame()
    assert c.choose('l', 10)  # the probe found sparse faster: the layer is back
    # where sparse really is slower the probes thin out (PROBE_MIN, then doubling)
    slow = _costs(dense=0.001)
    runs = []
    for _ in range(200):
        slow.new_frame()
        runs.append(slow.choose('l', 10))
        if runs[-1]:
            slow.observe('l', 'sparse', 10, 0.002)
    assert [i + 1 for i, r in enumerate(runs) if r] == [17, 49, 113]  # 16, then 32, 64


def test_the_engine_probes_a_layer_that_a_busy_stretch_turned_dense(det_model):
    """Real frames on one thread (where the sparse side is timed): a layer whose sparse
    estimate a busy stretch inflated runs dense, then runs sparse again on its probe's turn,
    and the probe's measured time brings it back to sparse."""
    frames = list(data.iter_frames('pets09-s2l1', limit=8))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = inc.IncrementalYOLO(det_model, 16)
        run.warm_up([frames[0].shape[:2]])
        costs = next(iter(run.layer_costs.values()))
        costs.PROBE_MIN = 2
        run.dense(frames[0])
        name = 'model.0'  # the first conv: active whenever a block changed
        assert costs.sparse_faster(name, 50)
        acc = costs.sparse[name]
        acc[2] += 1.0 * acc[0]  # a second more at every size: as a long busy stretch leaves
        assert not costs.sparse_faster(name, 50)
        modes = []
        for f in frames[1:]:
            fld = motion.estimate_motion(f, run.state, 16)
            _, _, st = run.step(f, fld.mv, fld.misses(10.0))
            modes.append({x.name: x.mode for x in st.layers}[name])
    finally:
        torch.set_num_threads(threads)
    assert modes[0] == 'dense' and costs.probes >= 1
    assert modes[-1] == 'sparse' and costs.sparse_faster(name, 50)


def test_each_layer_runs_on_its_measured_faster_path(det_model):
    """After calibration every layer has both costs, and its choice follows them (set here,
    so the test does not depend on this machine's timings): a layer whose dense pass looks
    free runs dense at a small active set, a layer whose dense pass looks expensive runs
    sparse, deep layers above the fixed threshold included."""
    frames = list(data.iter_frames('pets09-s2l1', limit=3))
    run = inc.IncrementalYOLO(det_model, 16)
    run.warm_up([frames[0].shape[:2]])
    costs = next(iter(run.layer_costs.values()))
    assert len(costs.dense) > 50 and len(costs.sparse) > 50
    run.dense(frames[0])
    first = 'model.0'  # the first conv: active whenever a block changed
    deep = [n for n in costs.sparse if n.startswith(('model.7', 'model.8'))]  # stride 32
    assert deep
    modes = []
    for f, dense_cost in ((frames[1], 10.0), (frames[2], 0.0)):
        costs.dense[first] = dense_cost
        for n in deep:
            costs.dense[n] = 10.0
        fld = motion.estimate_motion(f, run.state, 16)
        _, _, st = run.step(f, fld.mv, fld.misses(10.0))
        modes.append({x.name: x.mode for x in st.layers})
    assert modes[0][first] == 'sparse' and modes[1][first] == 'dense'
    assert all(m[n] in ('sparse', 'skip') for m in modes for n in deep)
    assert any(m[n] == 'sparse' for m in modes for n in deep)


def test_attention_rows_equal_the_dense_block_at_those_pixels(det_model):
    """The engine recomputes the attention block's changed pixels only: their queries against
    every pixel's keys and values equal the dense block's outputs there."""
    psa = next(m for m in det_model.modules() if isinstance(m, M.C2PSA))
    blk = psa.m[0]
    x = torch.randn(1, psa.c, 15, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = blk.dense(x).reshape(1, psa.c, -1)
        for sel in (torch.tensor([0, 5, 77, 150, 299]), torch.arange(300)):
            torch.testing.assert_close(blk.rows(x, sel), ref[..., sel], rtol=1e-4, atol=1e-4)
    ys, xs = inc.block_pixels([0, 3], [1, 9], 2, 7, 19)  # blocks of 2 px, the last one clipped
    assert sorted(zip(ys.tolist(), xs.tolist())) == [
        (0, 2), (0, 3), (1, 2), (1, 3), (6, 18)]
