"""Token buckets for link-message budgets (the server's per-edge admission, the edge's resync
answers)."""

import threading


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` stored (starts full; thread-safe).

    A rate of 0 with capacity 0 admits nothing; ``rate=float('inf')`` admits everything.
    """

    def __init__(self, rate: float, capacity: float):
        if rate < 0 or capacity < 0:
            raise ValueError(f'token bucket needs rate >= 0 and capacity >= 0, got {rate}, '
                             f'{capacity}')
        self.rate, self.capacity = float(rate), float(capacity)
        self._tokens = float(capacity)
        self._t = None
        self._lock = threading.Lock()

    def _refill(self, now: float):
        if self._t is not None and now > self._t:
            self._tokens = min(self.capacity, self._tokens + (now - self._t) * self.rate)
        self._t = now if self._t is None else max(self._t, now)

    def take(self, now: float, n: float = 1.0) -> bool:
        """Consume ``n`` tokens at time ``now`` (s, monotonic) if there are enough."""
        if self.rate == float('inf'):
            return True
        with self._lock:
            self._refill(now)
            if self._tokens + 1e-9 >= n:
                self._tokens -= n
                return True
            return False

    def available(self, now: float) -> float:
        with self._lock:
            self._refill(now)
            return self._tokens
