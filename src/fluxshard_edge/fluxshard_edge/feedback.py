"""The edge's view of its server from the feedback stream (no ROS): which batches await an ACK,
whether the server counts as available, when to probe it, and the transfer timings that feed
the bandwidth estimate."""

from collections import deque, OrderedDict
from dataclasses import dataclass
import threading
from typing import Optional

from fluxshard_msgs_py.ratelimit import TokenBucket


@dataclass
class AckOutcome:
    """What one ACK says."""

    digest_ok: bool
    nbytes: int
    seconds: float  # send -> ACK, minus the server's receive time: one transfer sample
    # the time between this ACK and the previous one (each less the server's receive time) when
    # this batch was sent while the previous one was still on its way: queued behind it on the
    # link, the batch's own transfer is the spacing, not ``seconds`` (None when not queued)
    spacing_s: Optional[float] = None


class ServerLink:
    """Outstanding batches and server availability (thread-safe: batches are sent from the
    critical path, ACKs arrive on the feedback callback).

    The server is *unavailable* once a batch newer than the last ACK has waited ``timeout_s``;
    while unavailable, ``poll`` asks for a probe (a key batch a returning server can apply)
    every ``timeout_s``. Any ACK makes it available again.
    """

    def __init__(self, timeout_s: float, keep: int = 256):
        self.timeout_s = timeout_s
        self.keep = keep
        self.available = True
        self._sent = OrderedDict()  # seq -> (digest, bytes, send time)
        self._acked_upto = 0
        self._last_probe = 0.0
        self._returned = False
        self._last_ack = None  # (seq, ACK time less the server's receive time)
        self._lock = threading.Lock()

    def sent(self, seq: int, digest: bytes, nbytes: int, now: float):
        with self._lock:
            self._sent[int(seq)] = (bytes(digest), int(nbytes), now)
            while len(self._sent) > self.keep:
                self._sent.popitem(last=False)

    def ack(self, seq: int, digest: bytes, server_receive_s: float,
            now: float) -> Optional[AckOutcome]:
        """Record an ACK; None when ``seq`` is not a batch this edge remembers sending."""
        with self._lock:
            if not self.available:
                self._returned = True
            self.available = True
            self._acked_upto = max(self._acked_upto, int(seq))
            sent = self._sent.get(int(seq))
            if sent is None:
                return None
            done = now - server_receive_s
            last, spacing = self._last_ack, None
            if last is not None and last[0] < int(seq):
                if last[1] > sent[2]:  # the previous batch had not arrived when this one left
                    spacing = max(done - last[1], 0.0)
            if last is None or last[0] < int(seq):
                self._last_ack = (int(seq), done)
        want, nbytes, t_sent = sent
        return AckOutcome(bytes(digest) == want, nbytes, now - t_sent - server_receive_s,
                          spacing)

    def sent_at(self, seq: int) -> Optional[float]:
        """When batch ``seq`` was sent (None when not remembered)."""
        with self._lock:
            sent = self._sent.get(int(seq))
        return None if sent is None else sent[2]

    def late(self, now: float) -> bool:
        """A batch has waited ``timeout_s`` for its ACK (what ``poll`` reports as 'lost'),
        without changing the state."""
        with self._lock:
            return any(s > self._acked_upto and t < now - self.timeout_s
                       for s, (_, _, t) in self._sent.items())

    def backlog_s(self, now: float, bps: float) -> float:
        """Seconds the link still needs for the batches sent and not yet ACKed, at ``bps``
        bytes/s, one after the other from their send times (the queue a new batch joins)."""
        if bps <= 0:
            return 0.0
        free = 0.0
        with self._lock:
            for seq, (_, nbytes, t) in self._sent.items():
                if seq > self._acked_upto:
                    free = max(free, t) + nbytes / bps
        return max(free - now, 0.0)

    def poll(self, now: float) -> str:
        """Before a frame: 'ok'; 'lost' when the server has just become unavailable; 'probe'
        when a probe is due; 'down' while unavailable between probes; 'back' once after an
        unavailable server answered again."""
        with self._lock:
            if self._returned:
                self._returned = False
                return 'back'
            late = any(s > self._acked_upto and t < now - self.timeout_s
                       for s, (_, _, t) in self._sent.items())
            if not late:
                return 'ok' if self.available else 'down'
            if self.available:
                self.available = False
                self._last_probe = now
                return 'lost'
            if now - self._last_probe > self.timeout_s:
                self._last_probe = now
                return 'probe'
            return 'down'


class ResyncGuard:
    """Budget of key batches sent in answer to the server's resync requests (and digest
    mismatches): ``rate_hz`` sustained, ``burst`` back to back. A request beyond it is refused;
    the server keeps asking with every batch it cannot apply, so a genuine one is served as
    soon as the budget allows, while a storm of requests cannot multiply the uplink."""

    def __init__(self, rate_hz: float, burst: int):
        self._bucket = TokenBucket(rate_hz, burst)
        self._refused = deque(maxlen=4096)

    def allow(self, now: float) -> bool:
        if self._bucket.take(now):
            return True
        self._refused.append(now)
        return False

    def refused_recently(self, now: float, window_s: float) -> int:
        """How many requests were refused in the last ``window_s`` seconds."""
        return sum(1 for t in self._refused if t > now - window_s)
