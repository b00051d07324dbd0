"""Authenticated link messages and fair service over real DDS (issue: only the robots you
configured). A separate attacker process (test/attacker.py) holds robot2's key but not
robot1's: forged batches, tags made with robot2's key, replays of sniffed genuine batches and
feedback, forged RESET and RESYNC_REQUEST storms - at least 1,000 of each counted by the
victim, none applied. A resync storm that passes authentication (security.mode none) stays
within the edge's key-batch budget. A flooding robot beside a normal one is held to its
admission budget and served round robin."""

import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from diagnostic_msgs.msg import DiagnosticArray
from fluxshard_msgs_py.node import RESULT_QOS
from fluxshard_msgs.msg import BlockBatch, DetectionArray, ProxyDelta
from fluxshard_msgs_py import auth
from rclpy.qos import QoSProfile, ReliabilityPolicy

MONITOR_QOS = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
ATTACKER = os.path.join(os.path.dirname(__file__), 'attacker.py')
#: forgeries per kind: 60 in CI (each costs the victim one rclpy callback, ~30-80/s on a
#: loaded 2-core machine; the suite's time matters too); FLUXSHARD_SECURITY_COUNT=1000 for the
#: recorded run (docs/security.md)
COUNT = int(os.environ.get('FLUXSHARD_SECURITY_COUNT', '60'))
FORGERIES = ['unsigned_batch', 'other_key_batch', 'replay_batch', 'forged_reset',
             'forged_resync', 'unsigned_resync', 'replay_feedback']


def _diag(ros):
    got = {}

    def on_diag(m):
        for st in m.status:
            worst = max(got.get(st.name, {}).get('_worst', 0), st.level[0])
            got[st.name] = dict({kv.key: kv.value for kv in st.values}, _level=st.level[0],
                                _worst=worst, _message=st.message)
    ros.node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
    return got


def _attacker(ros, *args, timeout=400):
    """Run the attacker with robot2's key only; its JSON lines by kind."""
    p = subprocess.Popen([sys.executable, ATTACKER, '--key-file', _robot2_keys(ros), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    try:  # keep spinning: this process monitors the victims meanwhile
        done = ros.wait_for(lambda: p.poll() is not None, timeout)
    finally:
        if p.poll() is None:
            p.kill()
    out, err = p.communicate()
    assert done and p.returncode == 0, f'attacker failed: {out} {err[-3000:]}'
    return {r['kind']: r for r in map(json.loads, out.splitlines())}


def _record(name, **figures):
    """Save a test's figures to $FLUXSHARD_SECURITY_JSON (the recorded run behind
    docs/security.md); no-op otherwise."""
    path = os.environ.get('FLUXSHARD_SECURITY_JSON')
    if not path:
        return
    saved = json.load(open(path)) if os.path.exists(path) else {}
    saved[name] = dict(figures, count_per_kind=COUNT)
    with open(path, 'w') as f:
        json.dump(saved, f, indent=1)


def _ints(d, prefix=''):
    return {k: int(v) for k, v in d.items() if k.startswith(prefix) and not k.startswith('_')
            and v.lstrip('-').isdigit()}


def _start(ros, *extra_server, edge_params=(), rate='2.0'):
    server = ros.spawn('fluxshard_server.server_node', params=[
        "edges:=['robot1', 'robot2']", 'model.backend:=onnxruntime', 'model.threads:=1',
        *extra_server])
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1', params=[
        'scheduler.force_strategy:=cloud', 'model.local_inference:=false', 'camera.depth:=10',
        *edge_params])
    cam = ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1', params=[
        'source:=davis-blackswan', 'count:=0', 'loop:=true', f'rate_hz:={rate}',
        'wait_for_subscribers:=1', 'start_delay_s:=1.0'])
    return server, edge, cam


