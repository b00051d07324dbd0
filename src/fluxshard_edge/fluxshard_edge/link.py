"""Link emulation in the edge's transport (used when the machine cannot shape a real link):
a bandwidth trace, and a delay line that publishes messages after a one-way delay without
blocking the edge's critical path."""

import heapq
import itertools
import random
import threading
import time
from typing import Callable, List, Optional

import numpy as np


#: Bytes per delivery opportunity in a mahimahi trace (one MTU-sized packet).
MAHIMAHI_PACKET = 1500
#: File suffixes read as mahimahi packet-delivery traces whatever their content.
MAHIMAHI_SUFFIXES = ('.up', '.down', '.mahimahi')


class BandwidthTrace:
    """Link capacity over time, looped at its end: the bytes it can carry up to any time (a
    piecewise-linear cumulative curve), so a transfer leaves when the trace has carried its
    bytes, however the rate changes (and stops) meanwhile.

    Two file formats (``load``):
      * rate samples: ``seconds,mbps`` per line (or just ``mbps``, one per second), the rate
        held until the next sample; ``#`` starts a comment;
      * mahimahi (``*.up`` / ``*.down``, or a single column of non-decreasing integers with a
        repeat): one line per opportunity to send one 1500-byte packet, in milliseconds since
        the start; a millisecond repeated k times carries k packets; the trace loops after its
        last timestamp (as mahimahi's link shell does). Stretches without opportunities are
        outages: nothing leaves until the next one.
    """

    def __init__(self, times: List[float], mbps: List[float]):
        if not len(times) or len(times) != len(mbps):
            raise ValueError('a bandwidth trace needs matching, non-empty times and rates')
        if any(m < 0 for m in mbps) or not any(m > 0 for m in mbps):
            raise ValueError('trace rates must be >= 0 Mbit/s, and not all 0')
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError('trace times must increase')
        t = np.asarray(times, float) - float(times[0])
        r = np.asarray(mbps, float)
        period = t[-1] + (t[-1] - t[-2] if len(t) > 1 else 1.0)
        knots = np.append(t, period)
        carried = np.concatenate([[0.0], np.cumsum(r * np.diff(knots) * 1e6 / 8)])
        self._set(knots, carried)
        self.times, self.mbps = t, r

    def _set(self, knots: np.ndarray, carried: np.ndarray):
        self._t, self._c = knots, carried
        self.period = float(knots[-1])
        self.total = float(carried[-1])  # bytes per period
        if self.total <= 0 or self.period <= 0:
            raise ValueError('a bandwidth trace must carry some bytes')

    @classmethod
    def from_opportunities(cls, ms: List[int], packet_bytes: int = MAHIMAHI_PACKET,
                           where: str = 'mahimahi trace') -> 'BandwidthTrace':
        """A mahimahi trace from its delivery-opportunity timestamps (ms)."""
        ms = np.asarray(ms, np.int64)
        if not len(ms):
            raise ValueError(f'{where}: no delivery opportunities')
        if np.any(ms < 0) or np.any(np.diff(ms) < 0):
            raise ValueError(f'{where}: timestamps must be >= 0 and non-decreasing')
        period = int(max(ms[-1], 1))
        counts = np.bincount(ms % period, minlength=period)[:period]
        self = cls.__new__(cls)
        knots = np.arange(period + 1) / 1e3  # each millisecond carries its packets evenly
        self._set(knots, np.concatenate([[0.0], np.cumsum(counts * float(packet_bytes))]))
        per_s = np.add.reduceat(counts, np.arange(0, period, 1000)) * packet_bytes * 8 / 1e6
        widths = np.diff(np.append(np.arange(0, period, 1000), period)) / 1e3
        self.times = np.arange(0, period, 1000) / 1e3
        self.mbps = per_s / widths
        return self

    @classmethod
    def load(cls, path: str) -> 'BandwidthTrace':
        """Read a trace file (either format, see the class); a clear ValueError naming the
        file and line when it is not one."""
        rows = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.split('#', 1)[0].strip()
                if not line:
                    continue
                parts = [p for p in line.replace(',', ' ').split() if p]
                try:
                    vals = [float(p) for p in parts]
                except ValueError:
                    raise ValueError(f'{path}:{n}: expected numbers, got {line!r}') from None
                if len(vals) not in (1, 2):
                    raise ValueError(f'{path}:{n}: expected "seconds,mbps", "mbps" or a '
                                     'mahimahi timestamp (ms)')
                rows.append((n, vals))
        if not rows:
            raise ValueError(f'{path}: empty bandwidth trace')
        single = all(len(v) == 1 for _, v in rows)
        ints = single and all(v[0] == int(v[0]) for _, v in rows)
        col = [v[0] for _, v in rows]
        repeats = ints and any(b == a for a, b in zip(col, col[1:]))
        if path.endswith(MAHIMAHI_SUFFIXES) or (repeats and all(
                b >= a for a, b in zip(col, col[1:]))):
            if not single:
                raise ValueError(f'{path}: a mahimahi trace has one timestamp (ms) per line')
            prev = 0.0
            for n, v in rows:
                if v[0] < prev or v[0] != int(v[0]):
                    raise ValueError(f'{path}:{n}: mahimahi timestamps are non-decreasing '
                                     f'integer milliseconds >= 0, got {v[0]:g} after '
                                     f'{prev:g}')
                prev = v[0]
            return cls.from_opportunities([int(c) for c in col], where=path)
        times, rates = [], []
        for n, v in rows:
            if len(v) == 1:
                times.append(float(len(times)))
                rates.append(v[0])
            else:
                times.append(v[0])
                rates.append(v[1])
        try:
            return cls(times, rates)
        except ValueError as e:
            raise ValueError(f'{path}: {e}') from None

    def carried(self, t: float) -> float:
        """Bytes the link can have carried from time 0 to ``t`` (seconds, looped)."""
        loops, rem = divmod(max(t, 0.0), self.period)
        return loops * self.total + float(np.interp(rem, self._t, self._c))

    def finish(self, start: float, nbytes: float) -> float:
        """When a transfer of ``nbytes`` that starts at ``start`` has left (the link idle
        before it): the first time the trace has carried them."""
        target = self.carried(start) + max(float(nbytes), 0.0)
        loops, rem = divmod(target, self.total)
        if rem <= 0 and loops > 0:
            loops, rem = loops - 1, self.total
        i = int(np.searchsorted(self._c, rem, side='left'))
        i = min(max(i, 1), len(self._c) - 1)
        c0, c1, t0, t1 = self._c[i - 1], self._c[i], self._t[i - 1], self._t[i]
        t = t0 + (t1 - t0) * ((rem - c0) / (c1 - c0) if c1 > c0 else 1.0)
        return max(loops * self.period + t, start)

    def at(self, t: float, window: float = 0.1) -> float:
        """Mean rate (Mbit/s) over ``[t, t + window)``."""
        return (self.carried(t + window) - self.carried(t)) * 8 / 1e6 / window

    def mean(self) -> float:
        """Mean rate over the trace, Mbit/s."""
        return self.total * 8 / 1e6 / self.period

    def percentile(self, q: float, step: float = 1.0) -> float:
        """The ``q``-th percentile of the rate over ``step``-second windows, Mbit/s."""
        starts = np.arange(0.0, self.period, step)
        return float(np.percentile([self.at(s, step) for s in starts], q))


