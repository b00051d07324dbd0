"""Edge pipeline: key batches, dissimilarity, threshold, resync requests, geometry changes."""

import numpy as np
import pytest

from fluxshard_edge.pipeline import block_dissimilarity, EdgeConfig, EdgePipeline
from fluxshard_kernels import data, proxy
from fluxshard_kernels.blocks import BlockGrid


def test_dissimilarity_is_block_mean_abs_diff_with_partial_blocks():
    a = np.zeros((20, 20, 1), np.uint8)
    b = a.copy()
    b[16:, 16:] = 40  # the 4x4 partial corner block, fully changed
    b[0, 0] = 160     # one pixel of a full 16x16 block
    d = block_dissimilarity(a, b, BlockGrid(20, 20, 16))
    assert d.shape == (4,)
    assert np.isclose(d[0], 160 / 256) and d[1] == 0 and d[2] == 0 and np.isclose(d[3], 40)


def test_first_frame_is_key_then_only_misses_are_sent():
    frames = list(data.iter_frames('pets09-s2l1', limit=3))
    pipe = EdgePipeline(EdgeConfig(tau=6.0, codec='png'))
    s1 = pipe.step(frames[0])
    assert s1.key and s1.seq == 1 and len(s1.update.block_indices) == s1.update.grid.count
    assert np.array_equal(pipe.proxy, frames[0])
    s2 = pipe.step(frames[1])
    assert not s2.key and s2.seq == 2
    n = len(s2.update.block_indices)
    assert 0 < n < s2.update.grid.count / 2  # static camera: few misses
    assert np.all(np.diff(s2.dissimilarity) <= 0)  # sorted by D, descending
    assert np.all(s2.dissimilarity >= 6.0)


def test_mixed_motion_recomputes_the_edges_of_movers_locally_and_sends_none_of_them():
    """motion.mixed_px end to end on a real still-camera clip: the local engine recomputes the
    blocks along the cars' motion edges although their D is small; the blocks sent to the
    server stay those of D (the server marks the mixed blocks itself, model.mixed_px)."""
    frames = list(data.iter_frames('bgs-highway', limit=6))
    local, sent = {}, {}
    for px in (0.0, 4.0):
        for side, out in (('edge', local), ('cloud', sent)):
            pipe = EdgePipeline(EdgeConfig(codec='raw', force_strategy=side, mixed_px=px,
                                           backend='incremental'))
            steps = [pipe.step(f) for f in frames]
            assert all(not s.key for s in steps[1:])
            out[px] = [set(np.flatnonzero(s.block_map == (1 if side == 'edge' else 2)))
                       for s in steps[2:]]  # the local state exists from the second frame
    assert all(a <= b for a, b in zip(local[0.0], local[4.0]))  # D's misses stay misses
    assert sum(map(len, local[4.0])) > 2 * sum(map(len, local[0.0]))
    assert sent[4.0] == sent[0.0]


def test_resync_and_geometry_change_force_key():
    frames = list(data.iter_frames('pets09-s2l1', limit=2))
    pipe = EdgePipeline(EdgeConfig(tau=4.0, codec='raw'))
    pipe.step(frames[0])
    assert pipe.request_resync('test', failed_seq=1)
    s = pipe.step(frames[1])
    assert s.key and s.key_reason == 'test'
    assert not pipe.request_resync('old', failed_seq=1)  # a key after seq 1 already went out
    small = np.ascontiguousarray(frames[1][:100, :130])
    s = pipe.step(small)
    assert s.key and 'size changed' in s.key_reason
    assert proxy.digest(pipe.proxy) == s.digest


