"""The edge runtime without ROS: frames in, the link protocol (ACKs, digests, resync budget,
server loss and return) and live reconfiguration, by plain method calls."""

import numpy as np

from fluxshard_edge.pipeline import EdgeConfig
from fluxshard_edge.runtime import EdgeRuntime, Frame
from fluxshard_kernels import data


def _frames(n):
    return [Frame(i, None, f) for i, f in enumerate(data.iter_frames('davis-parkour', n), 1)]


def test_acks_digests_and_a_live_tau_change():
    rt = EdgeRuntime(EdgeConfig(edge_id='robot1', local_inference=False, tau=255.0,
                                force_strategy='cloud'), ack_timeout_s=100.0)
    frames = _frames(3)
    first = rt.process(frames[0], now=0.0).step
    assert first.key and first.sends
    assert rt.on_ack(first.seq, first.digest, 0.0, 0.1) == 'ok'
    quiet = rt.process(frames[1], now=0.2).step
    assert quiet.decision.n_cloud == 0  # tau 255: nothing misses
    rt.reconfigure(tau=0.0)  # live parameter, from the next frame
    busy = rt.process(frames[2], now=0.3).step
    assert busy.decision.n_cloud == busy.update.grid.count  # tau 0: every block misses
    assert rt.on_ack(busy.seq, b'\x00' * 16, 0.0, 0.4) == 'mismatch'  # a key batch follows
    assert rt.counters['digest_mismatch'] == 1
    assert rt.process(frames[0], now=0.5).step.key


def test_resync_requests_are_budgeted():
    rt = EdgeRuntime(EdgeConfig(edge_id='robot1', local_inference=False),
                     resync_rate_hz=0.5, resync_burst=2)
    rt.process(_frames(1)[0], now=0.0)
    answers = [rt.on_resync_request(1, 'test', 1.0) for _ in range(5)]
    assert answers.count('limited') == 3 and rt.counters['resync_limited'] == 3


def test_frames_offloaded_to_a_server_that_went_away_are_computed_locally():
    rt = EdgeRuntime(EdgeConfig(edge_id='robot1', force_strategy='cloud'), ack_timeout_s=1.0)
    frames = _frames(3)
    a = rt.process(frames[0], now=0.0)
    rt.on_ack(a.step.seq, a.step.digest, 0.0, 0.1)
    rt.process(frames[1], now=0.2)  # offloaded, never answered
    out = rt.process(frames[2], now=5.0)
    assert out.link == 'lost'
    assert [f.index for f, _ in out.recovered] == [2] and len(out.recovered[0][1]) > 0
    assert rt.counters['recovered_locally'] == 1
    assert out.step.local_result is not None  # and the new frame is served locally
    np.testing.assert_equal(rt.server.available, False)


def test_latency_percentiles_cover_the_last_ten_seconds():
    """The diagnostics' latency.*: nearest-rank p50 / p90 in ms of the window, the late ones
    past the deadline, an unset stamp or clock records nothing, a negative latency (clocks
    that disagree) is only counted."""
    from builtin_interfaces.msg import Time
    from fluxshard_msgs_py.node import LatencyWindow
    w = LatencyWindow(window=10.0)
    assert w.values('lat') == {'lat_count': 0}
    for i in range(10):  # 10, 20, ..., 100 ms at t = 0..9 s
        w.add((i + 1) / 100, now=float(i))
    assert w.values('lat', 55.0, now=9.5) == {'lat_count': 10, 'lat_p50_ms': 50.0,
                                              'lat_p90_ms': 90.0, 'lat_late': 5}
    assert w.values('lat', now=14.5)['lat_count'] == 5  # those before 4.5 s are gone
    w.add(-0.2, now=14.6)
    assert w.values('lat', now=14.7)['lat_negative'] == 1
    # since start: every latency (the newest RUN_SAMPLES), whatever the window dropped
    run = w.values('lat', now=100.0, run=True)
    assert run['lat_count'] == 0 and run['lat_run_count'] == 10
    assert (run['lat_run_p50_ms'], run['lat_run_p90_ms']) == (50.0, 90.0)

    from rclpy.clock import ROSClock
    from rclpy.time import Time as RosTime

    def sim_clock(ns):  # a node's clock under use_sim_time, /clock at ns
        c = ROSClock()
        c._set_ros_time_is_active(True)
        c.set_ros_time_override(RosTime(nanoseconds=ns))
        return c
    w = LatencyWindow()
    w.add_stamp(sim_clock(5 * 10**9), Time(sec=4, nanosec=750_000_000))
    w.add_stamp(sim_clock(5 * 10**9), Time())  # an unstamped image
    w.add_stamp(sim_clock(0), Time(sec=4))     # sim time before /clock
    assert w.values('lat')['lat_count'] == 1 and w.values('lat')['lat_p50_ms'] == 250.0


def test_most_results_late_is_a_warning():
    """The edge's diagnostics turn WARN when most of at least 10 results of the window came
    later than scheduler.deadline_ms."""
    from fluxshard_msgs_py.node import late_warning, latency_report, LatencyWindow
    w = LatencyWindow()
    for i in range(9):
        w.add(0.2, now=float(i))
    assert late_warning(w.values('lat', 100.0, now=9.0), 'lat', 100.0) == ''  # too few
    w.add(0.05, now=9.0)
    text = late_warning(w.values('lat', 100.0, now=9.5), 'lat', 100.0)
    assert text.startswith('9 of 10 results') and '100 ms' in text and 'p90 200 ms' in text
    assert late_warning(w.values('lat', 250.0, now=9.5), 'lat', 250.0) == ''  # in time
    assert late_warning(w.values('lat', now=9.5), 'lat', 0.0) == ''  # no deadline
    # what the edge's diagnostics say: values of both windows, the words, WARN
    taken, seen = LatencyWindow(), LatencyWindow()
    taken.add(0.01)
    for _ in range(10):
        seen.add(0.2)  # now (monotonic): inside the window the report reads
    vals, words, warn = latency_report(seen, taken, 100.0)
    assert warn and vals['latency.results_count'] == 10 and vals['latency.input_run_count'] == 1
    assert words.startswith('results p50 200 / p90 200 ms after the image stamp; 10 of 10'), words
    assert latency_report(LatencyWindow(), taken, 100.0)[1:] == ('', False)


def test_diagnostic_levels_follow_the_recent_past():
    from fluxshard_msgs_py.node import RecentCount
    recent = RecentCount(window=10.0, now=0.0)
    assert recent.update(1, now=1.0) == 1      # one transient bad image: WARN now
    assert recent.update(1, now=5.0) == 1
    assert recent.update(1, now=12.0) == 0     # ... and OK again 10 s later
    assert recent.update(4, now=13.0) == 3
