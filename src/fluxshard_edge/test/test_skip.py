"""Frames the server does not need are not sent (skip.py): the measured agreement by gap, the
bound, the change outside the objects, results that wait, and the bookkeeping under fuzzing."""

import numpy as np
from hypothesis import given, settings, strategies as st
import pytest

from fluxshard_edge.skip import move_detections, SkipGate
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.yolo.processing import Detections

GRID = BlockGrid(96, 128, 16)  # 6 x 8 blocks


def dets(*boxes, cls=0):
    b = np.array(boxes, np.float32).reshape(-1, 4)
    return Detections(b, np.full(len(b), 0.9, np.float32), np.full(len(b), cls, np.int64))


def field(dx=0, dy=0):
    mv = np.zeros((GRID.rows, GRID.cols, 2), np.int32)
    mv[..., 0], mv[..., 1] = dx, dy
    return mv


NO_CHANGE = np.zeros(GRID.count, np.float32)


def calibrated(target=0.9, max_run=2, agree=True):
    """A gate whose gap-1 agreement is measured: three sends for inference at gap 1 whose
    results the moved ones match (``agree``) or not."""
    g = SkipGate(target, max_run)
    g.sent(1, 1, None, GRID, infer=True, key=True)
    g.result(1, dets((10, 10, 40, 40)))
    for s in range(2, 5):
        assert not g.decide(s, field(), NO_CHANGE, 10.0, GRID)
        g.sent(s, s, field(), GRID, infer=True, key=False)
        g.result(s, dets((10, 10, 40, 40)) if agree else dets((80, 50, 120, 90)))
    return g


def test_off_by_default_and_bad_settings_are_refused():
    g = SkipGate()
    g.sent(1, 1, None, GRID, True, True)
    g.result(1, dets((0, 0, 10, 10)))
    assert not g.decide(2, field(), NO_CHANGE, 10.0, GRID) and g.last_reason == 'off'
    for bad in ((-0.1, 2), (1.5, 2), (0.9, -1)):
        with pytest.raises(ValueError):
            SkipGate(*bad)


def test_skips_where_moved_results_agree_up_to_the_bound_then_sends():
    g = calibrated(max_run=2)
    assert g.acc[1][1] == 3 and g.acc[1][0] == 1.0
    assert g.decide(5, field(), NO_CHANGE, 10.0, GRID)        # gap 1: measured
    assert g.decide(6, field(), NO_CHANGE, 10.0, GRID)        # gap 2: explores one further
    assert not g.decide(7, field(), NO_CHANGE, 10.0, GRID)    # the bound
    assert 'in a row' in g.last_reason
    g.sent(5, 7, field(), GRID, infer=True, key=False)        # gap 3 measured by this send
    g.result(5, dets((10, 10, 40, 40)))
    assert g.acc[3][1] == 1 and g.run == 0


def test_never_skips_where_moved_results_disagree():
    g = calibrated(agree=False)
    assert g.acc[1][0] < 0.9
    assert not g.decide(5, field(), NO_CHANGE, 10.0, GRID)
    assert 'agree' in g.last_reason


def test_a_gate_with_a_prior_starts_from_its_measured_gaps_and_prefers_its_own():
    """The bridge gate (local results) starts from the skip gate's measurements (the
    server's) at gaps it has not measured; its own measurement of a gap replaces the prior's
    there; a prior's measurement at the gap itself counts before one carried from another of
    its own gaps; and a gate with neither knows nothing."""
    prior = calibrated()                       # gap 1 measured on server results: 1.0
    g = SkipGate(0.9, 2, prior=prior)
    assert SkipGate(0.9, 2).agreement(1) is None
    assert g.agreement(1) == 1.0 and g.agreement(2) == 1.0 and g.agreement(3) is None
    g.proxy_seq, g.proxy_frame, g.baseline = 7, 4, 0.0
    g.results[7] = dets((10, 10, 40, 40))
    assert g.decide(5, field(), NO_CHANGE, 10.0, GRID)     # before any local measurement
    g.acc[3] = [0.4, 3, g._sends]              # its own, at another gap
    assert g.agreement(1) == 1.0               # the prior's at gap 1 itself
    assert g.agreement(2) == pytest.approx(0.7)  # between gap 1 (prior) and 3 (own)
    g.acc[1] = [0.5, 3, g._sends]              # its own at gap 1: that one counts
    assert g.agreement(1) == 0.5
    g.run = 0
    assert not g.decide(5, field(), NO_CHANGE, 10.0, GRID) and 'agree 0.50' in g.last_reason


