"""Per-edge admission and the round-robin job table (no ROS)."""

import threading

from fluxshard_msgs.msg import BlockBatch, ProxyDelta
from fluxshard_msgs_py import auth
from fluxshard_server.admission import Budget, EdgeGate
from fluxshard_server.jobs import JobTable


def _batch(n=100):
    m = BlockBatch(edge_id='robot1', seq=1)
    m.payload = b'\x07' * n
    return m


KEY = auth.generate(['robot1'])['robot1']


def test_forgeries_are_refused_before_they_cost_budget():
    gate = EdgeGate(KEY, Budget(rate_hz=1.0, burst=1))
    forged = auth.Signer(auth.generate(['x'])['x'], 'block_batch')
    for _ in range(50):
        assert gate.admit_batch(forged.sign(_batch()), 0.0)[0] == 'auth_bad_tag'
    genuine = auth.Signer(KEY, 'block_batch')
    assert gate.admit_batch(genuine.sign(_batch()), 0.0) is None  # budget untouched
    assert gate.admit_batch(genuine.sign(_batch()), 0.1)[0] == 'rate_limited'
    assert gate.admit_batch(genuine.sign(_batch()), 1.2) is None
    assert gate.admit_delta(ProxyDelta(edge_id='robot1'))[0] == 'auth_missing'
    assert gate.admit_delta(auth.Signer(KEY, 'proxy_delta').sign(ProxyDelta())) is None


def test_byte_budget_and_oversize():
    gate = EdgeGate(None, Budget(rate_hz=1e6, burst=1000, mbps=8.0, max_batch_bytes=600_000))
    assert gate.admit_batch(_batch(700_000), 0.0)[0] == 'oversize'
    assert gate.admit_batch(_batch(500_000), 0.0) is None   # 1 MB/s, 1 s of burst
    assert gate.admit_batch(_batch(500_000), 0.0) is None
    assert gate.admit_batch(_batch(500_000), 0.0)[0] == 'byte_limited'
    assert gate.admit_batch(_batch(500_000), 0.6) is None
    # security.mode none: anything well-sized within budget passes
    assert gate.admit_delta(ProxyDelta()) is None


def test_job_table_is_latest_wins_and_round_robin():
    t = JobTable(['a', 'b', 'c'])
    assert t.take(0.0) is None
    assert not t.put('a', 1) and t.put('a', 2)        # latest wins, replacement reported
    t.put('b', 1)
    assert t.take(0.0) == ('a', 2)
    t.put('a', 3)                                     # the flooder is back at once...
    assert t.take(0.0) == ('b', 1)                    # ...but waits for its turn
    t.put('c', 1)
    t.put('b', 2)
    assert [t.take(0.0)[0] for _ in range(3)] == ['c', 'a', 'b']


def test_job_table_wakes_a_waiting_worker_and_closes():
    t = JobTable(['a'])
    got = []
    w = threading.Thread(target=lambda: got.append(t.take(10.0)))
    w.start()
    t.put('a', 'job')
    w.join(5.0)
    assert got == [('a', 'job')]
    t.close()
    assert t.take(10.0) is None
