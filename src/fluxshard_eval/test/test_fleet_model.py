"""The fleet model (fluxshard_eval.fleet): its timeline on fixed per-frame demands."""

import math

from fluxshard_eval import fleet as FL


def _clip(name, server_s=0.011, nbytes=15000, n=30, rate=3.0):
    frames = [FL.Demand(i / rate, 'server', 0.005, nbytes, server_s, math.nan)
              for i in range(n)]
    return FL.Clip(name, frames, n / rate, 3 * nbytes)


CLIPS = [_clip('a'), _clip('b', 0.009, 8000)]


def test_load_aware_assignment_beats_round_robin_with_a_slow_server():
    speeds = [1.0, 1.0, 1.0, 0.5]
    st = FL.summarise(FL.simulate(CLIPS, 64, speeds, 'static', 20.0), 64)
    la = FL.summarise(FL.simulate(CLIPS, 64, speeds, 'load-aware', 20.0), 64)
    assert la['latency_ms_p90'] < 0.8 * st['latency_ms_p90'], (la, st)
    assert la['served_fraction'] >= st['served_fraction']


def test_a_lost_servers_robots_are_served_again_and_every_frame_is_counted():
    run = FL.simulate(CLIPS, 32, [1.0, 1.0, 1.0], 'load-aware', 20.0, kill=0, kill_at=10.0)
    assert run['victims']
    fo = FL.failover(run, run['victims'], 10.0)
    assert fo['back_within_s'] <= 2.0 and fo['ratio_after_2s'] <= 1.5, fo
    # every camera frame of every robot has a record: a result or a reason
    per_robot = {}
    for rid, t, lat, why in run['records']:
        per_robot[rid] = per_robot.get(rid, 0) + 1
        assert not math.isnan(lat) or why in ('superseded', 'lost_with_server', 'unfinished',
                                              'dropped_edge_busy', 'lost')
    assert len(per_robot) == 32 and min(per_robot.values()) >= 3.0 * 20 - 3
    static = FL.simulate(CLIPS, 32, [1.0, 1.0, 1.0], 'static', 20.0, kill=0, kill_at=10.0)
    fs = FL.failover(static, static['victims'], 10.0)
    assert fs['p90_after_2s_ms'] > fo['p90_after_2s_ms']  # static: dense on the robots
