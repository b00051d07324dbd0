"""A shaped link between two network namespaces (root and iproute2 needed): the robots run in
``<name>_edge`` (10.231.0.1), the server in ``<name>_srv`` (10.231.0.2), joined by a veth pair
with a ``tc tbf`` token bucket at the given rate in both directions, so DDS itself crosses a
rate-limited link (this kernel has no ``sch_netem``: one-way delay, where wanted, is emulated
in the edge transport with ``link.delay_ms``). DDS must use UDP (no shared memory) and subnet
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


def up(name: str, mbps: float):
    """Create the namespaces and the shaped veth pair (raises CalledProcessError)."""
    e, s = f'{name}_edge', f'{name}_srv'
    ve, vs = f'{name[:10]}e', f'{name[:10]}s'
    down(name)
    _ip('netns', 'add', e)
    _ip('netns', 'add', s)
    _ip('link', 'add', ve, 'type', 'veth', 'peer', 'name', vs)
    for ns, dev, addr in ((e, ve, '10.231.0.1/24'), (s, vs, '10.231.0.2/24')):
        _ip('link', 'set', dev, 'netns', ns)
        _ip('-n', ns, 'addr', 'add', addr, 'dev', dev)
        _ip('-n', ns, 'link', 'set', 'lo', 'up')
        _ip('-n', ns, 'link', 'set', dev, 'up', 'multicast', 'on')
        _ip('-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', dev)
        burst = max(16384, int(mbps * 1e6 / 8 / 500))  # ~2 ms of traffic
        subprocess.run(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'root',
                        'tbf', 'rate', f'{int(mbps * 1000)}kbit', 'burst', str(burst),
                        'latency', '500ms'], check=True, capture_output=True, text=True)


def down(name: str):
    for ns in (f'{name}_edge', f'{name}_srv'):
        subprocess.run(['ip', 'netns', 'del', ns], capture_output=True)


def exec_prefix(name: str, side: str):
    """Command prefix running a process in the 'edge' or 'srv' namespace."""
    return ['ip', 'netns', 'exec', f'{name}_{side}']


def dds_env() -> dict:
    """UDP only (the shipped UDP profile), so DDS crosses the shaped veth link: a shared-memory
    shortcut between the namespaces of one machine would bypass the link being measured."""
    from fluxshard_msgs_py import dds
    return {'FASTDDS_DEFAULT_PROFILES_FILE': dds.profile_path('udp'),
            'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4', 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