def test_the_local_path_is_the_faster_runtime_by_measured_cost():
    """model.backend auto on the edge: onnxruntime and the engine both measured, each frame
    served by the one predicted faster (the engine's first pass initialises its caches); a
    profile seeds the costs; onnxruntime alone and the engine alone stay available."""
    from fluxshard_kernels import data
    from fluxshard_kernels.profile import DeviceProfile, RoleProfile
    frames = list(data.iter_frames('pets09-s2l1', 5))
    # a measured profile: the engine 1 s fixed, onnxruntime 10 ms -> onnxruntime from frame 2
    prof = DeviceProfile('measured', 'test', RoleProfile(0.0, 0.0, 1.0, 0.01, 1.0),
                         RoleProfile(0.0, 0.0, 1.0, 0.01, 1.0))
    pipe = EdgePipeline(EdgeConfig(force_strategy='edge', codec='raw'), profile=prof)
    paths = []
    for i, f in enumerate(frames):
        out = pipe.step(f)
        if i == 0:  # the key batch initialises the server's proxy beside the local pass
            assert out.key and out.sends and not out.sparse_inference_requested
        if out.local_result is not None:
            paths.append(pipe.last_path)
    # the first frame's dense pass is onnxruntime too: the engine's state is built by the
    # background refresh
    assert len(paths) == 5 and set(paths) == {'onnxruntime'}, paths
    assert pipe.refresh.wait(60) and pipe.runner.state is not None
    # the same frames, engine only: the results agree with onnxruntime's on a static camera
    eng = EdgePipeline(EdgeConfig(force_strategy='edge', codec='raw', backend='incremental'))
    for f in frames:
        ref = eng.step(f).local_result
    assert eng.onnx is None and ref is not None and eng.last_path == 'incremental'
    assert abs(len(ref) - len(out.local_result)) <= 2
    ort = EdgePipeline(EdgeConfig(force_strategy='edge', codec='raw', backend='onnxruntime'))
    for f in frames[:3]:
        ort.step(f)
    assert ort.last_path == 'onnxruntime'


def test_the_local_block_search_beside_the_proxy_one_finds_the_same_fields(monkeypatch):
    """With the local path ready, the local block search runs on the motion thread beside the
    proxy's: every step sends the same blocks, sees the same hit ratio and keeps the same
    fields as the two searches one after the other (a path without measured timings, so that
    only the thread can make them differ)."""
    from fluxshard_edge import pipeline
    frames = list(data.iter_frames('davis-parkour', 6))
    runs = []
    for threaded in (True, False):
        monkeypatch.setattr(pipeline, 'MOTION_THREAD', threaded)
        # no timing in the path: fixed dense/incremental choice, no background refresh
        pipe = EdgePipeline(EdgeConfig(force_strategy='edge', codec='raw',
                                       backend='incremental', fit_latency=False))
        pipe.refresh.cancel()
        pipe.refresh = None
        steps = []
        for f in frames:
            out = pipe.step(f)
            sent = None if out.update is None else out.update.block_indices.tolist()
            steps.append((sent, out.hit_ratio, None if pipe._prev_mv_proxy is None else
                          pipe._prev_mv_proxy.tolist(), None if pipe._prev_mv_local is None
                          else pipe._prev_mv_local.tolist()))
        assert (pipe._pool is not None) == (threaded and pipeline.usable_cores() > 1)
        assert steps[-1][3] is not None  # the local search ran
        pipe.close()
        assert pipe._pool is None
        runs.append(steps)
    assert runs[0] == runs[1]


def test_offline_computes_every_frame_on_the_robot_and_sends_nothing():
    """force_strategy 'offline' (Edge-only): no server needed, nothing sent, every frame a
    local result."""
    from fluxshard_kernels import data
    pipe = EdgePipeline(EdgeConfig(force_strategy='offline', backend='onnxruntime'))
    for f in data.iter_frames('pets09-s2l1', 3):
        out = pipe.step(f)
        assert out.local_result is not None and not out.sends
        assert pipe.last_path == 'onnxruntime'
    with pytest.raises(ValueError, match='offline'):
        EdgeConfig(force_strategy='offline', local_inference=False)


def test_the_payload_crf_follows_the_link_rate():
    """Rate from the link: on a slow link the H.264 payload gets coarser (between crf and
    max_crf, as a quantiser offset: the stream never restarts with a key), on a fast one it
    stays at crf."""
    frames = list(data.iter_frames('davis-parkour', 40))
    crfs, sizes = {}, {}
    for mbps in (1.0, 100.0):
        pipe = EdgePipeline(EdgeConfig(force_strategy='cloud', bandwidth_mbps=mbps,
                                       fit_latency=False, local_inference=False,
                                       roi_qoffset=0.0,  # the link's offset alone
                                       target_retention=0.0))
        pipe.scheduler.frame_interval_s = 1 / 24
        used, size, keys = [], [], []
        for f in frames:
            out = pipe.step(f)
            used.append(out.quality)
            keys.append(out.key)
            if not out.key:
                size.append(len(out.payload))
        crfs[mbps], sizes[mbps] = used, size
        assert keys == [True] + [False] * (len(frames) - 1)  # one stream, no restarts
        if mbps == 1.0:  # 1 Mbit/s at 24 Hz: a half share is 2.6 kB per frame
            lo, hi = pipe.config.crf, pipe.config.max_crf
            assert used[0] == lo and lo < max(used) <= hi, used
            assert all(abs(a - b) <= pipe.CRF_STEP for a, b in zip(used, used[1:])), used
            assert pipe.last_roi is not None and pipe.last_roi.background > 0
    assert set(crfs[100.0]) == {EdgeConfig().crf}, crfs[100.0]
    # the same frames' units, once the slow link's CRF has risen
    assert np.mean(sizes[1.0][10:]) < 0.6 * np.mean(sizes[100.0][10:]), sizes


