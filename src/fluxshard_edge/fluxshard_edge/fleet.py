"""Which server serves this robot (no ROS): the fleet's announcements (``ServerStatus``), a
load-aware choice with hysteresis, and the reasons to move (paper section 3's server, many of
them). The edge node feeds it announcements and link events; the fleet model
(``fluxshard_eval.fleet``) drives the same class on its timeline.

The load of a server is the time a new robot's frame would wait behind the robots it serves:
``infer_ms * (robots + 1)`` (robots share a server round robin, one latest-wins job each).
A robot without a server takes the accepting one of least load; ties between equal servers
are broken by rendezvous hashing of (edge, server), so robots starting together spread
instead of all taking the first name. A robot with a server moves only when

- its server disappears (no announcement for ``stale_s``), stops accepting it, stops
  acknowledging, or misses the robot's latency bound (``ban``: that server is avoided for
  ``cooldown_s``); or
- rebalancing pays: moving ``k`` robots from its server A to the least-loaded B would leave
  each mover better off by ``margin``: ``infer_B (n_B + k) < (1 - margin) infer_A (n_A - k + 1)``.
  Which ``k`` robots move is decided by the same hash on every robot of A (they all read the
  same announcements), so exactly ``k`` move and the rest stay: no herd, no flapping. A robot
  that moved holds its server for ``hold_s``.
"""

from dataclasses import dataclass
import hashlib
import math
from typing import Dict, List, Optional, Tuple

#: Vision tasks a server may announce (fluxshard model.task).
TASKS = ('detect', 'segment', 'pose')
#: Longest server id accepted in an announcement.
MAX_ID = 128


@dataclass(frozen=True)
class Announcement:
    """One server's latest announcement, as received."""

    server_id: str
    task: str
    edges: Tuple[str, ...]
    serving: Tuple[str, ...]
    queue: int
    infer_ms: float
    busy: float
    accepting: bool
    received: float  # monotonic s
    model: str = ''
    device: str = ''
    backend: str = ''
    stamp_ns: int = 0  # header stamp (the server's clock): orders one server's announcements


def parse(msg, now: float) -> Tuple[Optional[Announcement], str]:
    """(announcement, '') from a ServerStatus-like message, or (None, why) when a field is bad
    (the caller warns and ignores it)."""
    sid = str(msg.server_id)
    if not sid or len(sid) > MAX_ID or not sid.isprintable() or any(c.isspace() for c in sid):
        return None, f'server_id {sid[:40]!r} must be 1-{MAX_ID} printable characters, no spaces'
    if msg.task not in TASKS:
        return None, f'server {sid}: task {msg.task!r} is not one of {TASKS}'
    infer = float(msg.infer_ms)
    if not math.isfinite(infer) or infer < 0 or infer > 1e6:
        return None, f'server {sid}: infer_ms {infer} is not a time in [0, 1e6] ms'
    busy = float(msg.busy)
    if not math.isfinite(busy) or not 0 <= busy <= 1.0001:
        return None, f'server {sid}: busy {busy} is not a fraction in [0, 1]'
    edges, serving = tuple(msg.edges), tuple(msg.serving)
    if any(not e or len(e) > MAX_ID for e in edges + serving):
        return None, f'server {sid}: an empty or over-long edge id in edges / serving'
    st = getattr(getattr(msg, 'header', None), 'stamp', None)
    stamp = int(st.sec) * 10**9 + int(st.nanosec) if st is not None else 0
    return Announcement(sid, str(msg.task), edges, serving, int(msg.queue), infer, busy,
                        bool(msg.accepting), now, str(msg.model), str(msg.device),
                        str(msg.backend), stamp), ''


def rank(edge_id: str, server_id: str) -> int:
    """Rendezvous hash of an (edge, server) pair: the same on every robot and host."""
    return int.from_bytes(hashlib.blake2b(f'{edge_id}\0{server_id}'.encode(),
                                          digest_size=8).digest(), 'little')


