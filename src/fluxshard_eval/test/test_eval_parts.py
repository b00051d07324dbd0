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
    assert outage and all(p['computed_by'] in ('edge', 'cache') for p in outage), outage
    assert max(p['latency'] for p in outage) < 0.5
    video = [p for p in runs['video-offload-crf23']['per_frame']
             if 1.1 <= p['arrival'] <= 2.8]
    assert all(p['latency'] > 0.5 or p['latency'] != p['latency'] for p in video)
