"""The modelled timeline of a replay: device compute times from a device profile (the paper's
Table 1, or one measured on this machine: ``fluxshard_kernels.profile``), an emulated uplink
(bandwidth class or trace, one-way delay, loss) and compute resources (FIFO critical work,
preemptible background work).

Every time here is *modelled* from the profile's fits (seconds on the paper's Jetson Xavier NX
edge and RTX 3080 server, or on the measured machine); the CPU times of the run itself are kept
separately by the harness.
"""

from dataclasses import dataclass, field
import math
import os
from typing import Optional

import numpy as np

from fluxshard_edge.link import BandwidthTrace
from fluxshard_kernels import profile

#: The paper's link classes (section 6.1), Mbit/s.
LINK_CLASSES = {'high': 130.0, 'medium': 56.0, 'low': 25.0}

#: Device compute times: the paper's Table 1 profiles (Jetson Xavier NX edge, RTX 3080 server)
#: unless a run passes a measured ``DeviceProfile`` (``fluxshard-eval --profile measured``).
PAPER = profile.PAPER


@dataclass
class LinkSpec:
    """An emulated edge-server link: a class name or Mbit/s, or a trace; delay and loss."""

    name: str = 'medium'
    mbps: float = LINK_CLASSES['medium']
    delay_ms: float = 10.0
    loss: float = 0.0
    trace: Optional[BandwidthTrace] = None
    trace_path: str = ''

    @classmethod
    def parse(cls, text: str, delay_ms: float = 10.0, loss: float = 0.0) -> 'LinkSpec':
        """'high' | 'medium' | 'low' | '<Mbit/s>' | 'trace:<file>' (rate samples or a mahimahi
        trace, see ``BandwidthTrace``; named after the file)."""
        if text in LINK_CLASSES:
            return cls(text, LINK_CLASSES[text], delay_ms, loss)
        if text.startswith('trace:'):
            tr = BandwidthTrace.load(text[6:])
            name = os.path.basename(text[6:]).rsplit('.', 1)[0]
            return cls(name, tr.mean(), delay_ms, loss, tr, os.path.abspath(text[6:]))
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"link {text!r}: expected high, medium, low, a rate in Mbit/s or "
                             "trace:<file>") from None
        if v <= 0:
            raise ValueError(f'link rate must be > 0 Mbit/s, got {v}')
        return cls(f'{v:g}Mbps', v, delay_ms, loss)

    def mbps_at(self, t: float) -> float:
        return self.trace.at(t) if self.trace is not None else self.mbps

    def finish(self, start: float, nbytes: int) -> float:
        """When ``nbytes`` starting at ``start`` on an idle link have left: integrated over
        the trace (a transfer that starts in a dip speeds up when the dip ends; an outage
        holds it), or at the constant rate."""
        if self.trace is not None:
            return self.trace.finish(start, nbytes)
        return start + nbytes * 8 / (self.mbps * 1e6)

    @property
    def median_mbps(self) -> float:
        """The median of the per-second rate (what a rate-controlled stream is set to)."""
        return self.trace.percentile(50) if self.trace is not None else self.mbps


class Link:
    """A FIFO link: one message at a time at the spec's rate (integrated over its trace), then
    the one-way delay. Results come back over the downlink: the one-way delay plus their bytes
    at the uplink's mean rate (cellular downlinks are faster than their uplinks)."""

    def __init__(self, spec: LinkSpec, seed: int = 0):
        self.spec = spec
        self.free_at = 0.0
        self.rng = np.random.default_rng(seed)
        self.bytes = 0
        self.messages = 0
        self.lost = 0

    def transmit(self, t_ready: float, nbytes: int):
        """Returns (time the last byte left, arrival time, delivered?)."""
        start = max(t_ready, self.free_at)
        done = self.spec.finish(start, nbytes)
        self.free_at = done
        self.bytes += nbytes
        self.messages += 1
        ok = not (self.spec.loss and self.rng.random() < self.spec.loss)
        if not ok:
            self.lost += 1
        return done, done + self.spec.delay_ms / 1e3, ok

    def backlog(self, t: float) -> float:
        """Seconds until the link is free for a message ready at ``t`` (queueing)."""
        return max(self.free_at - t, 0.0)

    def back(self, nbytes: int) -> float:
        """Seconds for ``nbytes`` to come back (downlink)."""
        return nbytes * 8 / (self.spec.mbps * 1e6) + self.spec.delay_ms / 1e3


#: How long a critical job waits for running background work to yield: one layer of a
#: dense pass (the refresh is preemptible between layers; YOLO11n has ~100 primitives).
PREEMPT_S = 0.0005


class Resource:
    """A compute device (the server GPU, or one edge): critical jobs run FIFO; background work
    (the dense cache refresh) runs at low priority in the idle time between them and yields
    within ``preempt_s`` (one layer) when a critical job arrives, as the real refresh does.

    ``backlog`` is the background work still waiting for idle time: when it stays large, the
    device is saturated and the modelled refreshes are late in reality.
    """

    def __init__(self, preempt_s: float = PREEMPT_S):
        self.preempt_s = preempt_s
        self.free_at = 0.0      # critical work done
        self.busy = 0.0
        self.backlog = 0.0      # background seconds not yet run
        self._bg_from = 0.0     # background has run up to here

    def _advance(self, t: float):
        """Run background work in the idle time up to ``t``."""
        idle = t - max(self._bg_from, self.free_at)
        if idle > 0 and self.backlog > 0:
            done = min(idle, self.backlog)
            self.backlog -= done
            self.busy += done
        self._bg_from = max(self._bg_from, t)

    def run(self, t_ready: float, seconds: float) -> float:
        """A critical job ready at ``t_ready``; returns its completion time."""
        self._advance(t_ready)
        start = max(t_ready, self.free_at)
        if self.backlog > 0 and start == t_ready:  # background is running: it yields
            start += self.preempt_s
        self.free_at = start + seconds
        self.busy += seconds
        self._bg_from = max(self._bg_from, self.free_at)
        return self.free_at

    def background(self, t_ready: float, seconds: float):
        """Queue low-priority work from ``t_ready``."""
        self._advance(t_ready)
        self.backlog += seconds


@dataclass
class FrameRecord:
    """One processed frame on the timeline (times in modelled seconds)."""

    index: int
    arrival: float
    latency: float = math.nan
    computed_by: str = ''
    uplink_bytes: int = 0
    hit_ratio: float = 0.0
    edge_compute: float = 0.0     # fraction of a dense pass computed on the edge
    server_compute: float = 0.0   # fraction of a dense pass computed on the server
    lost: bool = False
    cpu_edge_ms: float = 0.0      # measured on this machine
    cpu_server_ms: float = 0.0
    extra: dict = field(default_factory=dict)
