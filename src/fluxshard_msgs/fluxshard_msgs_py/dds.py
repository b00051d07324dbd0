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