def test_when_the_dense_runtime_wins_by_far_motion_is_skipped_between_full_steps():
    """A slow link and an onnxruntime far faster than the engine: the edge serves frames with
    onnxruntime without block motion, and re-measures with a full step every FULL_EVERY
    frames; with a known camera rate the interval doubles while the cloud stays far slower,
    up to FULL_MAX_S of camera time."""
    from fluxshard_kernels.profile import DeviceProfile, RoleProfile
    prof = DeviceProfile('measured', 'test', RoleProfile(0.0, 0.0, 1.0, 0.01, 1.0),
                         RoleProfile(0.0, 0.0, 1.0, 0.01, 1.0))
    frames = list(data.iter_frames('pets09-s2l1', 50))
    for rate_hz, gap_max in ((None, EdgePipeline.FULL_EVERY), (25.0, 25)):
        pipe = EdgePipeline(EdgeConfig(bandwidth_mbps=0.1, fit_latency=False), profile=prof)
        pipe.scheduler.frame_interval_s = 1 / rate_hz if rate_hz else None
        skipped = []
        for f in frames[:25 if rate_hz is None else 50]:
            out = pipe.step(f)
            assert out.local_result is not None
            assert not (out.motion_skipped and out.sends)
            skipped.append(out.motion_skipped)
        full = [i for i, s in enumerate(skipped) if not s]
        assert sum(skipped) >= 15 and full[0] == 0, skipped
        gaps = [b - a for a, b in zip(full, full[1:])]
        assert max(gaps + [len(skipped) - full[-1]]) <= gap_max, full
        if rate_hz:
            assert max(gaps) > pipe.FULL_EVERY, full


def test_a_dense_only_stretch_is_measured_in_camera_frames():
    """An edge that takes every 5th camera frame (its dense pass outlasts five frame
    intervals) re-measures with a full step within FULL_MAX_S of camera time, not of the
    frames it took: counted in taken frames, a link back from an outage waited 2 s of camera
    time for the next full step (a cellular run: davis-breakdance over the AT&T trace)."""
    from fluxshard_kernels.profile import DeviceProfile, RoleProfile
    prof = DeviceProfile('measured', 'test', RoleProfile(0.0, 0.0, 1.0, 0.01, 1.0),
                         RoleProfile(0.0, 0.0, 1.0, 0.01, 1.0))
    frames = list(data.iter_frames('pets09-s2l1', 60))
    full = {}
    for given in (True, False):
        pipe = EdgePipeline(EdgeConfig(bandwidth_mbps=0.1, fit_latency=False), profile=prof)
        pipe.scheduler.frame_interval_s = 1 / 25
        full[given] = [i for i in range(0, len(frames), 5) if not pipe.step(
            frames[i], camera_index=i if given else None).motion_skipped]
    assert full[True][0] == 0 and len(full[True]) >= 3, full
    gaps = [b - a for a, b in zip(full[True], full[True][1:])]
    assert max(gaps) <= 25, full  # FULL_MAX_S of camera time at 25 Hz
    assert len(full[False]) < len(full[True]), full


def test_the_engine_pays_its_block_motion_against_the_dense_runtime():
    """The engine alone slightly faster than onnxruntime, but not with the block motion it
    needs (the profile's edge overhead): the edge serves with onnxruntime and skips the
    motion between full steps; without that overhead it keeps the engine's full steps."""
    from fluxshard_kernels.profile import DeviceProfile, RoleProfile
    frames = list(data.iter_frames('pets09-s2l1', 25))
    skipped = {}
    for overhead in (0.005, 0.0):
        role = RoleProfile(0.0, 0.0, 0.030, 0.033, 0.055)
        prof = DeviceProfile('measured', 'test', role, role, edge_overhead_s=overhead)
        pipe = EdgePipeline(EdgeConfig(bandwidth_mbps=0.1, fit_latency=False), profile=prof)
        skipped[overhead] = [pipe.step(f).motion_skipped for f in frames]
    assert sum(skipped[0.005]) >= 15, skipped[0.005]
    assert not any(skipped[0.0]), skipped[0.0]


