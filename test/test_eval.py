"""Rosbag replay evaluation: bags from real footage, a small `fluxshard-eval` run whose numbers
must be consistent, and a live replay of a bag through the real nodes over DDS."""

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from fluxshard_eval import bag
from fluxshard_kernels import data

ROOT = Path(__file__).resolve().parent.parent


def test_bags_round_trip_both_storages_with_h264(tmp_path):
    r = bag.write_bag('davis-parkour', str(tmp_path / 'p'), limit=5, h264=True)
    assert r['frames'] == 5 and r['rate_hz'] == 24.0
    src = list(data.iter_frames('davis-parkour', 5))
    with bag.BagSource(str(tmp_path / 'p')) as b:
        assert b.topic == '/camera/image_raw' and b.h264_topic == '/camera/image_raw/h264'
        assert abs(b.rate_hz() - 24.0) < 1e-6
        got = [f for _, f in b.frames()]
        assert all(np.array_equal(a, c) for a, c in zip(got, src)) and len(got) == 5
        msgs = list(b.messages(b.h264_topic))
        assert len(msgs) == 5 and msgs[0][1].format == 'h264'
        assert [t for t, _ in msgs] == [t for t, _ in b.messages()]  # same stamps
    from fluxshard_kernels.codec_mv import H264Decoder
    dec = H264Decoder()
    frames = [f for _, m in msgs for f in dec.decode(bytes(m.data))]
    assert len(frames) == 5 and frames[-1][1] is not None  # P-frames carry codec MVs
    bag.write_bag('pets09-s2l1', str(tmp_path / 's.db3'), limit=3, storage='sqlite3',
                  rate=10.0, topic='/robot/cam')
    with bag.BagSource(str(tmp_path / 's.db3')) as b:
        assert b.topic == '/robot/cam' and b.count == 3
        assert abs(b.rate_hz() - 10.0) < 1e-6


def test_bag_errors_name_the_problem(tmp_path):
    bag.write_bag('davis-parkour', str(tmp_path / 'p'), limit=2)
    with pytest.raises(bag.BagError, match='exists'):
        bag.write_bag('davis-parkour', str(tmp_path / 'p'), limit=2)
    with pytest.raises(bag.BagError, match="'/nope' not in .* /camera/image_raw"):
        bag.BagSource(str(tmp_path / 'p'), '/nope')
    with pytest.raises(bag.BagError, match='neither a rosbag2 folder'):
        bag.BagSource(str(tmp_path))
    assert bag.main(['info', str(tmp_path)]) == 2


