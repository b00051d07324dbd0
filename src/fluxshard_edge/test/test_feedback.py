"""The edge's server-link bookkeeping: ACK samples, digests, unavailability and probing."""

import pytest

from fluxshard_edge.feedback import ServerLink


def test_ack_gives_a_transfer_sample_net_of_the_server_receive_time():
    link = ServerLink(timeout_s=1.0)
    link.sent(1, b'd1', 5000, now=10.0)
    out = link.ack(1, b'd1', server_receive_s=0.02, now=10.25)
    assert out.digest_ok and out.nbytes == 5000
    assert abs(out.seconds - 0.23) < 1e-9
    assert not link.ack(1, b'other', 0.0, now=10.3).digest_ok  # a digest mismatch is reported
    assert link.ack(99, b'd1', 0.0, now=10.3) is None  # never sent (or forgotten)


def test_unacked_batch_makes_the_server_unavailable_then_probes_until_an_ack():
    link = ServerLink(timeout_s=1.0)
    link.sent(1, b'a', 100, now=0.0)
    assert link.poll(0.5) == 'ok'
    assert link.poll(1.2) == 'lost' and not link.available
    assert link.poll(1.5) == 'down'  # within one timeout of losing it
    assert link.poll(2.3) == 'probe'
    link.sent(2, b'b', 100, now=2.3)  # the probe
    assert link.poll(2.8) == 'down'
    assert link.poll(3.4) == 'probe'
    link.ack(2, b'b', 0.0, now=3.5)  # the server is back
    assert link.available and link.poll(3.6) == 'back'  # once, for the log line
    assert link.poll(3.7) == 'ok'


def test_an_ack_covers_older_unacked_batches_and_memory_is_bounded():
    link = ServerLink(timeout_s=1.0, keep=8)
    for seq in range(1, 21):
        link.sent(seq, b'x', 10, now=0.0)
    link.ack(20, b'x', 0.0, now=0.1)
    assert link.poll(5.0) == 'ok'  # 1..19 never ACKed, but 20 was
    assert link.ack(3, b'x', 0.0, now=5.0) is None  # only the last 8 are remembered
    assert link.ack(15, b'x', 0.0, now=5.0) is not None


def test_resync_guard_bounds_key_batches_and_reports_the_storm():
    from fluxshard_edge.feedback import ResyncGuard
    g = ResyncGuard(rate_hz=0.5, burst=2)
    allowed = sum(g.allow(t / 100) for t in range(1000))  # 1,000 requests over 10 s
    assert allowed == 2 + 4                               # burst + 0.5/s x ~10 s
    assert g.refused_recently(10.0, 10.0) == 1000 - allowed
    assert g.refused_recently(100.0, 10.0) == 0


def test_backlog_is_what_unacked_batches_still_need_of_the_link():
    link = ServerLink(1.0)
    link.sent(1, b'a', 100_000, 10.0)  # 1 s at 100 kB/s
    link.sent(2, b'b', 50_000, 10.2)   # queued behind it: leaves at 11.5
    assert link.backlog_s(10.5, 100_000) == pytest.approx(1.0)
    link.ack(1, b'a', 0.0, 10.6)
    assert link.backlog_s(10.6, 100_000) == pytest.approx(0.1)  # only seq 2 from 10.2
    link.ack(2, b'b', 0.0, 11.0)
    assert link.backlog_s(11.0, 100_000) == 0.0


def test_a_batch_sent_behind_an_unacked_one_reports_the_ack_spacing():
    link = ServerLink(1.0)
    link.sent(1, b'a', 40_000, 10.0)
    link.sent(2, b'b', 8_000, 10.1)  # leaves while 1 is still on its way
    first = link.ack(1, b'a', 0.01, 10.7)
    assert first.spacing_s is None  # nothing ahead of it
    second = link.ack(2, b'b', 0.02, 10.85)
    assert second.seconds == pytest.approx(0.73)  # the wait behind 1, then its own transfer
    assert second.spacing_s == pytest.approx(0.14)  # its own transfer: 10.83 - 10.69
    link.sent(3, b'c', 8_000, 11.0)  # sent after 2's ACK: not queued
    assert link.ack(3, b'c', 0.0, 11.2).spacing_s is None
