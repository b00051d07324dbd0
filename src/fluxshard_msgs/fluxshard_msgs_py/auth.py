"""Authenticated link messages: per-edge keys, keyed BLAKE2b tags and replay checks.

Every ``BlockBatch`` and ``ProxyDelta`` carries ``auth_nonce`` (the sender's wall clock in ns,
strictly increasing per sender and topic) and ``auth_tag`` (keyed BLAKE2b-128 over a canonical
encoding of every other field - content, seq, stamp, nonce - see ``canonical``). The key is the
edge's 32-byte secret; the tag is personalised with the topic's role, so a message cannot be
moved from one topic (or direction) to another. The receiver rejects a message without a tag,
with a wrong tag (forged, or made with another edge's key), with a nonce not newer than the
last accepted one (replay), or with a nonce outside ``max_age_s`` of its own clock (a replay
after a restart).

Keys live in a text file, one ``<edge_id> <64 hex digits>`` per line (``#`` comments), readable
by its owner only; ``python -m fluxshard_msgs_py.auth generate`` writes one.
"""

import argparse
import array
import hashlib
import hmac
import os
import secrets
import stat
import struct
import sys
import threading
import time
from typing import Callable, Dict, Iterable, Optional

KEY_BYTES = 32
TAG_BYTES = 16
#: topic role -> BLAKE2b personalisation (one tag domain per topic and direction)
ROLES = {'block_batch': b'fluxshard/bb', 'proxy_delta': b'fluxshard/pd',
         'proxy_feedback': b'fluxshard/fb'}
MODES = ('mac', 'none')

#: rejection counter keys, in the order they are checked
REASONS = ('auth_missing', 'auth_bad_tag', 'auth_replay', 'auth_stale')


class KeyFileError(ValueError):
    """A key file that cannot be used (missing, readable by others, malformed)."""


def generate(edge_ids: Iterable[str]) -> Dict[str, bytes]:
    """A fresh random secret per edge id."""
    out = {}
    for e in edge_ids:
        _check_id(e)
        out[e] = secrets.token_bytes(KEY_BYTES)
    return out


def _check_id(edge_id: str):
    if not edge_id or any(c.isspace() for c in edge_id) or edge_id.startswith('#'):
        raise KeyFileError(f'edge id {edge_id!r}: must be non-empty, without spaces or #')