IMAGE_MSGDEF = """std_msgs/Header header
uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""


def _foreign_mcap(path, frames, topic='/front_camera/image_raw', rate=10.0):
    """An MCAP file as Foxglove's tools write it: `mcap-ros2-support`'s writer, no rosbag2
    metadata, plus a non-image topic beside the camera."""
    from mcap_ros2.writer import Writer
    with open(path, 'wb') as f:
        w = Writer(f)
        schema = w.register_msgdef('sensor_msgs/msg/Image', IMAGE_MSGDEF)
        other = w.register_msgdef('std_msgs/msg/String', 'string data\n')
        t0 = 1_700_000_000 * 10**9
        for i, fr in enumerate(frames):
            t = t0 + int(i * 1e9 / rate)
            h, wd = fr.shape[:2]
            w.write_message(topic, schema, {
                'header': {'stamp': {'sec': t // 10**9, 'nanosec': t % 10**9},
                           'frame_id': 'front_camera'},
                'height': h, 'width': wd, 'encoding': 'bgr8', 'is_bigendian': 0,
                'step': wd * 3, 'data': fr.tobytes()}, log_time=t, publish_time=t)
            w.write_message('/note', other, {'data': f'frame {i}'}, log_time=t)
        w.finish()


def test_a_bare_mcap_file_from_another_tool_replays(tmp_path):
    """A .mcap file written by mcap-ros2-support (no metadata.yaml), and the folder holding it,
    read as a bag: `fluxshard-bag info`, the frames, and a `fluxshard-eval --bags` run."""
    src = list(data.iter_frames('davis-parkour', 4))
    f = tmp_path / 'cam' / 'front.mcap'
    f.parent.mkdir()
    _foreign_mcap(f, src)
    for path in (f, f.parent):
        assert bag.is_bag(str(path))
        with bag.BagSource(str(path)) as b:
            assert b.topic == '/front_camera/image_raw' and b.count == 4
            assert abs(b.rate_hz() - 10.0) < 1e-6
            got = [fr for _, fr in b.frames()]
            assert len(got) == 4 and all(np.array_equal(a, c) for a, c in zip(got, src))
    assert bag.main(['info', str(f)]) == 0
    from fluxshard_eval import cli
    out = tmp_path / 'eval'
    rc = cli.main(['--bags', str(f), '--frames', '4', '--links', 'medium',
                   '--methods', 'full-offload-png', '--ablations', '--edges', '--out', str(out),
                   '--no-progress'])
    assert rc == 0
    res = json.loads((out / 'results.json').read_text())
    assert [(r['sequence'], r['frames'], r['retention']) for r in res['runs']] == \
        [('front', 4, 1.0)]
    # a damaged file is named, not skipped
    (tmp_path / 'bad.mcap').write_bytes(f.read_bytes()[:200])
    with pytest.raises(bag.BagError, match='bad.mcap'):
        with bag.BagSource(str(tmp_path / 'bad.mcap')) as b:
            list(b.frames())


def test_small_evaluation_numbers_are_consistent(tmp_path):
    """Two methods (plus a lossless Full Offload check) on a few frames of a real clip."""
    from fluxshard_eval import cli
    out = tmp_path / 'eval'
    rc = cli.main(['--sequences', 'davis-parkour', '--frames', '8', '--links', 'medium',
                   '--methods', 'fluxshard', 'full-offload', 'full-offload-png',
                   'video-offload-crf23', 'video-offload-crf28',
                   '--ablations', '--edges', '2', '--scal-source', 'davis-parkour',
                   '--scal-frames', '6', '--scal-methods', 'fluxshard', '--out', str(out),
                   '--no-progress'])
    assert rc == 0
    res = json.loads((out / 'results.json').read_text())
    runs = {(r['method'], r['edges'], r['link'].split(',')[0]): r for r in res['runs']}
    for r in res['runs']:
        # every byte the edges counted went over the link and was received by the server
        assert r['bytes_counted'] == r['bytes_on_link'] == r['bytes_received'] > 0, r['method']
        assert r['processed'] + r['dropped_edge_busy'] == r['frames'] * r['edges']
    png = runs[('full-offload-png', 1, 'medium')]
    assert png['retention'] == 1.0  # the same model on the same pixels: identical results
    jpg = runs[('full-offload', 1, 'medium')]
    assert jpg['retention_confident'] == 1.0 and jpg['retention'] >= 0.9
    fx = runs[('fluxshard', 1, 'medium')]
    assert fx['bytes_on_link'] < 0.6 * jpg['bytes_on_link']
    assert fx['hit_ratio'] > 0.5 and fx['retention_confident'] >= 0.9
    assert not np.isnan(fx['latency_ms_mean']) and fx['latency_ms_mean'] > 0
    assert ('fluxshard', 2, 'medium') in runs
    v23 = runs[('video-offload-crf23', 1, 'medium')]
    v28 = runs[('video-offload-crf28', 1, 'medium')]
    # an H.264 stream: far fewer bytes than JPEG frames, fewer still at a higher CRF
    assert v28['bytes_on_link'] < v23['bytes_on_link'] < 0.5 * jpg['bytes_on_link']
    assert v23['retention'] >= 0.8 and v23['computed_by'] == {'server': v23['processed']}
    pts = {p['method']: p for p in res['frontier']['points']}
    assert set(pts) >= {'fluxshard', 'full-offload', 'video-offload-crf23'}
    assert pts['video-offload-crf23']['kb_per_frame'] == pytest.approx(
        v23['bytes_on_link'] / v23['frames'] / 1e3)
    text = (out / 'report.md').read_text()
    assert 'paper Table 2' in text and 'Scalability' in text and 'Targets' in text
    assert 'Video Offload (H.264 CRF 23)' in text and 'Bytes against accuracy' in text
    assert 'FluxShard bytes vs Video Offload at the same retention' in text
    for f in ('latency.png', 'bandwidth.png', 'hit_ratio.png', 'scalability.png',
              'frontier.png'):
        assert (out / f).stat().st_size > 1000, f


def test_live_replay_through_the_nodes(tmp_path, monkeypatch):
    """A bag through the real nodes - FluxShard, Video Offload (plain and ROI-coded) and Full
    Offload - across a veth pair between network namespaces shaped by tc tbf where this
    machine allows it (root, iproute2), else with the link shaped in the edge transport."""
    from fluxshard_eval import live, netns
    from fluxshard_eval.sim import LinkSpec
    mode = 'transport' if netns.available() else 'netns'
    monkeypatch.setenv('ROS_DOMAIN_ID', str(40 + os.getpid() % 20))
    b = tmp_path / 'clip'
    bag.write_bag('davis-blackswan', str(b), limit=5, rate=2.0)
    link = LinkSpec.parse('low', delay_ms=5.0)
    res = live.run(str(b), link, 5, str(tmp_path), 150, mode=mode)
    for name in ('fluxshard', 'video-offload-crf23', 'video-offload-roi-crf23', 'full-offload'):
        assert 'error' not in res[name], res[name].get('error')
        r = res[name]['robots']['robot1']
        assert r['published'] == 5 and r['unaccounted'] == 0 and r['results'] >= 3, r
        # what the edge counted as sent is what the server counted as received
        assert r['bytes_sent'] == r['server_bytes_in'] > 0, r
        # every result is mapped back to its source frame and scored against dense on it
        assert sum(r['scored_by'].values()) == r['results'], r['scored_by']
        assert all(0 <= v <= 1 for v in r['retention_by'].values()), r['retention_by']
    fo = res['full-offload']['robots']['robot1']
    assert fo['results_local'] == 0 and fo['key_batches'] == fo['batches_sent']
    vo = res['video-offload-crf23']['robots']['robot1']
    # one IDR then P units: a fraction of the JPEG frames' bytes
    assert vo['results_local'] == 0 and vo['key_batches'] == 1
    assert vo['bytes_sent'] < 0.5 * fo['bytes_sent'], (vo, fo)
    # the same stream with the ROI map of the results that came back: never more bytes
    roi = res['video-offload-roi-crf23']['robots']['robot1']
    assert roi['key_batches'] == 1 and roi['bytes_sent'] <= vo['bytes_sent'], (roi, vo)
    text = live.table(res, link)
    assert '| fluxshard |' in text and 'retention: server / edge' in text
    if mode == 'netns':
        assert 'network namespaces' in text
        left = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
        for name in res:  # this run's namespaces were torn down
            assert res[name]['link_mode'] == 'netns veth tc tbf 25 Mbit/s'
            ns = res[name]['netns']
            assert ns and f'{ns}_edge' not in left and f'{ns}_srv' not in left, (ns, left)


def test_eval_command_is_installed():
    exe = Path(sys.executable).parent / 'fluxshard-eval'
    out = subprocess.run(['fluxshard-eval', '--help'] if not exe.exists() else
                         [str(exe), '--help'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and 'rosbag replay' in out.stdout


def test_the_namespace_link_follows_a_capacity_trace():
    """tc re-shapes the veth link every 100 ms to the trace's rate (both directions), an
    outage held at the smallest rate tc takes."""
    import time
    from fluxshard_edge.link import BandwidthTrace
    from fluxshard_eval import netns
    if netns.available():
        pytest.skip(f'no network namespaces here: {netns.available()}')
    name = f'ft{os.getpid() % 100000}'
    trace = BandwidthTrace([0.0, 0.3, 0.6], [4.0, 0.0, 2.0])
    netns.up(name, trace.mean())
    try:
        shaper = netns.TraceShaper(name, trace)
        end = time.monotonic() + 10.0
        while len(shaper.log) < 9 and time.monotonic() < end:
            time.sleep(0.02)
        shaper.stop()
        assert [round(m, 3) for _, m in shaper.log[:9]] == [4.0] * 3 + [0.0] * 3 + [2.0] * 3
        for ns, dev in netns._devs(name):
            q = subprocess.run(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'show', 'dev', dev],
                               capture_output=True, text=True).stdout
            assert 'tbf' in q and any(r in q for r in ('4Mbit', '8Kbit', '2Mbit')), q
    finally:
        netns.down(name)