class DelayLine:
    """Calls ``fn()`` ``delay_s`` after ``put``, in order, on its own thread."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self._heap = []
        self._n = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name='fluxshard-delay', daemon=True)
        self._thread.start()

    def put(self, fn: Callable[[], None]):
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + self.delay_s, next(self._n), fn))
            self._cv.notify()

    def _run(self):
        while True:
            with self._cv:
                while not self._stop and (not self._heap
                                          or self._heap[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._heap
                                  else max(0.0, self._heap[0][0] - time.monotonic()))
                if self._stop:
                    return
                _, _, fn = heapq.heappop(self._heap)
            fn()

    def close(self):
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(1.0)


class EmulatedLink:
    """The edge's outgoing link as emulated in its transport: ``send(nbytes, publish)`` blocks
    until the link has carried the message (FIFO behind the previous one, at a constant rate or
    integrated over a trace, as a reliable publish on a shaped link does), drops the message
    with probability ``drop_rate``, and publishes it after ``delay_s`` on a delay line (the
    caller does not wait for the delay). ``deliver(fn)`` delays what comes back (results,
    feedback) by the same one-way delay, so the round trip is twice it."""

    def __init__(self, mbps: float = 0.0, trace: Optional[BandwidthTrace] = None,
                 delay_s: float = 0.0, drop_rate: float = 0.0, seed: int = 0):
        self.bps = mbps * 1e6 / 8
        self.trace = trace
        self.drop_rate = drop_rate
        self.delay_s = delay_s
        self.delay_line = DelayLine(delay_s) if delay_s > 0 else None
        self.back_line = DelayLine(delay_s) if delay_s > 0 else None
        self._rng = random.Random(seed)
        self._t0 = time.monotonic()
        self._free = 0.0  # link time (since _t0) when the last message has left
        self._lock = threading.Lock()

    def leave_time(self, nbytes: int, now: Optional[float] = None) -> float:
        """Reserve the link for ``nbytes`` from ``now`` (monotonic); returns when they have
        left."""
        now = time.monotonic() if now is None else now
        with self._lock:
            start = max(now - self._t0, self._free)
            if self.trace is not None:
                done = self.trace.finish(start, nbytes)
            elif self.bps:
                done = start + nbytes / self.bps
            else:
                done = start
            self._free = done
        return self._t0 + done

    def send(self, nbytes: int, publish: Callable[[], None]) -> bool:
        """False when the message was dropped (lost on the emulated link)."""
        wait = self.leave_time(nbytes) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if self.drop_rate and self._rng.random() < self.drop_rate:
            return False
        if self.delay_line is not None:
            self.delay_line.put(publish)
        else:
            publish()
        return True

    def deliver(self, fn: Callable[[], None]):
        """Run ``fn`` (a message from the server) after the one-way delay."""
        if self.back_line is not None:
            self.back_line.put(fn)
        else:
            fn()

    def close(self):
        for line in (self.delay_line, self.back_line):
            if line is not None:
                line.close()