def save_keys(path: str, keys: Dict[str, bytes], overwrite: bool = False):
    """Write ``keys`` to ``path`` with mode 0600 (refuses to replace a file unless
    ``overwrite``)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f'{path} exists; pass --force to replace it') from None
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write('# FluxShard link keys: <edge_id> <hex secret>. Keep this file private.\n')
        for e, k in keys.items():
            _check_id(e)
            f.write(f'{e} {k.hex()}\n')


def load_keys(path: str) -> Dict[str, bytes]:
    """Read a key file; refuse one that group or others can read or write.

    Raises:
        KeyFileError: missing file, loose permissions, malformed line or duplicate edge id.
    """
    if not path:
        raise KeyFileError('security.mode is mac but security.key_file is empty: generate '
                           'keys with `python -m fluxshard_msgs_py.auth generate --out FILE '
                           "EDGE_ID...` or set security.mode: none (lab only)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f'key file {path} does not exist') from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f'key file {path} is accessible by group or others (mode '
                           f'{stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}')
    keys = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError('expected "<edge_id> <hex secret>"')
                key = bytes.fromhex(parts[1])
                if not 16 <= len(key) <= 64:
                    raise ValueError(f'secret has {len(key)} bytes, expected 16-64')
            except ValueError as e:
                raise KeyFileError(f'{path}:{n}: {e}') from None
            if parts[0] in keys:
                raise KeyFileError(f'{path}:{n}: edge id {parts[0]!r} appears twice')
            keys[parts[0]] = key
    if not keys:
        raise KeyFileError(f'key file {path} holds no keys')
    return keys


def tag(key: bytes, role: str, data: bytes) -> bytes:
    """Keyed BLAKE2b-128 of ``data`` for the topic ``role``."""
    return hashlib.blake2b(data, digest_size=TAG_BYTES, key=key, person=ROLES[role]).digest()


def canonical(msg) -> bytes:
    """Canonical bytes of every field of a ROS message except ``auth_tag``: field names,
    lengths and values in declaration order, fixed-width little-endian, floats at their wire
    width. (The middleware's own CDR serialization is not canonical: it leaves padding bytes
    uninitialised, so a re-serialized message does not reproduce the sender's bytes.)"""
    out = []
    _encode(msg, out, skip='auth_tag')
    return b''.join(out)


_SCALARS = {'boolean': '<?', 'octet': '<B', 'char': '<b', 'uint8': '<B', 'int8': '<b',
            'uint16': '<H', 'int16': '<h', 'uint32': '<I', 'int32': '<i', 'uint64': '<Q',
            'int64': '<q', 'float': '<f', 'double': '<d'}


def _encode(msg, out, skip=None):
    for name, typ in msg.get_fields_and_field_types().items():
        if name == skip:
            continue
        out.append(name.encode() + b'\0')
        _encode_value(getattr(msg, name), typ, out)


def _encode_value(v, typ, out):
    if typ in _SCALARS:
        out.append(struct.pack(_SCALARS[typ], v))
    elif typ.startswith(('string', 'wstring')):
        b = v.encode('utf-8')
        out.append(struct.pack('<Q', len(b)) + b)
    elif hasattr(v, 'get_fields_and_field_types'):
        _encode(v, out)
    elif isinstance(v, array.array):  # primitive sequences
        b = v.tobytes() if sys.byteorder == 'little' or v.itemsize == 1 else _swapped(v)
        out.append(struct.pack('<Q', len(v)) + v.typecode.encode() + b)
    elif isinstance(v, (bytes, bytearray)):
        out.append(struct.pack('<Q', len(v)) + bytes(v))
    elif hasattr(v, 'dtype'):  # fixed-size primitive arrays (numpy)
        b = v.astype(v.dtype.newbyteorder('<')).tobytes()
        out.append(struct.pack('<Q', len(v)) + v.dtype.str.encode() + b)
    else:  # sequences of strings or messages
        inner = typ[typ.index('<') + 1:typ.rindex('>')].split(',')[0] if '<' in typ else typ
        out.append(struct.pack('<Q', len(v)))
        for x in v:
            _encode_value(x, inner, out)


def _swapped(a: array.array) -> bytes:
    b = array.array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


class Signer:
    """Stamps ``auth_nonce`` and ``auth_tag`` on outgoing messages of one topic role
    (thread-safe)."""

    def __init__(self, key: bytes, role: str, clock: Callable[[], int] = time.time_ns):
        self.key, self.role, self._clock = key, role, clock
        self._last = 0
        self._lock = threading.Lock()

    def sign(self, msg):
        """Set the nonce and the tag of ``msg`` in place and return it."""
        with self._lock:
            self._last = max(self._clock(), self._last + 1)
            msg.auth_nonce = self._last
        msg.auth_tag = tag(self.key, self.role, canonical(msg))
        return msg


class Verifier:
    """Checks incoming messages of one topic role from one peer.

    Args:
        key: the edge's secret.
        role: topic role (a key of ``ROLES``).
        max_age_s: reject nonces further than this from the local clock (0 = no clock
            check; replays within a run are still rejected by the nonce order).
    """

    def __init__(self, key: bytes, role: str, max_age_s: float = 30.0,
                 clock: Callable[[], int] = time.time_ns):
        self.key, self.role, self.max_age_s, self._clock = key, role, max_age_s, clock
        self.last_nonce = 0
        self._lock = threading.Lock()

    def check(self, msg) -> Optional[tuple]:
        """None when ``msg`` is authentic and fresh (its nonce is then consumed); else
        ``(counter, explanation)`` with counter one of ``REASONS``."""
        got = bytes(msg.auth_tag)
        if not got:
            return 'auth_missing', 'message carries no authentication tag'
        want = tag(self.key, self.role, canonical(msg))
        if len(got) != TAG_BYTES or not hmac.compare_digest(got, want):
            return 'auth_bad_tag', 'authentication tag does not match this edge\'s key'
        nonce = int(msg.auth_nonce)
        if self.max_age_s > 0:
            skew = (nonce - self._clock()) / 1e9
            if abs(skew) > self.max_age_s:
                return 'auth_stale', (f'nonce is {skew:+.1f} s from this host\'s clock (limit '
                                      f'{self.max_age_s:g} s): a replay, or clocks out of sync '
                                      '(run NTP/chrony, or raise security.max_age_s)')
        with self._lock:
            if nonce <= self.last_nonce:
                return 'auth_replay', (f'nonce {nonce} is not newer than the last accepted '
                                       f'{self.last_nonce}: a replayed or reordered message')
            self.last_nonce = nonce
        return None


class PerSender:
    """Verifiers of one topic role kept per sender (e.g. per server of a fleet: each signs
    with the edge's key and its own nonce order). A sender's verifier is kept only once a
    message of it passed, so forgeries cannot grow the table; at most ``limit`` senders."""

    def __init__(self, make: Callable[[], Verifier], limit: int = 64):
        self._make, self._limit = make, limit
        self._by = {}
        self._lock = threading.Lock()

    def check(self, sender: str, msg) -> Optional[tuple]:
        with self._lock:
            v = self._by.get(sender)
        fresh = v is None
        if fresh:
            v = self._make()
        bad = v.check(msg)
        if bad is None and fresh:
            with self._lock:
                if len(self._by) >= self._limit:
                    self._by.pop(next(iter(self._by)))
                self._by.setdefault(sender, v)
        return bad


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='python -m fluxshard_msgs_py.auth',
        description='FluxShard link keys. generate: one secret per edge id into a new file '
                    '(mode 0600) for the server; extract: the line of one edge into its own '
                    'file for that robot.')
    sub = p.add_subparsers(dest='cmd', required=True)
    g = sub.add_parser('generate', help='new key file with a secret per edge id')
    g.add_argument('--out', required=True, help='key file to write (mode 0600)')
    g.add_argument('--force', action='store_true', help='replace an existing file')
    g.add_argument('edge_ids', nargs='+', help='edge ids (the robots\' edge_id, e.g. robot1)')
    x = sub.add_parser('extract', help="one edge's key into its own file (for that robot)")
    x.add_argument('key_file')
    x.add_argument('edge_id')
    x.add_argument('--out', required=True)
    x.add_argument('--force', action='store_true')
    a = p.parse_args(argv)
    try:
        if a.cmd == 'generate':
            save_keys(a.out, generate(a.edge_ids), a.force)
            print(f'wrote {len(a.edge_ids)} key(s) to {a.out} (mode 0600)')
        else:
            keys = load_keys(a.key_file)
            if a.edge_id not in keys:
                raise KeyFileError(f'{a.key_file} has no key for {a.edge_id!r}')
            save_keys(a.out, {a.edge_id: keys[a.edge_id]}, a.force)
            print(f'wrote the key of {a.edge_id} to {a.out} (mode 0600)')
    except KeyFileError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
