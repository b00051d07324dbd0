"""Link authentication without DDS: key files, tags over every field, replay and freshness
checks, token buckets."""

import os
import stat

from fluxshard_msgs.msg import BlockBatch, ProxyDelta
from fluxshard_msgs_py import auth
from fluxshard_msgs_py.ratelimit import TokenBucket
import pytest
from rclpy.serialization import deserialize_message, serialize_message


@pytest.fixture
def keys():
    return auth.generate(['robot1', 'robot2'])


def _batch(seq=1):
    m = BlockBatch(edge_id='robot1', seq=seq, height=32, width=32, channels=3, block_size=16,
                   grid_rows=2, grid_cols=2, key=True)
    m.header.frame_id = 'cam'  # odd-length strings leave CDR padding: must not matter
    m.block_indices = [0, 3]
    m.dissimilarity = [9, 200]
    m.payload = os.urandom(5000)
    m.state_digest = bytes(range(16))
    return m


def _wire(m):
    """What the receiver gets: the message through the middleware's serialization."""
    return deserialize_message(serialize_message(m), type(m))


def test_key_file_round_trip_and_permissions(tmp_path, keys):
    path = str(tmp_path / 'k')
    auth.save_keys(path, keys)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert auth.load_keys(path) == keys
    with pytest.raises(auth.KeyFileError, match='exists'):
        auth.save_keys(path, keys)
    os.chmod(path, 0o644)
    with pytest.raises(auth.KeyFileError, match='chmod 600'):
        auth.load_keys(path)
    with pytest.raises(auth.KeyFileError, match='does not exist'):
        auth.load_keys(str(tmp_path / 'missing'))
    with pytest.raises(auth.KeyFileError, match='key_file is empty'):
        auth.load_keys('')
    bad = tmp_path / 'bad'
    bad.write_text('robot1 zz\n')
    bad.chmod(0o600)
    with pytest.raises(auth.KeyFileError, match='bad:1'):
        auth.load_keys(str(bad))
    bad.write_text(f'robot1 {"ab" * 32}\nrobot1 {"cd" * 32}\n')
    with pytest.raises(auth.KeyFileError, match='appears twice'):
        auth.load_keys(str(bad))


def test_keys_command_generates_and_extracts(tmp_path):
    path, one = str(tmp_path / 'all'), str(tmp_path / 'one')
    assert auth.main(['generate', '--out', path, 'robot1', 'robot2']) == 0
    assert auth.main(['extract', path, 'robot2', '--out', one]) == 0
    assert auth.load_keys(one) == {'robot2': auth.load_keys(path)['robot2']}
    assert auth.main(['extract', path, 'robot9', '--out', str(tmp_path / 'x')]) == 2
    assert auth.main(['generate', '--out', path, 'robot1']) == 2  # no silent overwrite


def test_genuine_message_verifies_after_the_wire(keys):
    m = auth.Signer(keys['robot1'], 'block_batch').sign(_batch())
    assert auth.Verifier(keys['robot1'], 'block_batch').check(_wire(m)) is None


def test_float32_fields_verify_at_wire_precision(keys):
    m = ProxyDelta(edge_id='robot1', kind=ProxyDelta.KIND_INFERENCE_DONE, seq=4,
                   server_compute_ms=12.3456789, reason='r')
    auth.Signer(keys['robot1'], 'proxy_feedback').sign(m)
    assert auth.Verifier(keys['robot1'], 'proxy_feedback').check(_wire(m)) is None


@pytest.mark.parametrize('field,value', [
    ('seq', 2), ('frame_index', 9), ('key', False), ('edge_id', 'robot2'), ('block_size', 8),
    ('payload', b'\x00' * 5000), ('block_indices', [0, 2]), ('state_digest', bytes(16)),
    ('auth_nonce', 1), ('mv_x', [1, 0, 0, 0])])
def test_any_changed_field_breaks_the_tag(keys, field, value):
    m = _wire(auth.Signer(keys['robot1'], 'block_batch').sign(_batch()))
    setattr(m, field, value)
    assert auth.Verifier(keys['robot1'], 'block_batch').check(m)[0] == 'auth_bad_tag'


def test_header_stamp_is_covered(keys):
    m = _wire(auth.Signer(keys['robot1'], 'block_batch').sign(_batch()))
    m.header.stamp.sec += 1
    assert auth.Verifier(keys['robot1'], 'block_batch').check(m)[0] == 'auth_bad_tag'


def test_other_key_other_role_missing_tag_are_rejected(keys):
    m = _wire(auth.Signer(keys['robot2'], 'block_batch').sign(_batch()))
    assert auth.Verifier(keys['robot1'], 'block_batch').check(m)[0] == 'auth_bad_tag'
    fb = _wire(auth.Signer(keys['robot1'], 'proxy_delta').sign(ProxyDelta(edge_id='robot1')))
    # an edge's own proxy_delta replayed as server feedback
    assert auth.Verifier(keys['robot1'], 'proxy_feedback').check(fb)[0] == 'auth_bad_tag'
    assert auth.Verifier(keys['robot1'], 'block_batch').check(_batch())[0] == 'auth_missing'
    m.auth_tag = b'\x01' * 3
    assert auth.Verifier(keys['robot2'], 'block_batch').check(m)[0] == 'auth_bad_tag'


def test_replays_and_stale_nonces_are_rejected(keys):
    clock = [10**18]
    s = auth.Signer(keys['robot1'], 'block_batch', clock=lambda: clock[0])
    v = auth.Verifier(keys['robot1'], 'block_batch', max_age_s=30, clock=lambda: clock[0])
    first = _wire(s.sign(_batch(1)))
    second = _wire(s.sign(_batch(2)))  # same clock reading: the nonce still increases
    assert second.auth_nonce == first.auth_nonce + 1
    assert v.check(first) is None and v.check(second) is None
    assert v.check(first)[0] == 'auth_replay' and v.check(second)[0] == 'auth_replay'
    # after a receiver restart the nonce memory is gone: the clock window catches old ones
    clock[0] += 31 * 10**9
    fresh = auth.Verifier(keys['robot1'], 'block_batch', max_age_s=30, clock=lambda: clock[0])
    assert fresh.check(first)[0] == 'auth_stale'
    assert fresh.check(_wire(s.sign(_batch(3)))) is None


def test_token_bucket():
    b = TokenBucket(rate=2.0, capacity=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(0.4) and b.take(0.5)   # 2 tokens/s: one more after 0.5 s
    assert b.available(100.0) == 3           # never above capacity
    assert not TokenBucket(0, 0).take(5.0)
    assert all(TokenBucket(float('inf'), 0).take(0.0) for _ in range(100))
    with pytest.raises(ValueError):
        TokenBucket(-1, 1)
