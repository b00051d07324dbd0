"""The Fast DDS configuration FluxShard ships for camera-sized messages.

``fastdds.xml`` (shared memory with a 64 MB segment plus UDPv4 with 16 MB socket buffers) makes
best-effort raw cameras of 720p and 1080p arrive whole between processes; ``fastdds-udp.xml``
(UDPv4 only) is for processes that must cross the network even on one machine (the live
replay's network namespaces). Both are installed in ``share/fluxshard_msgs/dds``.
"""

import os
from pathlib import Path

PROFILES = {'default': 'fastdds.xml', 'udp': 'fastdds-udp.xml'}
#: Variables that already choose Fast DDS transports: when one is set, nothing is changed.
CHOSEN_BY = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
             'FASTDDS_BUILTIN_TRANSPORTS')


#: Description of the launch files' ``dds_profile`` argument.
LAUNCH_HELP = ('Fast DDS profile (FASTDDS_DEFAULT_PROFILES_FILE): the shipped one carries raw '
               "camera frames over shared memory; give the camera driver's process the same")


def profile_path(kind: str = 'default') -> str:
    """Path of the ``kind`` profile ('default' or 'udp'): the installed share folder, else the
    source tree this module sits in.

    Raises:
        ValueError: unknown kind; FileNotFoundError: neither place holds the file.
    """
    if kind not in PROFILES:
        raise ValueError(f'DDS profile kind must be one of {", ".join(PROFILES)}, got {kind!r}')
    name = PROFILES[kind]
    places = []
    try:
        from ament_index_python.packages import get_package_share_directory
        places.append(Path(get_package_share_directory('fluxshard_msgs')) / 'dds' / name)
    except (ImportError, LookupError, ValueError):
        pass
    here = Path(__file__).resolve()
    places += [p / 'dds' / name for p in here.parents if (p / 'package.xml').is_file()][:1]
    for p in places:
        if p.is_file():
            return str(p)
    raise FileNotFoundError(f'Fast DDS profile {name} not found (looked in '
                            f'{", ".join(map(str, places)) or "no place"})')


def apply_default(env=None, kind: str = 'default') -> str:
    """Point ``env`` (default ``os.environ``) at the ``kind`` profile unless a variable of
    ``CHOSEN_BY`` already chooses the transports; returns the profile in effect ('' when the
    user chose built-in transports)."""
    env = os.environ if env is None else env
    if not any(env.get(k) for k in CHOSEN_BY):
        try:
            env['FASTDDS_DEFAULT_PROFILES_FILE'] = profile_path(kind)
        except FileNotFoundError:
            return ''
    return env.get('FASTDDS_DEFAULT_PROFILES_FILE') or env.get(
        'FASTRTPS_DEFAULT_PROFILES_FILE', '')


# --- Discovery without multicast: Fast DDS Discovery Servers ---------------------------------

#: Port a Discovery Server listens on when a spec names only its host (Fast DDS's default).
DISCOVERY_PORT = 11811
_NS = 'http://www.eprosima.com'


def parse_servers(spec: str) -> list:
    """``'10.0.0.2:11811,10.0.0.3'`` -> ``[('10.0.0.2', 11811), ('10.0.0.3', 11811)]``: IPv4
    addresses with an optional port (default ``DISCOVERY_PORT``), comma- or semicolon-separated
    (``ROS_DISCOVERY_SERVER`` uses ';').

    Raises:
        ValueError: an empty list, a host that is not an IPv4 address or a bad port, with the
        offending item named.
    """
    import ipaddress
    out = []
    for item in (s.strip() for s in spec.replace(';', ',').split(',')):
        if not item:
            continue
        host, _, port = item.partition(':')
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f'discovery server {item!r}: {host!r} is not an IPv4 address '
                             '(Fast DDS locators take addresses, not names)') from None
        try:
            p = int(port) if port else DISCOVERY_PORT
        except ValueError:
            p = -1
        if not 0 < p < 65536:
            raise ValueError(f'discovery server {item!r}: port must be 1-65535')
        out.append((host, p))
    if not out:
        raise ValueError(f'no discovery server in {spec!r} (expected HOST[:PORT],...)')
    return out


def discovery_profile(servers, kind: str = 'default', base: str = '') -> str:
    """The ``kind`` profile (or the profile file ``base``; its transports untouched) with
    every participant a Discovery Server *client* of ``servers`` (list of (host, port), or a
    spec for ``parse_servers``): no multicast discovery; a participant finds the others
    through whichever listed server answers, so one stopped server does not stop discovery.
    Returns the XML text.

    Raises:
        ValueError: a bad server list, or ``base`` without a default participant profile.
    """
    import xml.etree.ElementTree as ET
    if isinstance(servers, str):
        servers = parse_servers(servers)
    ET.register_namespace('', _NS)
    src = base or profile_path(kind)
    tree = ET.parse(src)

    def q(tag):
        return f'{{{_NS}}}{tag}'

    part = next((p for p in tree.getroot().iter(q('participant'))
                 if p.get('is_default_profile') == 'true'), None)
    if part is None:
        raise ValueError(f'{src}: no participant profile with is_default_profile="true" to '
                         'add the discovery servers to')
    rtps = part.find(q('rtps'))
    if rtps is None:
        rtps = ET.SubElement(part, q('rtps'))
    for old in rtps.findall(q('builtin')):
        rtps.remove(old)
    builtin = ET.Element(q('builtin'))
    rtps.insert(0, builtin)
    cfg = ET.SubElement(builtin, q('discovery_config'))
    ET.SubElement(cfg, q('discoveryProtocol')).text = 'CLIENT'
    lst = ET.SubElement(cfg, q('discoveryServersList'))
    for host, port in servers:
        udp = ET.SubElement(ET.SubElement(lst, q('locator')), q('udpv4'))
        ET.SubElement(udp, q('address')).text = host
        ET.SubElement(udp, q('port')).text = str(port)
    part.set('profile_name', f'{part.get("profile_name")}_discovery_client')
    ET.indent(tree)
    servers_txt = ', '.join(f'{h}:{p}' for h, p in servers)
    head = (f'<?xml version="1.0" encoding="UTF-8" ?>\n<!-- {Path(src).name} as a Discovery '
            f'Server client of {servers_txt} (python -m fluxshard_msgs_py.dds profile) -->\n')
    return head + ET.tostring(tree.getroot(), encoding='unicode') + '\n'


