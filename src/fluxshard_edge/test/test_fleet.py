"""Server choice of a robot in a fleet (fluxshard_edge.fleet): load-aware, spread, stable."""

import math

from fluxshard_msgs.msg import ServerStatus
import pytest

from fluxshard_edge import fleet

ROBOTS = [f'robot{i + 1}' for i in range(8)]


def ann(sid, serving=(), infer_ms=50.0, accepting=True, t=0.0, edges=ROBOTS, task='detect'):
    return fleet.Announcement(sid, task, tuple(edges), tuple(serving), 0, infer_ms, 0.0,
                              accepting, t)


def fleet_of(robots, announcements, now=0.0, **kw):
    out = {}
    for r in robots:
        ch = fleet.Chooser(r, 'detect', **kw)
        for a in announcements:
            ch.observe(a)
        out[r] = ch
    return out


def test_least_loaded_server_is_chosen():
    ch = fleet.Chooser('robot1', 'detect')
    ch.observe(ann('a', serving=['robot2', 'robot3'], infer_ms=40))
    ch.observe(ann('b', serving=['robot4'], infer_ms=40))
    ch.observe(ann('c', serving=[], infer_ms=200))  # idle but slow: 200 > 2 x 40
    assert ch.choose(0.0)[0] == 'b'


def test_robots_starting_together_spread_and_rebalancing_evens_them_out():
    servers = [ann('a'), ann('b')]
    choosers = fleet_of(ROBOTS, servers)
    first = {r: ch.choose(0.0)[0] for r, ch in choosers.items()}
    assert set(first.values()) <= {'a', 'b'}
    # the servers then announce who they serve; after the hold time robots rebalance
    for step in range(3):
        t = 10.0 + 10 * step
        now = [ann(s, serving=[r for r, c in choosers.items() if c.current == s], t=t)
               for s in ('a', 'b')]
        for ch in choosers.values():
            for a in now:
                ch.observe(a)
            ch.choose(t)
    split = sorted(sum(c.current == s for c in choosers.values()) for s in ('a', 'b'))
    assert split == [4, 4]


@pytest.mark.parametrize('before', [(8, 0), (7, 1), (6, 2), (5, 3)])
def test_exactly_the_needed_robots_move_even_on_stale_announcements(before):
    on_a = ROBOTS[:before[0]]
    choosers = fleet_of(ROBOTS, [ann('a', serving=on_a), ann('b', serving=ROBOTS[before[0]:])])
    for r, ch in choosers.items():
        ch.current, ch.since = ('a' if r in on_a else 'b'), -100.0
    moved = [r for r, ch in choosers.items() if r in on_a and ch.choose(0.0)[0] == 'b']
    assert len(moved) == (before[0] - before[1]) // 2
    # the announcements have not caught up yet (same lists): nobody else moves, nobody flaps
    again = [r for r, ch in choosers.items() if ch.choose(1.0)[1]]
    assert again == []


def test_rebalancing_follows_speed_not_count():
    """A server twice as slow ends with fewer robots; equal loads do not flap."""
    on_a, on_b = ROBOTS[:4], ROBOTS[4:]
    choosers = fleet_of(ROBOTS, [ann('a', serving=on_a, infer_ms=100),
                                 ann('b', serving=on_b, infer_ms=50)])
    for r, ch in choosers.items():
        ch.current, ch.since = ('a' if r in on_a else 'b'), -100.0
    for t in (0.0, 20.0, 40.0):
        lists = {s: [r for r, c in choosers.items() if c.current == s] for s in 'ab'}
        for ch in choosers.values():
            ch.observe(ann('a', serving=lists['a'], infer_ms=100, t=t))
            ch.observe(ann('b', serving=lists['b'], infer_ms=50, t=t))
            ch.choose(t)
    n_a = sum(c.current == 'a' for c in choosers.values())
    assert n_a == 3  # 3 x 100 ms against 5 x 50 ms: one more would cost the mover more


def test_hold_time_keeps_a_robot_that_just_moved():
    ch = fleet.Chooser('robot1', 'detect', hold_s=5.0)
    ch.observe(ann('a', serving=ROBOTS))
    assert ch.choose(0.0)[0] == 'a'
    ch.observe(ann('b', serving=[]))
    assert ch.choose(1.0) == ('a', '')  # would gain, but held
    assert ch.moves == 1