def test_forged_and_replayed_messages_are_counted_and_never_applied(ros):
    diag = _diag(ros)
    batches, acks = {}, {}  # acks by nonce: the attacker replays some on the same topic
    ros.node.create_subscription(BlockBatch, '/robot1/block_batch',
                                 lambda m: batches.setdefault(m.seq, []).append(m), MONITOR_QOS)
    ros.node.create_subscription(
        ProxyDelta, '/robot1/proxy_feedback',
        lambda m: m.kind == ProxyDelta.KIND_ACK and acks.setdefault(m.auth_nonce, m),
        MONITOR_QOS)
    server, edge, cam = _start(ros)
    assert ros.wait_for(lambda: int(diag.get('fluxshard/edge/robot1', {}).get('acks', 0)) >= 2,
                        90), (ros.log(server), ros.log(edge))
    res = _attacker(ros, '--kinds', ','.join(FORGERIES), '--count', str(COUNT),
                    timeout=120 + COUNT)
    for kind in FORGERIES:  # COUNT of each kind counted under its own reason
        assert res[kind]['counted'] >= COUNT, json.dumps(res)
    cam.terminate()
    cam.wait(10)
    n = len(acks)
    ros.wait_for(lambda: False, 3.0)  # last batches ACKed, diagnostics (1 Hz) settle
    s, e = _ints(diag['fluxshard/server/robot1']), _ints(diag['fluxshard/edge/robot1'])
    # every batch the server received is accounted for: applied cleanly or a counted rejection
    batch_rejects = {k: v for k, v in _ints(diag['fluxshard/server/robot1'],
                                            'rejected.').items()
                     if not k.startswith('rejected.delta.')}
    assert s['batches_in'] == s['batches_ok'] + sum(batch_rejects.values()), s
    # nothing forged was applied: every applied batch is the genuine edge's, with its digest
    assert s['applied'] == s['batches_ok'] and len(acks) >= n, (s, len(acks))
    # (the monitor may miss some under the flood: check every pair it saw)
    pairs = [(a, batches[a.seq][0]) for a in acks.values() if a.seq in batches]
    assert len(pairs) >= n // 2, (len(pairs), n)
    for a, b in pairs:
        assert bytes(a.state_digest) == bytes(b.state_digest)
    assert e.get('digest_mismatch', 0) == 0 and s.get('rejected.digest_mismatch', 0) == 0
    # forged feedback changed nothing on the edge: every resync request it accepted is one the
    # server sent (for a batch it could not apply), and no key batch went out beyond the first,
    # those requests, and its own probes when the loaded server's ACKs came late - so the
    # forged resync storm cost 0 key bytes
    server_asked = sum(s.get(f'rejected.{r}', 0)
                       for r in ('seq_gap', 'unsynced', 'bad_batch', 'digest_mismatch'))
    assert e.get('resync_requests', 0) <= server_asked, (e, s)
    assert e['key_batches'] <= 1 + e.get('resync_requests', 0) + e.get('probes', 0), e
    assert e['feedback_in'] == (e['feedback_ok'] + e.get('feedback_other_edge', 0) + sum(
        _ints(diag['fluxshard/edge/robot1'], 'rejected.feedback.').values())), e
    assert diag['fluxshard/server/robot1']['_worst'] == 1  # WARN while under attack
    _record('forgeries', kinds=res, server_rejected=batch_rejects,
            delta_rejected=_ints(diag['fluxshard/server/robot1'], 'rejected.delta.'),
            edge_rejected=_ints(diag['fluxshard/edge/robot1'], 'rejected.feedback.'),
            genuine_applied=s['batches_ok'], forged_applied=s['applied'] - s['batches_ok'],
            edge_key_batches=e['key_batches'], edge_resync_requests=e.get('resync_requests', 0),
            edge_probes=e.get('probes', 0), server_resync_causes=server_asked,
            digest_mismatch=e.get('digest_mismatch', 0))
    assert server.poll() is None and edge.poll() is None


def test_resync_storm_stays_within_the_key_batch_budget(ros):
    """security.mode none (a lab, or a compromised server): the requests are genuine as far
    as the edge can tell; its resync budget bounds the key batches they cost."""
    diag = _diag(ros)
    server, edge, cam = _start(ros, 'security.mode:=none', edge_params=[
        'security.mode:=none', 'resync.max_rate_hz:=0.5', 'resync.burst:=2'])
    assert ros.wait_for(lambda: int(diag.get('fluxshard/edge/robot1', {}).get('acks', 0)) >= 2,
                        90), (ros.log(server), ros.log(edge))
    before = _ints(diag['fluxshard/edge/robot1'])
    res = _attacker(ros, '--kinds', 'resync_storm', '--count', str(COUNT))['resync_storm']
    assert res['counted'] >= COUNT
    asked = before.get('resync_requests', 0) + res['counted']
    assert ros.wait_for(lambda: int(diag['fluxshard/edge/robot1']['resync_requests']) >= asked,
                        10)  # our view of the edge caught up with the attacker's
    assert 'resync storm' in diag['fluxshard/edge/robot1']['_message']
    e = _ints(diag['fluxshard/edge/robot1'])
    keys = e['key_batches'] - before['key_batches']
    budget = 2 + 0.5 * (res['seconds'] + 3.0)  # burst + rate x (storm + settling)
    assert keys <= budget, (keys, budget, e)
    assert e['resync_limited'] >= COUNT - budget, json.dumps(e)
    _record('resync_storm', requests=res['counted'], seconds=res['seconds'], key_batches=keys,
            budget=budget, refused=e['resync_limited'],
            key_bytes=e['key_bytes'] - before['key_bytes'], rate_hz=0.5, burst=2)
    assert 'security.mode none' in ros.log(edge) and 'security.mode none' in ros.log(server)
    assert edge.poll() is None