def test_the_precheck_refuses_only_what_decide_would_refuse_whatever_the_field():
    """``precheck`` (before a block search) says no where ``decide`` must: gate off, no
    proxy result, the bound, an agreement unmeasured or below the target at the frame's gap;
    a frame at gap 1 is always searched (its field teaches the baseline), and where it says
    yes, ``decide`` on a quiet field agrees."""
    assert SkipGate().precheck(2) == 'off'
    assert 'no result' in SkipGate(0.9).precheck(2)
    g = calibrated(max_run=2)                  # gap 1 measured at 1.0; proxy frame 4
    assert g.precheck(5) == '' and g.precheck(6) == ''   # gap 1; gap 2 explores one further
    assert 'not measured' in g.precheck(7)     # gap 3: two beyond the measured one
    assert not g.decide(7, field(), NO_CHANGE, 10.0, GRID) and 'not measured' in g.last_reason
    assert g.decide(5, field(), NO_CHANGE, 10.0, GRID) and g.decide(6, field(), NO_CHANGE,
                                                                    10.0, GRID)
    assert 'in a row' in g.precheck(7)
    low = calibrated(agree=False)
    assert low.precheck(5) == ''               # gap 1: searched even so
    assert 'agree' in low.precheck(6) and not low.decide(6, field(), NO_CHANGE, 10.0, GRID)


def test_a_new_object_outside_the_known_ones_ends_a_skipped_stretch():
    g = calibrated(max_run=5)
    d = NO_CHANGE.copy()
    assert g.decide(5, field(), d, 10.0, GRID)
    d[GRID.rows * GRID.cols - 4:] = 50.0  # four changed blocks far from the object
    assert not g.decide(6, field(), d, 10.0, GRID)
    assert 'outside the objects' in g.last_reason
    inside = NO_CHANGE.copy()
    inside[GRID.cols + 1] = 50.0  # a change on the known object: the agreement covers it
    assert g.decide(6, field(), inside, 10.0, GRID)


def test_a_skipped_frame_waits_for_the_proxy_result_and_gets_it_moved():
    g = calibrated()
    g.sent(9, 5, field(), GRID, infer=True, key=False)  # its result is on its way
    assert g.decide(6, field(-16, 0), NO_CHANGE, 10.0, GRID, hint=dets((10, 10, 40, 40)))
    det, token = g.skip(field(-16, 0), GRID)
    assert det is None and token > 0
    # a replay that knows the result early may ask what the frame will get: nothing changes
    np.testing.assert_allclose(g.moved(token, dets((10, 10, 40, 40))).boxes, [[26, 10, 56, 40]])
    assert g.moved(token + 1, dets((10, 10, 40, 40))) is None and 9 not in g.results
    out = g.result(9, dets((10, 10, 40, 40)))
    assert [t for t, _ in out] == [token]
    np.testing.assert_allclose(out[0][1].boxes, [[26, 10, 56, 40]])  # content moved right
    assert g.result(9, dets((10, 10, 40, 40))) == []  # handed over once
    # a lost result: the waiting frames are named, not forgotten
    g.sent(10, 7, field(), GRID, infer=True, key=False)
    assert g.decide(8, field(), NO_CHANGE, 10.0, GRID, hint=dets((10, 10, 40, 40)))
    _, tok = g.skip(field(), GRID)
    assert g.expire([10]) == [tok] and not g.waiting


def test_nothing_is_predicted_across_a_key_or_a_batch_without_inference():
    g = calibrated()
    g.sent(5, 5, None, GRID, infer=False, key=False)  # opportunistic: no result will come
    assert not g.decide(6, field(), NO_CHANGE, 10.0, GRID)
    assert 'no result' in g.last_reason
    g.sent(6, 6, None, GRID, infer=True, key=True)
    assert 6 not in g._sent  # a key's result calibrates nothing


def test_moved_detections_carry_keypoints_and_masks_and_stay_in_the_frame():
    kpt = np.zeros((1, 17, 3), np.float32)
    kpt[0, :, :2] = 20.0
    masks = np.zeros((1, GRID.height, GRID.width), bool)
    masks[0, 10:40, 10:40] = True
    d = Detections(np.array([[10, 10, 40, 40]], np.float32), np.array([0.8], np.float32),
                   np.array([0]), kpt, masks)
    m = move_detections(d, field(-8, 4), GRID)  # content moved by (+8, -4)
    np.testing.assert_allclose(m.boxes, [[18, 6, 48, 36]])
    np.testing.assert_allclose(m.keypoints[0, :, :2], np.tile([28.0, 16.0], (17, 1)))
    assert m.masks[0, 6:36, 18:48].all() and m.masks[0].sum() == 900
    edge = move_detections(d, field(-120, 0), GRID)
    assert edge.boxes[0, 2] <= GRID.width


