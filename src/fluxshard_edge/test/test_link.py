"""The edge transport's link emulation: a capacity trace integrated over each message, FIFO,
and the one-way delay in both directions."""

import threading
import time

import pytest

from fluxshard_edge.link import BandwidthTrace, EmulatedLink


def test_a_trace_link_holds_messages_until_the_trace_carried_them_and_delays_both_ways():
    # 1 Mbit/s for 0.2 s, then an outage until 1 s (looped)
    tr = BandwidthTrace([0.0, 0.2, 1.0], [1.0, 0.0, 1.0])
    link = EmulatedLink(trace=tr, delay_s=0.05)
    try:
        t0 = link._t0
        # 12.5 kB = 0.1 s at 1 Mbit/s; the second message waits behind it
        assert link.leave_time(12_500, t0) - t0 == pytest.approx(0.1)
        # 25 kB more: 0.1 s left before the outage, the rest after it (at 1.0 s)
        assert link.leave_time(25_000, t0) - t0 == pytest.approx(1.1)
        done = threading.Event()
        assert link.send(100, done.set)  # behind both: leaves after 1.1 s, then 50 ms delay
        assert done.wait(5.0)
        assert time.monotonic() - t0 >= 1.15 - 1e-3
        back = threading.Event()
        t = time.monotonic()
        link.deliver(back.set)
        assert back.wait(5.0) and time.monotonic() - t >= 0.05 - 1e-3
    finally:
        link.close()