def test_large_objects_are_coded_coarser_than_small_ones():
    """payload.roi_large_qoffset: a box covering >= LARGE_AREA of the frame gets that offset
    (never more than the background's), a small one keeps the CRF."""
    from fluxshard_kernels.yolo.processing import Detections
    f = next(data.iter_frames('davis-blackswan', limit=1))
    pipe = EdgePipeline(EdgeConfig(codec='h264', roi_qoffset=0.2, roi_large_qoffset=0.1,
                                   force_strategy='cloud', local_inference=False, crf=23))
    pipe.last_result = Detections(boxes=np.array([[100, 100, 400, 400], [600, 50, 630, 80]],
                                                 np.float32),
                                  scores=np.array([0.9, 0.6], np.float32),
                                  class_ids=np.array([14, 0]))
    assert pipe.step(f).sends
    qs = {r[0]: r[4] for r in pipe.last_roi.regions}
    assert qs == {100 - 16: 0.1, 600 - 16: 0.0}, pipe.last_roi.regions
    pipe.reconfigure(roi_large_qoffset=0.5)  # capped at the background's offset
    pipe.step(f)
    assert max(r[4] for r in pipe.last_roi.regions) == 0.2
    with pytest.raises(ValueError, match='roi_large_qoffset'):
        EdgeConfig(roi_large_qoffset=1.5)


def test_the_payload_quality_region_follows_the_objects():
    """An object moving across the frame moves its ROI region (projected by the block
    motion), and the ROI payload costs fewer bytes than the same frames without it."""
    from fluxshard_kernels.yolo.processing import Detections
    base = next(data.iter_frames('davis-blackswan', limit=1))
    frames = [np.roll(base, 16 * k, axis=1) for k in range(4)]  # content moves right
    sizes = {}
    for q in (0.0, 0.4):
        pipe = EdgePipeline(EdgeConfig(codec='h264', roi_qoffset=q, force_strategy='cloud',
                                       local_inference=False, crf=23))
        regions = []
        for k, f in enumerate(frames):
            # the last result (a server's, as the runtime hands it over): the object at k-1
            pipe.last_result = Detections(
                boxes=np.array([[300 + 16 * (k - 1), 100, 400 + 16 * (k - 1), 200]],
                               np.float32), scores=np.array([0.9], np.float32),
                class_ids=np.array([14]))
            s = pipe.step(f)
            assert s.sends
            sizes[q] = sizes.get(q, 0) + (len(s.payload) if k else 0)
            if q:
                regions.append(pipe.last_roi.regions[0])
        if q:
            xs = [r[0] for r in regions[1:]]  # margin of one block around the moved box
            assert xs == [300 + 16 * k - 16 for k in range(1, 4)], regions
            assert pipe.last_roi.background == 0.4
    assert sizes[0.4] < sizes[0.0], sizes


def test_roi_offset_must_be_a_fraction():
    with pytest.raises(ValueError, match='roi_qoffset'):
        EdgeConfig(roi_qoffset=1.5)