def test_gone_banned_and_refusing_servers_are_left():
    ch = fleet.Chooser('robot1', 'detect', stale_s=3.0, cooldown_s=10.0)
    ch.observe(ann('a', t=0.0))
    ch.observe(ann('b', serving=ROBOTS[1:5], t=0.0))
    assert ch.choose(0.0)[0] == 'a'
    ch.observe(ann('b', serving=ROBOTS[1:5], t=3.0))
    sid, why = ch.choose(3.5)  # a's announcement is 3.5 s old: gone
    assert sid == 'b' and 'gone' in why
    ch.ban('b', 4.0)  # b stops acknowledging
    assert ch.choose(4.0)[0] == ''  # nobody left: compute locally
    ch.observe(ann('a', t=5.0))
    assert ch.choose(5.0)[0] == 'a'
    # a full server that still lists the robot keeps it; one that does not list it refuses
    ch.observe(ann('a', serving=['robot1'], accepting=False, t=6.0))
    assert ch.choose(6.0)[0] == 'a'
    other = fleet.Chooser('robot2', 'detect')
    other.observe(ann('a', serving=['robot1'], accepting=False, t=6.0))
    assert other.choose(6.0)[0] == ''


def test_a_server_without_the_robots_key_or_task_is_not_a_candidate():
    ch = fleet.Chooser('robot9', 'detect')
    ch.observe(ann('a'))  # edges robot1..8
    ch.observe(ann('b', edges=['robot9'], task='pose'))
    assert ch.choose(0.0)[0] == ''


@pytest.mark.parametrize('field,value,words', [
    ('server_id', '', 'server_id'), ('server_id', 'a b', 'no spaces'),
    ('server_id', 'x' * 300, 'server_id'), ('task', 'classify', 'task'),
    ('infer_ms', math.nan, 'infer_ms'), ('infer_ms', -1.0, 'infer_ms'),
    ('busy', 3.0, 'busy'), ('edges', ['robot1', ''], 'edge id'),
])
def test_bad_announcements_are_refused_with_a_reason(field, value, words):
    msg = ServerStatus(server_id='gpu1', task='detect', edges=['robot1'], infer_ms=20.0,
                       accepting=True)
    setattr(msg, field, value)
    got, why = fleet.parse(msg, 0.0)
    assert got is None and words in why


def test_a_good_announcement_parses():
    msg = ServerStatus(server_id='gpu1', task='pose', edges=['robot1'], serving=['robot1'],
                       queue=2, infer_ms=20.0, busy=0.5, accepting=True, backend='onnxruntime')
    got, why = fleet.parse(msg, 7.0)
    assert why == '' and got.server_id == 'gpu1' and got.received == 7.0
    assert got.serving == ('robot1',) and got.queue == 2 and got.backend == 'onnxruntime'


def test_a_server_that_has_not_measured_counts_as_a_typical_one():
    ch = fleet.Chooser('robot1', 'detect')
    ch.observe(ann('a', serving=ROBOTS[1:3], infer_ms=40))
    ch.observe(ann('new', serving=ROBOTS[3:7], infer_ms=0.0))  # not 0 ms x 5
    assert ch.choose(0.0)[0] == 'a'


def test_robots_losing_a_server_together_spread_by_one_plan():
    """All robots of a lost server read its last announcement and place themselves by the same
    plan: they fill the free servers by load instead of all taking the least loaded one."""
    lost = ROBOTS[:6]
    anns = [ann('dead', serving=lost, t=0.0), ann('b', serving=['robot7'], t=0.0),
            ann('c', serving=['robot8'], infer_ms=100, t=0.0)]
    choosers = fleet_of(lost, anns)
    for ch in choosers.values():
        ch.current, ch.since = 'dead', -100.0
        ch.choose(0.0)
        ch.ban('dead', 1.0)
    got = {r: ch.choose(1.0)[0] for r, ch in choosers.items()}
    # b (50 ms) takes 4 more (5 x 50 = 250), c (100 ms) 2 more (3 x 100 = 300)
    assert sorted(got.values()).count('b') == 4 and sorted(got.values()).count('c') == 2


def test_a_replayed_older_announcement_does_not_overwrite_the_newer_one():
    """A re-matched reader may get a server's older samples again: the newest stamp wins while
    it is live; once it is stale, a server whose clock stepped back is heard again."""
    ch = fleet.Chooser('robot2', 'detect', stale_s=3.0)
    new = fleet.Announcement('a', 'detect', tuple(ROBOTS), ('robot1',), 0, 50.0, 0.0, True,
                             10.0, stamp_ns=2 * 10**9)
    old = fleet.Announcement('a', 'detect', tuple(ROBOTS), (), 0, 50.0, 0.0, True, 10.5,
                             stamp_ns=1 * 10**9)
    assert ch.observe(new) and not ch.observe(old)
    assert ch.servers['a'].serving == ('robot1',)
    stepped = fleet.Announcement('a', 'detect', tuple(ROBOTS), (), 0, 50.0, 0.0, True, 14.0,
                                 stamp_ns=5 * 10**8)
    assert ch.observe(stepped) and ch.servers['a'].serving == ()


def test_parse_reads_the_header_stamp():
    m = ServerStatus(server_id='gpu-a', task='detect', edges=['robot1'], accepting=True)
    m.header.stamp.sec, m.header.stamp.nanosec = 3, 5
    a, why = fleet.parse(m, 1.0)
    assert why == '' and a.stamp_ns == 3 * 10**9 + 5