def write_discovery_profile(servers, path, kind: str = 'default', base: str = '') -> str:
    """Write ``discovery_profile`` to ``path``; returns the path."""
    text = discovery_profile(servers, kind, base)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return str(path)


def discovery_server_command(host: str = '0.0.0.0', port: int = DISCOVERY_PORT, env=None):
    """(argv, environment) running Fast DDS's ``fast-discovery-server`` on host:port, found
    beside this Python (the ros-fastdds wheel installs it, with its libraries in the wheel's
    ``ros_fastdds.libs``). The environment is ``env`` (default ``os.environ``) without the
    variables that choose client transports (``CHOSEN_BY``: a client profile would make the
    server a client), with the tool's libraries on ``LD_LIBRARY_PATH``.

    Raises:
        FileNotFoundError: the tool is not installed.
    """
    import shutil
    import sys
    import sysconfig
    exe = Path(sys.executable).parent / 'fast-discovery-server'
    if not exe.is_file():
        found = shutil.which('fast-discovery-server')
        if not found:
            raise FileNotFoundError('fast-discovery-server not found (pip install ros-fastdds, '
                                    'or the fastdds-tools package)')
        exe = Path(found)
    site = Path(sysconfig.get_paths()['purelib'])
    libs = [str(p) for p in (Path(sys.prefix) / 'lib', site / 'ros_fastdds.libs') if p.is_dir()]
    out = {k: v for k, v in (os.environ if env is None else env).items() if k not in CHOSEN_BY}
    if libs:
        out['LD_LIBRARY_PATH'] = ':'.join(libs + [out.get('LD_LIBRARY_PATH', '')]).rstrip(':')
    # '42' selects the tool's server mode (what `fastdds discovery` passes it)
    return [str(exe), '42', '-l', host, '-p', str(port)], out


#: Description of the launch files' ``discovery_servers`` argument.
DISCOVERY_HELP = ('Fast DDS Discovery Servers, HOST[:PORT] comma-separated (e.g. '
                  '10.0.0.2:11811,10.0.0.3:11811): discovery through them, no multicast; '
                  'empty = the usual multicast discovery')


def launch_profile(profile: str, servers: str) -> str:
    """The profile a launched process gets: ``profile`` itself when ``servers`` is empty,
    else a client profile of ``servers`` built from it (written once per content in the
    temporary folder)."""
    if not servers.strip():
        return profile
    import hashlib
    import tempfile
    text = discovery_profile(servers, base=profile)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f'fluxshard-fastdds-discovery-{digest}.xml'
    if not path.is_file():
        tmp = path.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


def main(argv=None) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(
        prog='python -m fluxshard_msgs_py.dds',
        description='Discovery without multicast: write a Fast DDS client profile (the '
                    "shipped transports + the discovery servers), or run a discovery server.")
    sub = p.add_subparsers(dest='cmd', required=True)
    pr = sub.add_parser('profile', help='write a client profile; point '
                        'FASTDDS_DEFAULT_PROFILES_FILE at it in every process')
    pr.add_argument('servers', help='HOST[:PORT],... (default port 11811)')
    pr.add_argument('--kind', choices=sorted(PROFILES), default='default',
                    help="shipped transports to keep: 'default' (shared memory + UDP) or "
                         "'udp' (network only)")
    pr.add_argument('--base', default='', help='start from this profile file instead')
    pr.add_argument('-o', '--output', default='-', help='file to write (default: stdout)')
    sv = sub.add_parser('server', help='run a Fast DDS Discovery Server (foreground)')
    sv.add_argument('listen', nargs='?', default=f'0.0.0.0:{DISCOVERY_PORT}',
                    help='HOST[:PORT] to listen on')
    a = p.parse_args(argv)
    try:
        if a.cmd == 'profile':
            if a.output == '-':
                sys.stdout.write(discovery_profile(a.servers, a.kind, a.base))
            else:
                print(write_discovery_profile(a.servers, a.output, a.kind, a.base))
            return 0
        listen = parse_servers(a.listen)
        if len(listen) != 1:
            raise ValueError(f'one address to listen on, got {a.listen!r}')
        (host, port), = listen
        argv2, env = discovery_server_command(host, port)
        os.execve(argv2[0], argv2, env)
    except (ValueError, OSError) as e:
        print(f'{p.prog}: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