def test_a_busy_device_offloads_when_the_cloud_beats_waiting_else_defers():
    """scheduler.overlap_local: while the device computes an earlier frame, a new frame is
    offloaded if the cloud beats waiting for the device; otherwise the step is deferred and
    changes nothing (no sequence number, no proxy change, no frame counted); a robot forced
    to compute locally always waits."""
    from fluxshard_kernels import data
    frames = list(data.iter_frames('pets09-s2l1', 4))
    pipe = EdgePipeline(EdgeConfig(codec='raw', backend='onnxruntime', overlap_local='always'))
    assert pipe.step(frames[0]).key
    for _ in range(8):  # a 300 ms round trip: computing locally wins on an idle device
        pipe.scheduler.bw.observe(20_000, 0.3 + 20_000 / (50e6 / 8))
    idle = pipe.step(frames[1])
    # overlapped: the local computation is handed back as a job for the device's thread
    assert idle.decision.strategy == 'edge' and idle.local_result is None
    assert idle.local_job is not None and idle.local_eta_s > 0
    assert idle.local_job() > 0 and idle.local_result is not None
    seq, frames_seen, proxy_before = pipe.seq, pipe.frames, pipe.proxy.copy()
    wait = pipe.step(frames[2], device_busy_s=0.01)
    assert wait.deferred and not wait.sends and wait.local_result is None
    assert (pipe.seq, pipe.frames) == (seq, frames_seen)
    assert np.array_equal(pipe.proxy, proxy_before)
    gone = pipe.step(frames[2], device_busy_s=5.0)  # waiting 5 s: the cloud is faster
    assert not gone.deferred and gone.decision.strategy == 'cloud' and gone.sends
    assert gone.seq == seq + 1 and gone.local_result is None
    with pytest.raises(ValueError, match='overlap_local'):
        pipe.reconfigure(overlap_local='never')
    forced = EdgePipeline(EdgeConfig(codec='raw', backend='onnxruntime', force_strategy='edge',
                                     overlap_local='always'))
    forced.step(frames[0])
    assert forced.step(frames[1], device_busy_s=5.0).deferred
    with pytest.raises(ValueError, match='overlap_local'):
        EdgeConfig(overlap_local='sometimes')
    # 'auto' overlaps only where local inference runs on CUDA (not on this CPU)
    assert not EdgePipeline(EdgeConfig(codec='raw', backend='onnxruntime')).overlap


def test_frames_during_a_local_job_are_bridged_once_moved_results_are_measured():
    """scheduler.bridge_target: a frame that arrives while the device computes an earlier one
    gets that frame's result moved by the block field between them (nothing sent, no
    sequence number), handed over by ``bridge_done`` once the device's job is done, after the
    gate measured moved local results agreeing at that distance; at most ``bridge_max`` in a
    row, then the frame waits as before; off (0) it always waits."""
    from fluxshard_edge.skip import move_detections
    from fluxshard_kernels import metrics, motion
    frames = list(data.iter_frames('pets09-s2l1', 12))

    def pipeline(**kw):
        return EdgePipeline(EdgeConfig(codec='raw', backend='onnxruntime', overlap_local='always',
                                       force_strategy='offline', **kw))

    def local(pipe, frame):
        st = pipe.step(frame)
        assert st.local_job is not None and not st.bridged
        st.local_job()
        assert pipe.bridge_done(st) == []  # nothing waited for it
        return st

    pipe = pipeline(bridge_target=0.5, bridge_max=1)
    for f in frames[:5]:  # the gate learns: moved local results against computed ones
        local(pipe, f)
    assert 0.5 <= pipe.bridge.agreement(1) <= 1  # measured: 0.79 on these frames
    job = pipe.step(frames[5])  # the device takes frame 5 ...
    seq, n = pipe.seq, pipe.frames
    bridged = pipe.step(frames[6], device_busy_s=0.03)  # ... and frame 6 arrives meanwhile
    assert bridged.bridged and not bridged.deferred and not bridged.sends
    assert bridged.decision.strategy == 'bridge' and bridged.local_job is None
    assert bridged.local_result is None and bridged.skip_token  # waits for frame 5's result
    assert (pipe.seq, pipe.frames) == (seq, n + 1)
    # bridge_max 1: the next frame while still busy waits for the device as before
    assert pipe.step(frames[7], device_busy_s=0.01).deferred
    job.local_job()
    [(token, moved)] = pipe.bridge_done(job)
    assert token == bridged.skip_token
    field = motion.estimate_motion(frames[6], frames[5], 16, pipe._prev_mv_local)
    want = move_detections(job.local_result, field.mv, BlockGrid(*frames[6].shape[:2], 16))
    assert np.array_equal(moved.boxes, want.boxes) and len(moved) == len(job.local_result)
    assert metrics.agreement(moved, job.local_result, 0.5) > 0.8  # a static camera
    # once the device's result is in, a frame bridged onto it gets its result at once
    pipe.bridge.run = 0
    now = pipe.step(frames[7], device_busy_s=0.01)
    assert now.bridged and now.local_result is not None and now.skip_token == 0
    for target in (0.0, 0.99):  # off, or more agreement than measured: it waits
        off = pipeline(bridge_target=target)
        for f in frames[:5]:
            local(off, f)
        off.step(frames[5])
        assert off.step(frames[6], device_busy_s=0.03).deferred
    with pytest.raises(ValueError, match='bridge_target'):
        EdgeConfig(bridge_target=1.5)
