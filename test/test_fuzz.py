"""Property-based fuzzing of the server's input path (ROS-free part): any BlockBatch, random or
mutated from a real one, is either applied or rejected with a ProxyError / counted outcome -
never another exception, never an allocation beyond the size limits."""

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest

from fluxshard_msgs_py import conversions
from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
from fluxshard_kernels import data, proxy
from fluxshard_server.receive import receive_batch
from fluxshard_server.session import EdgeSession
from std_msgs.msg import Header


def _batches(codec):
    pipe = EdgePipeline(EdgeConfig(tau=5.0, codec=codec, local_inference=False))
    out = []
    for f in data.iter_frames('davis-blackswan', limit=3):
        s = pipe.step(np.ascontiguousarray(f[:96, :160]))
        out.append(conversions.update_to_msg(s.update, s.payload, Header(), 'e', s.seq, 1,
                                             s.codec, s.quality, s.dissimilarity, True,
                                             s.digest))
    return out


@pytest.fixture(scope='module')
def real_batches():
    return _batches('jpeg')


@pytest.fixture(scope='module', params=['jpeg', 'h264'])
def any_batches(request):
    """Real batches with block canvases (JPEG) and with inter-coded H.264 access units."""
    return _batches(request.param)


def _offer(session, msg):
    out = receive_batch(session, msg).outcome  # the server node's own input path
    return 'applied' if out.applied else out.counter


FIELDS = {
    'seq': st.integers(0, 2**64 - 1), 'height': st.integers(0, 2**32 - 1),
    'width': st.integers(0, 2**32 - 1), 'channels': st.integers(0, 255),
    'block_size': st.integers(0, 65535), 'grid_rows': st.integers(0, 65535),
    'grid_cols': st.integers(0, 65535), 'codec': st.integers(0, 255),
    'canvas_cols': st.integers(0, 65535), 'key': st.booleans(),
    'mv_packing': st.integers(0, 255), 'index_packing': st.integers(0, 255),
}


MUTATIONS = ['payload', 'block_indices', 'mv', 'mv_packed', 'indices_packed', 'digest']


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(FIELDS) + MUTATIONS),
       which=st.integers(0, 2), data_=st.data())
def test_mutated_real_batches_never_raise(any_batches, field, which, data_):
    import copy
    real_batches = any_batches
    msg = copy.deepcopy(real_batches[which])
    if field in FIELDS:
        setattr(msg, field, data_.draw(FIELDS[field]))
    elif field == 'payload':
        p = bytearray(bytes(msg.payload))
        cut = data_.draw(st.integers(0, len(p)))
        flip = data_.draw(st.integers(0, max(len(p) - 1, 0)))
        p = p[:cut] if data_.draw(st.booleans()) else p
        if p:
            p[flip % len(p)] ^= 0xFF
        msg.payload = bytes(p)
    elif field == 'block_indices':
        msg.block_indices = data_.draw(st.lists(st.integers(0, 2**32 - 1), max_size=50))
    elif field == 'mv':
        n = data_.draw(st.sampled_from([0, 3, msg.grid_rows * msg.grid_cols]))
        msg.mv_x = data_.draw(st.lists(st.integers(-32768, 32767), min_size=n, max_size=n))
        msg.mv_y = data_.draw(st.lists(st.integers(-32768, 32767), min_size=n, max_size=n))
    elif field in ('mv_packed', 'indices_packed'):
        p = bytearray(bytes(getattr(msg, field)) or b'x')
        cut = data_.draw(st.integers(0, len(p)))
        p = p[:cut] if data_.draw(st.booleans()) else p + data_.draw(st.binary(max_size=8))
        if p:
            p[data_.draw(st.integers(0, len(p) - 1))] ^= data_.draw(st.integers(1, 255))
        setattr(msg, field, bytes(p))
    else:
        msg.state_digest = data_.draw(st.binary(max_size=40))
    session = EdgeSession('e')
    for m in real_batches[:which]:
        _offer(session, m)
    result = _offer(session, msg)
    assert result in ('applied', 'stale_seq', 'seq_gap', 'unsynced', 'bad_batch',
                      'digest_mismatch', 'bad_digest')
    if session.state is not None:
        assert session.state.nbytes <= proxy.MAX_SIDE * proxy.MAX_SIDE * 3


def test_memory_stays_bounded_over_thousands_of_good_and_bad_batches(real_batches):
    """A long stream of applied, mutated and rejected batches does not grow the server's
    memory (the session keeps one proxy image, whatever arrives)."""
    import copy
    import gc
    import random
    import tracemalloc
    rng = random.Random(0)
    session = EdgeSession('e')
    outcomes = set()

    def run(start, n):
        for i in range(start, start + n):
            m = copy.deepcopy(real_batches[i % 3])  # key, then two deltas, repeated
            m.seq = i + 1
            r = rng.random()
            if r < 0.15:
                m.payload = bytes(m.payload)[:rng.randrange(len(m.payload) + 1)]
            elif r < 0.25:
                m.mv_packed = bytes(m.mv_packed)[::-1]
            elif r < 0.35:
                m.block_indices = [rng.randrange(2**32) for _ in range(rng.randrange(8))]
            elif r < 0.4:
                m.indices_packed = bytes(m.indices_packed)[::-1]
            elif r < 0.45:
                m.seq = rng.randrange(1, i + 2)  # duplicate / out of order
            outcomes.add(_offer(session, m))

    run(0, 300)  # warm-up: caches, interned strings, first allocations
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run(300, 3000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert 'applied' in outcomes and len(outcomes) >= 3, outcomes
    assert grown < 1_000_000, f'{grown} bytes retained after 3000 batches'
