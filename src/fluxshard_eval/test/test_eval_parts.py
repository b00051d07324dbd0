"""Pieces of the evaluation harness: the modelled link, bandwidth traces, the split model of the
SPINN/COACH-style baselines and its feature messages."""

import math

import numpy as np
import pytest
import torch

from fluxshard_edge.link import BandwidthTrace
from fluxshard_kernels import data
from fluxshard_kernels.yolo import model as Y
from fluxshard_kernels.yolo.processing import letterbox
from fluxshard_eval import methods as M
from fluxshard_eval import sim


@pytest.fixture(scope='module')
def model():
    return Y.load_onnx(str(data.model_path('detect')))


def test_link_is_fifo_at_its_rate_plus_delay():
    link = sim.Link(sim.LinkSpec.parse('25', delay_ms=10.0))
    wire, arrive, ok = link.transmit(0.0, 25_000_000 // 8)  # 1 s of traffic at 25 Mbit/s
    assert ok and math.isclose(wire, 1.0) and math.isclose(arrive, 1.010)
    wire2, _, _ = link.transmit(0.5, 125_000)  # queued behind the first message
    assert math.isclose(wire2, 1.04)
    assert link.bytes == 25_000_000 // 8 + 125_000 and link.messages == 2
    lossy = sim.Link(sim.LinkSpec.parse('high', loss=0.5), seed=1)
    got = [lossy.transmit(0.0, 100)[2] for _ in range(400)]
    assert 150 < sum(got) < 250 and lossy.lost == 400 - sum(got)


def test_background_work_uses_idle_time_and_yields_within_one_layer():
    dev = sim.Resource(preempt_s=0.001)
    assert dev.run(0.0, 0.010) == pytest.approx(0.010)
    dev.background(0.010, 0.050)  # a refresh queued after the first job
    # a critical job at 20 ms finds the refresh running: it waits one layer, not 40 ms
    assert dev.run(0.020, 0.010) == pytest.approx(0.031)
    assert dev.backlog == pytest.approx(0.040)  # 10 ms of it ran in the idle gap
    dev.run(1.0, 0.010)  # plenty of idle time: the refresh finished before this job
    assert dev.backlog == 0.0
    assert dev.free_at == pytest.approx(1.010)  # no preemption wait, nothing was running
    assert dev.busy == pytest.approx(0.080)
    # a saturated device never runs its background work: the backlog shows it
    busy = sim.Resource()
    for i in range(20):
        t = busy.run(i * 0.010, 0.010)
        busy.background(t, 0.012)
    assert busy.backlog == pytest.approx(20 * 0.012)


def test_rate_trace_is_integrated_over_each_transfer(tmp_path):
    f = tmp_path / 'trace.csv'
    f.write_text('# seconds,mbps\n0,130\n2,25\n4,56\n')
    tr = BandwidthTrace.load(str(f))
    assert [tr.at(t) for t in (0.5, 2.5, 4.5)] == pytest.approx([130.0, 25.0, 56.0])
    assert tr.at(6.5) == pytest.approx(130.0)  # looped, period 6 s
    spec = sim.LinkSpec.parse(f'trace:{f}')
    assert spec.name == 'trace'
    # 1 MB from 1.99 s: 10 ms at 130 Mbit/s, the rest at 25 Mbit/s (not all at 130)
    done = sim.Link(spec).transmit(1.99, 1_000_000)[0]
    assert done == pytest.approx(2.0 + (1e6 - 0.01 * 130e6 / 8) * 8 / 25e6)
    # a transfer that starts in the slow stretch speeds up when it ends
    done = sim.Link(spec).transmit(3.9, 1_000_000)[0]
    assert done == pytest.approx(4.0 + (1e6 - 0.1 * 25e6 / 8) * 8 / 56e6)
    # FIFO: the second message leaves after the first
    link = sim.Link(spec)
    a, b = link.transmit(0.0, 500_000)[0], link.transmit(0.0, 500_000)[0]
    assert b == pytest.approx(2 * a)


def test_mahimahi_traces_and_outages(tmp_path):
    from fluxshard_kernels import data
    root = data.data_root() / 'traces'
    # the shared traces' mean rates (their MANIFEST: 13.3 / 5.95 / 1.91 Mbit/s)
    for name, mean in (('TMobile-LTE-short.up', 13.3), ('Verizon-LTE-short.up', 5.95),
                       ('ATT-LTE-driving-2016.up', 1.91)):
        tr = BandwidthTrace.load(str(root / name))
        assert tr.mean() == pytest.approx(mean, rel=0.02), name
        spec = sim.LinkSpec.parse(f'trace:{root / name}', 50.0)
        assert spec.name == name[:-3] and spec.delay_ms == 50.0
    # packets at 0 ms (two), then nothing until 1000 ms: an outage of a second
    f = tmp_path / 'outage.up'
    f.write_text('0\n0\n1000\n1000\n1000\n2000\n')
    tr = BandwidthTrace.load(str(f))
    assert tr.period == pytest.approx(2.0)
    # the loop's last timestamp is the next loop's first: ms 0 carries three packets
    assert tr.finish(0.0, 4500) == pytest.approx(0.001)
    assert 1.0 <= tr.finish(0.0005, 3000) <= 1.001  # waits out the outage
    assert tr.at(0.5) == 0.0
    assert tr.finish(1.5, 4500) == pytest.approx(2.001)  # the loop starts again at 2 s
    # a single column of non-decreasing integers with repeats reads as mahimahi too
    g = tmp_path / 'plain'
    g.write_text('5\n5\n9\n')
    assert BandwidthTrace.load(str(g)).total == 3 * 1500


@pytest.mark.parametrize('name, text, match', [
    ('bad.csv', '', 'empty'),
    ('bad.csv', '# nothing\n', 'empty'),
    ('bad.csv', '1,2,3\n', ':1: expected'),
    ('bad.csv', '0,5\nfast\n', ':2: expected numbers'),
    ('bad.csv', '0,0\n1,0\n', 'not all 0'),
    ('bad.csv', '0,5\n0,6\n', 'increase'),
    ('bad.up', '5\n3\n', ':2: mahimahi timestamps are non-decreasing'),
    ('bad.up', '1.5\n', 'integer milliseconds'),
    ('bad.up', '0,5\n', 'one timestamp'),
])
def test_bad_traces_say_what_is_wrong(tmp_path, name, text, match):
    """Rate traces and mahimahi traces (*.up): a clear error naming the file and line."""
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        BandwidthTrace.load(str(f))
    with pytest.raises(ValueError, match='link'):
        sim.LinkSpec.parse('fast')


def test_sparse_time_never_exceeds_dense():
    p = sim.PAPER.edge
    assert p.sparse_s(0) == 0.0
    assert math.isclose(p.sparse_s(100), 3.6e-4 + 0.0213 + 0.0429)
    assert p.sparse_s(5000) == 0.209


def test_methods_take_their_device_times_from_the_profile(model):
    """A measured profile replaces Table 1 in every method: the edge's scheduler is seeded
    from it and dense-only servers are charged its dense time."""
    from fluxshard_kernels.profile import DeviceProfile, RoleProfile
    prof = DeviceProfile('measured', 'test machine', RoleProfile(1e-7, 2e-4, 0.25, 0.05, 0.15),
                         RoleProfile(0.0, 1e-4, 0.2, 0.04, 0.12), edge_overhead_s=0.01)
    link = sim.LinkSpec.parse('medium')
    fx = M.make('fluxshard', model, 'robot1', link, prof)
    s = fx.pipe.scheduler
    assert (s.edge.a, s.edge.b, s.edge.c) == prof.edge.abc
    assert (s.cloud.a, s.cloud.b, s.cloud.c) == prof.server.abc
    nms = M.make('no-ms-comp', model, 'robot1', link, prof).pipe.scheduler
    assert (nms.edge.c, nms.cloud.c) == (0.05, 0.04)
    assert prof.edge.sparse_s(10) == 0.15  # capped by the engine's dense pass
    fo = M.make('full-offload', model, 'robot1', link, prof)
    assert fo.prof is prof
    frame = next(data.iter_frames('davis-parkour', limit=1))
    w = fo.edge(frame, 0)
    assert w.edge_s == 0.01
    assert fo.server(w, [True] * len(w.messages)).server_s == 0.04
    assert M.make('fluxshard', model, 'robot1', link).prof is sim.PAPER


def test_the_servers_block_matching_is_a_cpu_stage_not_gpu_time(model):
    """FluxShard's server matches its own proxy states (payload.send_motion false) in its
    batch callback, before the job reaches the inference thread, as server_node does: the
    harness charges that as ``receive_s`` (a CPU stage shared by the edges) and the GPU
    only with the sparse pass."""
    from fluxshard_eval import harness
    link = sim.LinkSpec.parse('medium')
    fx = M.make('fluxshard', model, 'robot1', link)
    frames = list(data.iter_frames('davis-parkour', limit=3))
    works = []
    for i, f in enumerate(frames):
        fx.now = i / 24.0
        w = fx.edge(f, i)
        works.append(fx.server(w, [True] * len(w.messages)))
    matched = [s for s in works[1:] if s.result is not None]
    assert matched and all(s.receive_s == sim.PAPER.edge_overhead_s / 2 for s in matched)
    k = fx.srv.em.last_blocks
    assert matched[-1].server_s == sim.PAPER.server.sparse_s(k)
    ref = harness.Reference(model, frames)
    r = harness.replay(lambda e: M.make('fluxshard', model, e, link), frames, 24.0, link, ref)
    assert any(p['extra'].get('receive_s', 0) > 0 for p in r['per_frame'])


def test_split_model_equals_the_whole_model(model):
    img = next(data.iter_frames('davis-parkour', 1))
    x, lb = letterbox(img, 640)
    x = torch.from_numpy(x)
    with torch.no_grad():
        full = model(x)
        for s in (4, 10):
            _, y = model.backbone(x, stop=s)
            _, y = model.backbone(y[s], start=s + 1, y=y)
            assert torch.equal(model.head_outputs(model.neck_head(y)), full)
    fr = M.split_fractions(model)
    assert 0 < fr[4] < fr[10] < 1 and fr[0] == 0 and fr[23] == 1


def test_feature_messages_round_trip(model):
    from std_msgs.msg import UInt8MultiArray
    img = next(data.iter_frames('davis-parkour', 1))
    x, lb = letterbox(img, 640)
    with torch.no_grad():
        _, y = model.backbone(torch.from_numpy(x), stop=10)
    for quant, tol, width in ((False, 2e-2, 2), (True, None, 1)):
        m = M.pack_features(y, 10, lb, quant)
        raw = M.serialize(m)
        back, lb2 = M.unpack_features(M.deserialize(raw, UInt8MultiArray))
        assert lb2 == lb and set(back) == {4, 6, 10}
        n = sum(t.numel() for t in y.values())
        assert len(m.data) >= n * width and len(raw) < n * width * 1.01 + 4096
        for k in y:
            err = (back[k] - y[k]).abs().max().item()
            rng = (y[k].amax(dim=(0, 2, 3)) - y[k].amin(dim=(0, 2, 3))).max().item()
            assert err <= (tol * max(1.0, y[k].abs().max().item()) if tol else rng / 255 * 0.51
                           + 1e-6), (k, quant, err)
    det_full = model.decode(model(torch.from_numpy(x)), lb)
    yq, _ = M.unpack_features(M.deserialize(M.serialize(M.pack_features(y, 10, lb, True)),
                                            UInt8MultiArray))
    with torch.no_grad():
        det_q = model.decode(model.head_outputs(model.neck_head(yq)), lb)
    # quantised transfer keeps the confident detections (the person)
    keep = det_full.scores >= 0.5
    assert keep.any() and np.isin(det_full.class_ids[keep], det_q.class_ids).all()


def test_video_offload_resyncs_with_a_key_frame_after_a_lost_unit(model):
    """The H.264 baseline: P-frames after the first IDR; a unit lost on the link makes the next
    one an IDR (NAL type 5) that the server decodes on its own."""
    from fluxshard_kernels.codec_mv import H264Decoder
    frames = list(data.iter_frames('davis-parkour', 4))
    m = M.make('video-offload-crf28', model, 'robot1', sim.LinkSpec.parse('medium'))

    def idr(raw):
        from sensor_msgs.msg import CompressedImage
        au = bytes(M.deserialize(raw, CompressedImage).data)
        return any(au[i + 3] & 0x1F == 5 for i in range(len(au) - 3)
                   if au[i:i + 3] == b'\x00\x00\x01')
    sent = []
    for i, f in enumerate(frames):
        w = m.edge(f, i)
        sent.append(w.messages[0])
        res = m.server(w, [i != 1])  # the second unit is lost
        assert (res.result is not None) == (i != 1)
    assert [idr(r) for r in sent] == [True, False, True, False]
    # the key frame alone decodes: a fresh decoder starting at it gets a frame
    from sensor_msgs.msg import CompressedImage
    assert H264Decoder().decode(bytes(M.deserialize(sent[2], CompressedImage).data))
    assert m.sent_bytes == sum(map(len, sent)) and m.received_bytes == m.sent_bytes - len(sent[1])
    with pytest.raises(ValueError, match='CRF'):
        M.make('video-offload-crf60', model, 'robot1', sim.LinkSpec.parse('medium'))


def test_the_roi_stream_codes_the_objects_of_the_newest_result_back_at_the_robot(model):
    """video-offload-roi-crfN: the same units as the plain stream until a result reaches the
    robot (one still on its way is not used), then the objects of the newest one keep the
    CRF and the rest is coarser: fewer bytes, its regions at that result's boxes."""
    frames = list(data.iter_frames('davis-blackswan', 6))
    link = sim.LinkSpec.parse('medium')
    plain = M.make('video-offload-crf23', model, 'robot1', link)
    roi = M.make('video-offload-roi-crf23', model, 'robot1', link)
    assert roi.name == 'video-offload-roi-crf23' and roi.roi_qoffset > 0
    sizes, results = {'plain': [], 'roi': []}, {}
    for i, f in enumerate(frames):
        for key, m in (('plain', plain), ('roi', roi)):
            m.now = i / 24
            w = m.edge(f, i)
            sizes[key].append(len(w.messages[0]))
            res = m.server(w, [True])
            m.delivered(i, m.now + 0.06)  # back at the robot after the next frame is taken
            results[key, i] = res.result
        if i < 2:  # frame 0's result reaches the robot only after frame 1 was coded
            assert roi.last_roi is None and sizes['roi'][i] == sizes['plain'][i]
        else:
            boxes = results['roi', i - 2].boxes
            assert len(boxes) and len(roi.last_roi.regions) == len(boxes)
            x1, y1 = min(boxes[:, 0]), min(boxes[:, 1])
            m = roi.ROI_MARGIN
            assert min(r[0] for r in roi.last_roi.regions) == pytest.approx(x1 - m, abs=1e-3)
            assert min(r[1] for r in roi.last_roi.regions) == pytest.approx(y1 - m, abs=1e-3)
            assert roi.last_roi.background == roi.roi_qoffset
    assert sum(sizes['roi'][2:]) < 0.85 * sum(sizes['plain'][2:]), sizes
    # the swan is still found on the coarser background
    assert all(len(results['roi', i]) for i in range(len(frames)))
    with pytest.raises(ValueError, match='ROI offset'):
        M.VideoOffload(model, 'robot1', link, roi_qoffset=1.5)


def test_video_bytes_are_read_off_the_ladder_at_equal_retention():
    from fluxshard_eval import report
    pts = [{'method': 'video-offload-crf18', 'kb_per_frame': 30.0, 'retention': 0.98},
           {'method': 'video-offload-crf23', 'kb_per_frame': 15.0, 'retention': 0.96},
           {'method': 'video-offload-crf28', 'kb_per_frame': 7.5, 'retention': 0.90},
           {'method': 'fluxshard', 'kb_per_frame': 10.0, 'retention': 0.93, 'hit_ratio': 0.8,
            'not_recomputed': 0.8}]
    kb, how = report.video_bytes_at(pts, 0.93)  # half way from CRF 28 to 23 in log bytes
    assert how == 'interpolated' and kb == pytest.approx(math.sqrt(15.0 * 7.5))
    assert report.video_bytes_at(pts, 0.99) == (30.0, "beyond the ladder's best")
    assert report.video_bytes_at(pts, 0.5) == (7.5, "the ladder's cheapest reaches it")
    # equal retention on two rungs: the cheaper one is what the retention costs
    flat = [dict(p, retention=1.0) for p in pts[:3]]
    assert report.video_bytes_at(flat, 1.0) == (7.5, "the ladder's cheapest reaches it")
    assert report.video_bytes_at(pts[3:], 0.9) == (None, None)
    for p in pts:
        p['sequences'] = ['s']
    text = report.frontier_table(pts, 'medium')
    assert '| FluxShard | 10.0 | 93.0 | 80.0 | n/a | 10.6 (interpolated) | 0.94x |' in text
    # the ROI-coded stream is rated against the plain ladder, never a rung of it
    roi = {'method': 'video-offload-roi-crf23', 'kb_per_frame': 7.5, 'retention': 0.96,
           'sequences': ['s']}
    assert report.video_bytes_at(pts + [roi], 0.96) == (15.0, 'interpolated')
    assert '| 15.0 (interpolated) | 0.50x |' in report.frontier_table(pts + [roi], 'medium')


def test_an_outage_loses_no_frame_unaccounted_and_fluxshard_computes_locally(tmp_path):
    """A 6 Mbit/s cellular-like link (mahimahi packets every 2 ms) with a 2 s outage, 50 ms
    each way: every camera frame is served, dropped while the edge was busy, or lost;
    FluxShard serves the outage's frames on the robot, a video stream waits it out; results
    reach the topic in stamp order."""
    from fluxshard_eval import harness
    from fluxshard_server.inference import load_model
    f = tmp_path / 'outage.up'
    f.write_text('\n'.join(str(t) for t in [*range(0, 1000, 2), *range(3000, 6000, 2), 6000]))
    link = sim.LinkSpec.parse(f'trace:{f}', 50.0)
    torch_model = load_model('detect')
    frames = list(data.iter_frames('pets09-s2l1', limit=28))
    ref = harness.Reference(torch_model, frames)
    runs = {m: harness.replay(lambda e, m=m: M.make(m, torch_model, e, link, fps=7.0), frames,
                              7.0, link, ref)
            for m in ('fluxshard', 'video-offload-crf23')}
    for m, r in runs.items():
        assert r['processed'] + r['dropped_edge_busy'] == len(frames), m
        assert r['served'] + r['lost_on_link'] + r['dropped_out_of_order'] == \
            r['processed'], m
        assert r['results_out_of_order'] == 0, m
    outage = [p for p in runs['fluxshard']['per_frame'] if 1.1 <= p['arrival'] <= 2.8]
    # on the robot: computed there, or bridged onto a frame computed there
    assert outage and all(p['computed_by'] in ('edge', 'cache', 'motion')
                          for p in outage), outage
    assert max(p['latency'] for p in outage) < 0.5
    video = [p for p in runs['video-offload-crf23']['per_frame']
             if 1.1 <= p['arrival'] <= 2.8]
    assert all(p['latency'] > 0.5 or p['latency'] != p['latency'] for p in video)


def test_overlapped_local_inference_serves_the_frames_a_busy_edge_skipped():
    """The paper's edge (a Jetson: the GPU infers beside the CPU's front end): while the
    device computes one frame, the next is offloaded when the cloud beats waiting, else it
    waits (newest wins); against the same edge computing inline it serves at least as many
    frames, offloads some while the device is busy, and every frame stays accounted for."""
    from fluxshard_eval import harness
    from fluxshard_server.inference import load_model
    link = sim.LinkSpec.parse('6', 100.0)  # 6 Mbit/s, 100 ms each way: local wins idle
    torch_model = load_model('detect')
    frames = list(data.iter_frames('davis-parkour', limit=16))
    ref = harness.Reference(torch_model, frames)
    runs = {o: harness.replay(lambda e, o=o: M.make('fluxshard', torch_model, e, link,
                                                    overlap=o), frames, 24.0, link, ref)
            for o in (False, True)}
    for o, r in runs.items():
        assert r['processed'] + r['dropped_edge_busy'] == len(frames), o
        assert r['served'] + r['lost_on_link'] + r['dropped_out_of_order'] == \
            r['processed'], o
        assert r['results_out_of_order'] == 0, o
    assert runs[True]['served'] > runs[False]['served']
    by = [p['computed_by'] for p in runs[True]['per_frame']]
    assert 'edge' in by and 'server' in by, by


def test_bridged_frames_are_served_after_the_device_frame_they_move():
    """scheduler.bridge_target on the paper's edge over a slow link: a frame that finds the
    device busy gets the device frame's result moved by the block field, ready when the
    device is done (not before), so the robot serves more frames than without bridges,
    every frame accounted for and results in stamp order."""
    from fluxshard_eval import harness
    from fluxshard_server.inference import load_model
    link = sim.LinkSpec.parse('6', 50.0)
    torch_model = load_model('detect')
    frames = list(data.iter_frames('sam2-bedroom', limit=40))
    ref = harness.Reference(torch_model, frames)

    def replay(target):
        def make(e):
            m = M.make('fluxshard', torch_model, e, link, fps=24.0)
            m.pipe.reconfigure(bridge_target=target)
            return m
        return harness.replay(make, frames, 24.0, link, ref)
    on, off = replay(0.9), replay(0.0)
    by = [p['computed_by'] for p in on['per_frame']]
    by_off = [p['computed_by'] for p in off['per_frame']]
    assert by.count('motion') >= 3 and 'motion' not in by_off, by
    assert on['served'] > off['served']
    for r in (on, off):
        assert r['results_out_of_order'] == 0
        assert r['processed'] + r['dropped_edge_busy'] == len(frames)
        assert r['served'] + r['lost_on_link'] + r['dropped_out_of_order'] == r['processed']
    recs = on['per_frame']
    for i, p in enumerate(recs):  # ready when the device's frame (the last local one) is
        if p['computed_by'] == 'motion' and not p['extra'].get('dropped'):
            dev = next(q for q in reversed(recs[:i]) if q['extra']['strategy'] == 'edge')
            late = dev['latency'] if dev['latency'] == dev['latency'] else \
                dev['extra']['late_latency']  # (published, or dropped as out of order)
            assert p['arrival'] + p['latency'] >= dev['arrival'] + late - 1e-9


def test_skipped_frames_wait_for_their_proxy_result_over_a_long_round_trip():
    """payload.skip_target over a 50 ms each-way link: a frame not sent is served when the
    proxy frame's result reaches the robot (moved by its field), never before it, so no later
    frame takes that result early and no server result is dropped as out of order."""
    from fluxshard_eval import harness
    from fluxshard_server.inference import load_model
    link = sim.LinkSpec.parse('6', 50.0)
    torch_model = load_model('detect')
    frames = list(data.iter_frames('davis-blackswan', limit=20))
    ref = harness.Reference(torch_model, frames)
    r = harness.replay(lambda e: M.FluxShard(torch_model, e, link, skip_target=0.99), frames,
                       24.0, link, ref)
    by = [p['computed_by'] for p in r['per_frame']]
    assert by.count('motion') >= 3 and 'server' in by, by
    # (the first frame's dense pass on the robot may land after the first server result)
    assert not [p['index'] for p in r['per_frame']
                if p['computed_by'] in ('motion', 'server') and p['extra'].get('dropped')]
    assert r['results_out_of_order'] == 0
    assert r['served'] + r['lost_on_link'] + r['dropped_out_of_order'] == r['processed']
    done = [(p['arrival'] + p['latency'], p['index'], p['computed_by'])
            for p in r['per_frame'] if p['latency'] == p['latency']]
    assert [i for _, i, _ in sorted(done)] == sorted(i for _, i, _ in done)


def test_robots_in_the_namespaces_share_memory_with_their_camera_and_the_server_does_not(
        tmp_path):
    """In the live replay's namespaces the camera replay and the edge get the shipped profile
    (shared memory between them, UDP to the server), with the discovery servers when there
    are some; the server keeps the UDP-only environment, so edge <-> server crosses the
    shaped link. Without namespaces nothing changes."""
    import xml.etree.ElementTree as ET
    from fluxshard_eval import netns, runner
    from fluxshard_msgs_py import dds
    env = dict(PATH='/usr/bin', **netns.dds_env())
    assert runner._robot_env(env, '', {}, str(tmp_path)) is env

    def transports(path):
        return {t.text for t in ET.parse(path).getroot().iter('{http://www.eprosima.com}type')}
    assert transports(env['FASTDDS_DEFAULT_PROFILES_FILE']) == {'UDPv4'}
    robot = runner._robot_env(env, 'fs1', {}, str(tmp_path))
    assert 'FASTDDS_BUILTIN_TRANSPORTS' not in robot and robot['PATH'] == '/usr/bin'
    assert robot['FASTDDS_DEFAULT_PROFILES_FILE'] == dds.profile_path('default')
    assert transports(robot['FASTDDS_DEFAULT_PROFILES_FILE']) == {'SHM', 'UDPv4'}
    found = runner._robot_env(env, 'fs1', {'servers': ['10.0.0.1:11811']}, str(tmp_path))
    text = open(found['FASTDDS_DEFAULT_PROFILES_FILE']).read()
    assert '10.0.0.1' in text and 'CLIENT' in text
    assert transports(found['FASTDDS_DEFAULT_PROFILES_FILE']) == {'SHM', 'UDPv4'}
    assert env['FASTDDS_BUILTIN_TRANSPORTS'] == 'UDPv4'  # the server's, untouched


def test_cellular_targets_count_results_equally_old_as_equal():
    """Result ages are whole frame intervals summed in floating point: equal ages whose float
    sums differ in the last bit meet a <= 1.0x target; one interval more does not."""
    from fluxshard_eval import cellular

    def run(method, age):
        return dict(method=method, latency_ms_mean=100.0, latency_ms_p90=110.0,
                    age_ms_p90=age, age_ms_p90_any_time=age, served=60, retention=0.95,
                    sequence='s', trace='t', profile='paper', robots=1, static=False,
                    frames=60, processed=60, dropped_edge_busy=0, lost_on_link=0,
                    dropped_out_of_order=0, results_out_of_order=0)
    # four intervals of a 24 Hz camera in two runs of the saved cellular.json
    fx, stream = 166.6666667118646, 166.66666671186448
    assert fx / stream > 1.0
    met = cellular.targets({'runs': [run('fluxshard', fx), run('video-offload-crf28', stream)]})
    assert 'age p90 1.00x (<= 1.0x: met' in met, met
    late = cellular.targets({'runs': [run('fluxshard', fx * 5 / 4),
                                      run('video-offload-crf28', stream)]})
    assert 'age p90 1.25x (<= 1.0x: not met' in late, late


def test_the_cellular_comparator_is_the_fastest_alternative_that_keeps_the_retention():
    """The fastest Video Offload rung (ROI-coded ones where run) or Edge-only of the same clip,
    trace, profile and robots whose retention is at least FluxShard's minus 2 points."""
    from fluxshard_eval import cellular

    def run(method, mean, ret, **kw):
        return dict(dict(method=method, latency_ms_mean=mean, retention=ret, sequence='s',
                         trace='t', profile='paper', robots=1), **kw)
    fx = run('fluxshard', 50.0, 0.95)
    runs = [fx, run('video-offload-crf28', 80.0, 0.90),   # faster, but 5 points less
            run('video-offload-crf23', 120.0, 0.94), run('edge-only', 150.0, 1.0),
            run('video-offload-crf18', 90.0, 0.99, trace='other')]  # another trace
    assert cellular.comparator(runs, fx)['method'] == 'video-offload-crf23'
    runs.append(run('video-offload-roi-crf23', 100.0, 0.96))
    assert cellular.comparator(runs, fx)['method'] == 'video-offload-roi-crf23'
    assert cellular.comparator([fx, run('edge-only', 90.0, 0.5)], fx) is None
    assert 'video-offload-roi-crf23' not in cellular.METHODS  # run only with --roi-streams
    assert cellular._args(['--roi-streams']).roi_streams
