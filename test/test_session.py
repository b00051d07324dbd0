"""Server session: ordering, gaps, duplicates, digest mismatch, bad batches -> resync."""

import numpy as np

from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
from fluxshard_kernels import data, proxy
from fluxshard_server.session import EdgeSession


def _steps(n, **cfg):
    pipe = EdgePipeline(EdgeConfig(**cfg))
    return [pipe.step(f) for f in data.iter_frames('davis-blackswan', limit=n)]


def test_in_order_stream_stays_in_sync():
    s = EdgeSession('e')
    for st in _steps(4, tau=5.0, codec='jpeg'):
        out = s.offer(st.seq, st.update, st.digest)
        assert out.applied and not out.resync, out.reason
        assert s.digest == st.digest


def test_gap_duplicate_and_recovery_by_key():
    steps = _steps(4, tau=5.0, codec='raw')
    s = EdgeSession('e')
    assert s.offer(1, steps[0].update, steps[0].digest).applied
    dup = s.offer(1, steps[0].update, steps[0].digest)
    assert not dup.applied and dup.counter == 'stale_seq' and not dup.resync
    gap = s.offer(3, steps[2].update, steps[2].digest)
    assert not gap.applied and gap.resync and 'gap' in gap.reason
    later = s.offer(4, steps[3].update, steps[3].digest)
    assert not later.applied and later.counter == 'unsynced'
    # the edge answers with a key batch
    pipe = EdgePipeline(EdgeConfig(tau=5.0, codec='raw'))
    pipe.seq = 4
    key = pipe.step(next(data.iter_frames('davis-blackswan', limit=1)))
    assert key.key
    assert s.offer(key.seq, key.update, key.digest).applied and s.synced


def test_digest_mismatch_requests_resync():
    st = _steps(1, codec='raw')[0]
    s = EdgeSession('e')
    out = s.offer(1, st.update, b'\x00' * 16)
    assert out.applied and out.resync and out.counter == 'digest_mismatch'
    assert not s.synced


def test_unappliable_batch_requests_resync():
    steps = _steps(2, tau=5.0, codec='raw')
    s = EdgeSession('e')
    s.offer(1, steps[0].update, steps[0].digest)
    u = steps[1].update
    bad = proxy.ProxyUpdate(u.height + 16, u.width, u.channels, u.block_size,
                            np.array([], np.int64), np.zeros((0, 16, 3), np.uint8), 1)
    out = s.offer(2, bad, b'\x00' * 16)
    assert not out.applied and out.resync and out.counter == 'bad_batch'
    out = s.offer(2, bad, b'')
    assert not out.applied and out.counter == 'bad_digest'