@pytest.mark.serial  # compares latencies alone and flooded
def test_a_flooding_robot_cannot_starve_another(ros):
    """robot2 floods genuine batches at 25x robot1's frame rate; admission holds it to 3
    batches/s and the job table serves the robots in turn: robot1 is not starved - it keeps
    getting a result for at least half its camera frames (the rest superseded, counted), with
    a median latency under two camera periods.

    The ratio flooded / alone is recorded, not asserted: with the shipped shared-memory DDS
    profile robot1 alone answers in ~85 ms (it was ~250-400 ms over the LARGE_DATA built-in
    transports, which hid the flood's cost), and the 50 Hz flood's callbacks cost the server
    process about a core here, ~3x robot1's latency on this 2-core machine (docs/security.md).

    The budget (3/s, burst 2) sits above robot1's 2 Hz camera, as a deployed robot's does
    (default 60/s): at exactly the camera rate, a frame the loaded machine delayed and the next
    one on time spent two tokens at once, the limiter dropped robot1's own batch, and the
    inter-coded stream behind it resynced (13 rate-limited, 22 unsynced of 76 in one run here
    under a busy loop; results at 0.76/s in one CI run).
    """
    diag = _diag(ros)
    lat, stamps = [], []

    def on_result(m):
        stamp = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
        stamps.append(stamp / 1e9)
        lat.append((ros.node.get_clock().now().nanoseconds - stamp) / 1e6)
    ros.node.create_subscription(DetectionArray, '/robot1/detections', on_result, RESULT_QOS)
    server, edge, cam = _start(ros, 'admission.max_rate_hz:=3.0', 'admission.burst:=2')
    n = 12
    assert ros.wait_for(lambda: len(lat) >= n + 3, 120), (ros.log(server), ros.log(edge))
    alone = lat[3:n + 3]
    k = len(lat)
    # the flooding robot has its own CPU on a real fleet; here it shares this machine, so it
    # runs at the lowest priority: what is measured is the server's cost of the flood, not the
    # load generator's (the flood's arrival rate at the server is asserted below)
    flood = subprocess.Popen([sys.executable, ATTACKER, '--key-file', _robot2_keys(ros),
                              '--kinds', '', '--flood-s', '60', '--rate', '50'],
                             env=dict(os.environ), stdout=subprocess.PIPE, text=True,
                             preexec_fn=lambda: os.nice(19))
    try:
        assert ros.wait_for(lambda: int(diag.get('fluxshard/server/robot2', {}).get(
            'rejected.rate_limited', 0)) >= 20, 60), diag
        k, t_in = len(lat), time.monotonic()
        in0 = _ints(diag['fluxshard/server/robot2'])['batches_in']
        assert ros.wait_for(lambda: len(lat) >= k + n, 90), ros.log(server)
        flood_hz = (_ints(diag['fluxshard/server/robot2'])['batches_in'] - in0) / (
            time.monotonic() - t_in)
        # results per second of camera time (their stamps): the share of camera frames served,
        # not the machine's momentary delays
        rate = (n - 1) / max(stamps[k + n - 1] - stamps[k], 1e-9)
        flooded = lat[k:k + n]
        s2 = _ints(diag['fluxshard/server/robot2'])
        s1 = _ints(diag['fluxshard/server/robot1'])
    finally:
        flood.kill()
        flood.wait(10)
    ratio = statistics.median(flooded) / statistics.median(alone)
    print(f'robot1 median latency alone {statistics.median(alone):.0f} ms, with a flooding '
          f'neighbour {statistics.median(flooded):.0f} ms ({ratio:.2f}x); robot2 '
          f'{s2["batches_in"]} batches in ({flood_hz:.0f}/s), '
          f'{s2.get("rejected.rate_limited", 0)} rate-limited, robot1 {rate:.2f} results/s, '
          f'server counters for robot1 {s1}')
    _record('flood', alone_ms=statistics.median(alone), flooded_ms=statistics.median(flooded),
            ratio=ratio, samples=n, flood_rate_hz=50, admission_rate_hz=3.0,
            flood_batches_in=s2['batches_in'], flood_served=s2['batches_ok'],
            flood_rate_limited=s2.get('rejected.rate_limited', 0))
    assert flood_hz >= 25, flood_hz  # the flood reached the server (diagnostics lag ~1 s)
    assert statistics.median(flooded) <= 2 * 1000 / 2.0, (alone, flooded)  # 2 periods at 2 Hz
    assert s2['batches_ok'] < s2['batches_in'] / 3, s2  # most of the flood was refused
    assert rate >= 0.5 * 2.0, (rate, s1)  # robot1 served for >= half its 2 Hz camera frames
    assert server.poll() is None


def _robot2_keys(ros):
    key_file = str(ros.tmp / 'robot2.keys')
    if not os.path.exists(key_file):
        auth.save_keys(key_file, {'robot2': ros.keys['robot2']})
    return key_file
