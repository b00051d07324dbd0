"""Per-edge admission of link messages on the server (no ROS): what a message must pass
before it may touch an edge's proxy, in order of cost - size, authentication, then the edge's
rate and byte budgets (so forged traffic cannot use up a genuine edge's budget)."""

from dataclasses import dataclass
from typing import Optional, Tuple

from fluxshard_msgs_py import auth
from fluxshard_msgs_py.ratelimit import TokenBucket

Verdict = Optional[Tuple[str, str]]  # None = admitted, else (counter, explanation)


@dataclass(frozen=True)
class Budget:
    """Per-edge service budget.

    Attributes:
        rate_hz: sustained BlockBatch rate, batches/s (inf = unlimited).
        burst: batches that may arrive back to back above the rate.
        mbps: sustained payload rate, Mbit/s (inf = unlimited); bursts of one second allowed.
        max_batch_bytes: largest payload of a single batch.
    """

    rate_hz: float = 60.0
    burst: int = 10
    mbps: float = 400.0
    max_batch_bytes: int = 16 * 2**20


class EdgeGate:
    """Admission for one served edge.

    Args:
        key: the edge's secret (None: ``security.mode: none``, nothing authenticated).
        budget: the edge's service budget.
        max_age_s: freshness window of the authentication nonces (see ``auth.Verifier``).
    """

    def __init__(self, key: Optional[bytes], budget: Budget, max_age_s: float = 30.0):
        self.budget = budget
        self._batch = auth.Verifier(key, 'block_batch', max_age_s) if key else None
        self._delta = auth.Verifier(key, 'proxy_delta', max_age_s) if key else None
        self._rate = TokenBucket(budget.rate_hz, budget.burst)
        byte_rate = budget.mbps * 1e6 / 8
        self._bytes = TokenBucket(byte_rate, max(byte_rate, budget.max_batch_bytes))

    def admit_batch(self, msg, now: float) -> Verdict:
        """Check a BlockBatch received at ``now`` (monotonic s); a refused one must be dropped
        without answering (an answer would let forgeries trigger traffic)."""
        n = (len(msg.payload) + len(msg.mv_packed) + 2 * (len(msg.mv_x) + len(msg.mv_y))
             + len(msg.indices_packed) + 4 * len(msg.block_indices) + len(msg.dissimilarity))
        if n > self.budget.max_batch_bytes:
            return 'oversize', (f'batch of {n} bytes exceeds admission.max_batch_mb '
                                f'({self.budget.max_batch_bytes} bytes)')
        if self._batch is not None:
            bad = self._batch.check(msg)
            if bad:
                return bad
        if not self._rate.take(now):
            return 'rate_limited', (f'more than {self.budget.rate_hz:g} batches/s (burst '
                                    f'{self.budget.burst}): admission.max_rate_hz')
        if not self._bytes.take(now, n):
            return 'byte_limited', (f'more than {self.budget.mbps:g} Mbit/s of batches: '
                                    'admission.max_mbps')
        return None

    def admit_delta(self, msg) -> Verdict:
        """Check a ProxyDelta (RESET) from the edge."""
        if self._delta is not None:
            return self._delta.check(msg)
        return None