class Chooser:
    """One robot's server choice.

    Args:
        edge_id: this robot.
        task: its model.task (only servers running it are candidates).
        stale_s: an announcement older than this means the server is gone.
        margin: relative gain a rebalancing move must bring.
        hold_s: after a move, stay at least this long (unless the server fails).
        cooldown_s: how long a failed server is avoided.
        min_infer_ms: floor of an announced inference time (an idle server's 0 would make
            its load zero whatever it serves).
    """

    def __init__(self, edge_id: str, task: str, stale_s: float = 3.0, margin: float = 0.15,
                 hold_s: float = 5.0, cooldown_s: float = 10.0, min_infer_ms: float = 1.0):
        self.edge_id, self.task = edge_id, task
        self.stale_s, self.margin = stale_s, margin
        self.hold_s, self.cooldown_s = hold_s, cooldown_s
        self.min_infer_ms = min_infer_ms
        self.servers: Dict[str, Announcement] = {}
        self.banned: Dict[str, float] = {}  # server -> until (monotonic s)
        self.current = ''
        self.since = -math.inf
        self.moves = 0
        # robots that lost their server with this one (its last announcement), and that server
        self.orphans: Tuple[str, ...] = ()
        self.lost_server = ''

    # -- inputs --------------------------------------------------------------------------------
    def observe(self, ann: Announcement) -> bool:
        """Keep ``ann`` as its server's latest; False (ignored) when it is older than the live
        one held (a replayed or reordered sample; once the held one is stale, a server whose
        clock stepped back is heard again)."""
        old = self.servers.get(ann.server_id)
        if old is not None and ann.stamp_ns < old.stamp_ns and \
                ann.received - old.received <= self.stale_s:
            return False
        self.servers[ann.server_id] = ann
        return True

    def ban(self, server_id: str, now: float):
        """The server failed this robot (no ACKs, latency bound missed): avoid it for a while
        and leave it now."""
        self.banned[server_id] = now + self.cooldown_s
        if server_id == self.current:
            self._orphaned(server_id)

    def _orphaned(self, server_id: str):
        last = self.servers.get(server_id)
        self.orphans = tuple(set(last.serving if last else ()) | {self.edge_id})
        self.lost_server = server_id
        self.current = ''

    # -- the choice ----------------------------------------------------------------------------
    def candidates(self, now: float) -> List[Announcement]:
        """Live servers that may serve this robot."""
        out = []
        for a in self.servers.values():
            if now - a.received > self.stale_s or self.banned.get(a.server_id, -1) > now:
                continue
            if a.task != self.task or self.edge_id not in a.edges:
                continue
            if not a.accepting and self.edge_id not in a.serving:
                continue
            out.append(a)
        return out

    def _robots(self, a: Announcement) -> int:
        """Robots ``a`` serves other than this one."""
        return len(set(a.serving) - {self.edge_id})

    def _infer(self, a: Announcement) -> float:
        if a.infer_ms > 0:
            return max(a.infer_ms, self.min_infer_ms)
        # a server that has not measured yet (no warm-up, no job) counts as a typical one
        known = sorted(o.infer_ms for o in self.servers.values() if o.infer_ms > 0)
        return max(known[len(known) // 2] if known else 0.0, self.min_infer_ms)

    def load_with_me(self, a: Announcement) -> float:
        return self._infer(a) * (self._robots(a) + 1)

    def choose(self, now: float) -> Tuple[str, str]:
        """(server id or '' when none may serve, why it changed or '' when it did not)."""
        cands = {a.server_id: a for a in self.candidates(now)}
        cur = cands.get(self.current)
        if cur is None:
            why = ('' if not self.current else
                   f'server {self.current} gone (no announcement for {self.stale_s:g} s, or '
                   'not accepting)')
            if self.current:
                self._orphaned(self.current)
            if not cands:
                return '', why
            if self.edge_id in self.orphans and len(self.orphans) > 1:
                best = self._plan(cands)
                why = why or f'server {self.lost_server} lost'
                why += f'; {len(self.orphans)} robots spread by one plan'
            else:  # alone: least loaded; among near-equal ones a hash spreads starting robots
                best = min(cands.values(), key=lambda a: (
                    self.load_with_me(a) * (1 + rank(self.edge_id, a.server_id) / 2**64),
                    a.server_id))
                why = why or f'least loaded of {len(cands)} server(s)'
            return self._move(best.server_id, now, why)
        if now - self.since < self.hold_s or len(cands) < 2:
            return self.current, ''
        # rebalance: how many of the current server's robots should move to the best other
        others = [a for a in cands.values() if a.server_id != cur.server_id]
        best = min(others, key=lambda a: (self.load_with_me(a), rank(self.edge_id,
                                                                     a.server_id)))
        mine = sorted(set(cur.serving) | {self.edge_id},
                      key=lambda e: rank(e, cur.server_id))
        n_a, n_b = len(mine), self._robots(best)
        k = 0
        while k < n_a and self._infer(best) * (n_b + k + 1) < \
                (1 - self.margin) * self._infer(cur) * (n_a - k):
            k += 1
        if k and self.edge_id in mine[:k]:
            return self._move(best.server_id, now,
                              f'rebalancing: {cur.server_id} serves {n_a} at '
                              f'{cur.infer_ms:.0f} ms, {best.server_id} {n_b} at '
                              f'{best.infer_ms:.0f} ms ({k} robot(s) move)')
        return self.current, ''

    def _plan(self, cands: Dict[str, Announcement]) -> Announcement:
        """The robots that lost one server together (every one of them reads the same last
        announcement) take the free servers one after the other, each the least loaded given
        the ones placed before it, in hash order: the same plan on every robot, so they spread
        instead of all taking the server that looked least loaded."""
        n = {sid: len(set(a.serving) - set(self.orphans)) for sid, a in cands.items()}
        mine = None
        for e in sorted(self.orphans, key=lambda e: rank(e, self.lost_server)):
            best = min(cands.values(), key=lambda a: (self._infer(a) * (n[a.server_id] + 1),
                                                      rank(e, a.server_id)))
            n[best.server_id] += 1
            if e == self.edge_id:
                mine = best
        return mine

    def _move(self, server_id: str, now: float, why: str) -> Tuple[str, str]:
        if server_id != self.current:
            self.moves += 1
        self.current, self.since = server_id, now
        return server_id, why