EVENTS = ['frame', 'send', 'nosend', 'key', 'result', 'lose']


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EVENTS), st.integers(0, 3)), max_size=60),
       st.integers(1, 3))
def test_skip_bookkeeping_holds_under_any_order_of_events(events, max_run):
    """Any interleaving of frames, sends (for inference, without, keys), results in any order
    and lost ones: runs never exceed the bound, a frame is skipped only while the proxy frame
    will have a result, and every waiting frame is handed over or expired exactly once."""
    g = SkipGate(0.5, max_run)
    g.acc[1] = [1.0, 5, 0]
    g.STALE = 10**9
    g.baseline = 0.0
    frame, seq, pending, handed = 0, 0, [], []
    tokens, expired = set(), []
    for kind, arg in events:
        if kind == 'frame':
            frame += 1
            proxy = g.proxy_seq
            if g.decide(frame, field(), NO_CHANGE, 10.0, GRID):
                assert proxy is not None and g.run <= max_run
                det, tok = g.skip(field(), GRID)
                assert (det is None) == (tok > 0)
                if tok:
                    tokens.add(tok)
        elif kind in ('send', 'nosend', 'key'):
            frame += 1
            seq += 1
            g.sent(seq, frame, None if kind == 'key' else field(), GRID,
                   infer=kind != 'nosend', key=kind == 'key')
            if kind != 'nosend':
                pending.append(seq)
            assert g.run == 0
        elif pending:
            s = pending.pop(min(arg, len(pending) - 1))
            if kind == 'result':
                handed += [t for t, d in g.result(s, dets((0, 0, 16, 16))) if d is not None]
            else:
                expired += g.expire([s])
    expired += g.expire(pending)
    assert sorted(handed + expired) == sorted(tokens)
    assert not g.waiting


def test_the_pipeline_skips_frames_of_a_near_static_camera_and_sends_when_an_object_enters():
    """Real frames (sam2-bedroom) and the real detector's results as the server's: once moved
    results measured agree, frames are not sent (their result is the proxy frame's, moved;
    no more than ``skip_max`` in a row); a new object pasted far from the known ones ends the
    stretch at once."""
    from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
    from fluxshard_kernels import data
    from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
    ort = OnnxYolo(str(data.model_path('detect')), threads=1)
    frames = list(data.iter_frames('sam2-bedroom', limit=24))
    pipe = EdgePipeline(EdgeConfig(local_inference=False, skip_target=0.5, skip_max=2))
    runs, run, skipped = [], 0, []
    for i, f in enumerate(frames[:16]):
        st = pipe.step(f)
        if st.skipped:
            assert st.local_result is not None and not st.sends
            skipped.append(i)
            run += 1
            continue
        runs.append(run)
        run = 0
        assert st.sends and st.sparse_inference_requested
        assert pipe.observe_server_result(st.seq, ort(f)) == []
    assert skipped and max(runs + [run]) <= 2, (skipped, runs)
    # an object enters where none was: the frame right after a send would be skipped, but not
    # with a patch of another clip pasted into a corner far from the bedroom's objects
    intruder = next(iter(data.iter_frames('davis-parkour', limit=1)))[100:196, 300:396]
    while True:
        i += 1
        st = pipe.step(frames[i])
        if st.skipped:
            continue
        pipe.observe_server_result(st.seq, ort(frames[i]))
        break
    from fluxshard_kernels import salience
    from fluxshard_kernels.blocks import BlockGrid as Grid
    g = pipe.skip
    grid = Grid(frames[0].shape[0], frames[0].shape[1], 16)
    free = ~salience.object_blocks(g.results[g.proxy_seq].boxes, grid, None, grow=2).reshape(
        grid.rows, grid.cols)
    spots = [(r, c) for r in range(grid.rows - 5) for c in range(grid.cols - 5)
             if free[r:r + 6, c:c + 6].all()]
    assert spots, 'no room for a new object in this clip'
    ys, xs = 16 * spots[0][0], 16 * spots[0][1]
    f = frames[i + 1].copy()
    f[ys:ys + 96, xs:xs + 96] = intruder
    st = pipe.step(f)
    assert not st.skipped and st.sends, pipe.skip.last_reason
    assert 'outside the objects' in pipe.skip.last_reason
