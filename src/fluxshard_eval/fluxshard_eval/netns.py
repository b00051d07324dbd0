"""A shaped link between two network namespaces (root and iproute2 needed): the robots run in
``<name>_edge`` (10.231.0.1), the server in ``<name>_srv`` (10.231.0.2), joined by a veth pair
with a ``tc tbf`` token bucket at the given rate in both directions (or following a capacity
trace over time: ``TraceShaper``), so DDS itself crosses a rate-limited link (this kernel has
no ``sch_netem``: the one-way delay, both ways, is emulated in the edge transport with
``link.delay_ms``). DDS must use UDP (no shared memory) and subnet
discovery; ``dds_env`` gives the variables."""

import os
import shutil
import subprocess


def available() -> str:
    """'' when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return 'not root'
    if not shutil.which('ip') or not shutil.which('tc'):
        return 'iproute2 (ip, tc) not installed'
    return ''


def _ip(*args):
    subprocess.run(['ip', *args], check=True, capture_output=True, text=True)


#: The slowest rate the shaper sets: a zero-capacity stretch of a trace (tc tbf takes no 0).
MIN_KBIT = 8


def _devs(name: str):
    return ((f'{name}_edge', f'{name[:10]}e'), (f'{name}_srv', f'{name[:10]}s'))


def _burst(mbps: float) -> int:
    return max(16384, int(mbps * 1e6 / 8 / 500))  # ~2 ms of traffic


def shape(name: str, mbps: float, verb: str = 'change'):
    """Set both directions of the link to ``mbps`` (``tc qdisc add`` or ``change``)."""
    kbit = max(int(mbps * 1000), MIN_KBIT)
    for ns, dev in _devs(name):
        subprocess.run(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', verb, 'dev', dev, 'root',
                        'tbf', 'rate', f'{kbit}kbit', 'burst', str(_burst(mbps)),
                        'latency', '500ms'], check=True, capture_output=True, text=True)


class TraceShaper:
    """Re-shapes the link every ``step_s`` to the trace's mean rate over the next step (a
    capacity trace followed over time, looped; an outage is held at ``MIN_KBIT``), on its own
    thread until ``stop``. ``log`` keeps (seconds since start, Mbit/s set)."""

    def __init__(self, name: str, trace, step_s: float = 0.1):
        import threading
        import time
        self.name, self.trace, self.step_s = name, trace, step_s
        self.log = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        shape(name, trace.at(0.0, step_s))
        self._thread = threading.Thread(target=self._run, name='trace-shaper', daemon=True)
        self._thread.start()

    def _run(self):
        import time
        k = 0
        while not self._stop.wait(max(0.0, self._t0 + k * self.step_s - time.monotonic())):
            t = k * self.step_s
            mbps = self.trace.at(t, self.step_s)
            try:
                shape(self.name, mbps)
            except subprocess.CalledProcessError:
                return  # the namespaces are gone
            self.log.append((t, mbps))
            k += 1

    def stop(self):
        self._stop.set()
        self._thread.join(1.0)


#: Addresses of the two ends of the link.
EDGE_ADDR, SRV_ADDR = '10.231.0.1', '10.231.0.2'


def up(name: str, mbps: float, multicast: bool = True):
    """Create the namespaces and the shaped veth pair (raises CalledProcessError); with
    ``multicast`` False the link carries no multicast at all (no flag, no route), so only
    unicast discovery (Discovery Servers) can work."""
    e, s = f'{name}_edge', f'{name}_srv'
    ve, vs = f'{name[:10]}e', f'{name[:10]}s'
    down(name)
    _ip('netns', 'add', e)
    _ip('netns', 'add', s)
    _ip('link', 'add', ve, 'type', 'veth', 'peer', 'name', vs)
    for ns, dev, addr in ((e, ve, EDGE_ADDR), (s, vs, SRV_ADDR)):
        _ip('link', 'set', dev, 'netns', ns)
        _ip('-n', ns, 'addr', 'add', f'{addr}/24', 'dev', dev)
        _ip('-n', ns, 'link', 'set', 'lo', 'up', 'multicast', 'on' if multicast else 'off')
        _ip('-n', ns, 'link', 'set', dev, 'up', 'multicast', 'on' if multicast else 'off')
        if multicast:
            _ip('-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', dev)
    shape(name, mbps, 'add')


def down(name: str):
    for ns in (f'{name}_edge', f'{name}_srv'):
        subprocess.run(['ip', 'netns', 'del', ns], capture_output=True)


def exec_prefix(name: str, side: str):
    """Command prefix running a process in the 'edge' or 'srv' namespace."""
    return ['ip', 'netns', 'exec', f'{name}_{side}']


def dds_env() -> dict:
    """UDP only (the shipped UDP profile), so DDS crosses the shaped veth link: a shared-memory
    shortcut between the namespaces of one machine would bypass the link being measured. The
    server keeps it; the runner gives the robots' processes the shipped profile (``runner.
    _robot_env``: shared memory from the camera to the edge, UDP to the server)."""
    from fluxshard_msgs_py import dds
    return {'FASTDDS_DEFAULT_PROFILES_FILE': dds.profile_path('udp'),
            'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4', 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
