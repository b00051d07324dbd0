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


class BandwidthTrace:
    """Bandwidth over time, Mbit/s, held constant between samples and looped.

    File format: one sample per line, ``seconds,mbps`` (or just ``mbps`` per second); ``#``
    starts a comment. Madrid-LTE-style throughput logs convert to this with one column.
    """

    def __init__(self, times: List[float], mbps: List[float]):
        if not times or len(times) != len(mbps):
            raise ValueError('a bandwidth trace needs matching, non-empty times and rates')
        if any(m <= 0 for m in mbps):
            raise ValueError('trace rates must be > 0 Mbit/s')
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError('trace times must increase')
        self.times = np.asarray(times, float) - times[0]
        self.mbps = np.asarray(mbps, float)
        self.period = self.times[-1] + (self.times[-1] - self.times[-2] if len(times) > 1
                                        else 1.0)

    @classmethod
    def load(cls, path: str) -> 'BandwidthTrace':
        times, rates = [], []
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
                if len(vals) == 1:
                    times.append(float(len(times)))
                    rates.append(vals[0])
                elif len(vals) == 2:
                    times.append(vals[0])
                    rates.append(vals[1])
                else:
                    raise ValueError(f'{path}:{n}: expected "seconds,mbps" or "mbps"')
        return cls(times, rates)

    def at(self, t: float) -> float:
        i = int(np.searchsorted(self.times, t % self.period, side='right')) - 1
        return float(self.mbps[max(i, 0)])

    def mean(self) -> float:
        return float(np.mean(self.mbps))


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
    for the transfer time at the current rate (a constant or a trace, as a reliable publish on a
    shaped link does), drops the message with probability ``drop_rate``, and publishes it after
    ``delay_s`` on a delay line (the caller does not wait for the delay)."""

    def __init__(self, mbps: float = 0.0, trace: Optional[BandwidthTrace] = None,
                 delay_s: float = 0.0, drop_rate: float = 0.0, seed: int = 0):
        self.bps = mbps * 1e6 / 8
        self.trace = trace
        self.drop_rate = drop_rate
        self.delay_line = DelayLine(delay_s) if delay_s > 0 else None
        self._rng = random.Random(seed)
        self._t0 = time.monotonic()

    def send(self, nbytes: int, publish: Callable[[], None]) -> bool:
        """False when the message was dropped (lost on the emulated link)."""
        bps = self.bps
        if self.trace is not None:
            bps = self.trace.at(time.monotonic() - self._t0) * 1e6 / 8
        if bps:
            time.sleep(nbytes / bps)
        if self.drop_rate and self._rng.random() < self.drop_rate:
            return False
        if self.delay_line is not None:
            self.delay_line.put(publish)
        else:
            publish()
        return True

    def close(self):
        if self.delay_line is not None:
            self.delay_line.close()
