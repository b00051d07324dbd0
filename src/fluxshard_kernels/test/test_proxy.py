"""Proxy state: pack/encode/decode/apply round trips, determinism, digests, rejection."""

import numpy as np
import pytest

from fluxshard_kernels import blocks, data, proxy
from fluxshard_kernels.blocks import BlockGrid


@pytest.fixture(scope='module')
def frames():
    return list(data.iter_frames('davis-parkour', limit=3))


def _upd(img, bs, idx, codec=proxy.CODEC_RAW, key=False, mv=None):
    grid = BlockGrid(img.shape[0], img.shape[1], bs)
    mvx, mvy = (None, None) if mv is None else mv
    return proxy.build_update(img, grid, np.asarray(idx), codec, 90, mvx, mvy, key)


@pytest.mark.parametrize('bs', [8, 16, 32])
@pytest.mark.parametrize('codec', [proxy.CODEC_RAW, proxy.CODEC_PNG])
def test_key_batch_of_all_blocks_reconstructs_frame_exactly(frames, bs, codec):
    img = frames[0]  # 854x480: partial border blocks at every size
    grid = BlockGrid(img.shape[0], img.shape[1], bs)
    payload, cols, upd = _upd(img, bs, np.arange(grid.count), codec, key=True)
    state = proxy.apply(None, upd)
    assert state.shape == img.shape and np.array_equal(state, img)
    # the receiver side: decode the wire bytes again
    shape = proxy.canvas_shape(grid.count, cols, bs, 3)
    again = proxy.decode_canvas(payload, codec, shape)
    assert np.array_equal(again, upd.canvas)


def test_jpeg_both_sides_hold_identical_bytes(frames):
    img = frames[0]
    grid = BlockGrid(img.shape[0], img.shape[1], 16)
    payload, cols, upd = _upd(img, 16, np.arange(grid.count), proxy.CODEC_JPEG, key=True)
    edge = proxy.apply(None, upd)
    recv = proxy.ProxyUpdate(img.shape[0], img.shape[1], 3, 16, np.arange(grid.count),
                             proxy.decode_canvas(payload, proxy.CODEC_JPEG,
                                                 upd.canvas.shape), cols, key=True)
    server = proxy.apply(None, recv)
    assert proxy.digest(edge) == proxy.digest(server)
    assert np.abs(edge.astype(int) - img).mean() < 3.0  # lossy but close


def test_partial_update_only_touches_carried_blocks(frames):
    a, b = frames[0], frames[1]
    grid = BlockGrid(a.shape[0], a.shape[1], 16)
    _, _, key = _upd(a, 16, np.arange(grid.count), key=True)
    s0 = proxy.apply(None, key)
    idx = np.array([0, grid.cols - 1, grid.count - 1, 17])
    _, _, upd = _upd(b, 16, idx)
    s1 = proxy.apply(s0, upd)
    assert np.array_equal(s0, proxy.apply(None, key)), 'apply must not modify its input'
    changed = grid.expand(np.isin(np.arange(grid.count), idx))
    assert np.array_equal(s1[changed], b[changed])
    assert np.array_equal(s1[~changed], a[~changed])


def test_integer_mv_warp_is_exact_shift():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    grid = BlockGrid(70, 90, 16)
    mvx = np.full(grid.count, 3)
    mvy = np.full(grid.count, -2)
    out = blocks.warp_image_int(img, grid, mvx, mvy)
    assert np.array_equal(out[2:, :87], img[:68, 3:])
    # clamped at the border
    assert np.array_equal(out[0], img[0, np.clip(np.arange(90) + 3, 0, 89)])


def test_same_inputs_same_digest_and_sequence_changes_it(frames):
    grid = BlockGrid(frames[0].shape[0], frames[0].shape[1], 16)
    states = []
    for _ in range(2):
        s = None
        for i, f in enumerate(frames):
            mv = (np.full(grid.count, i, np.int64), np.zeros(grid.count, np.int64))
            _, _, u = _upd(f, 16, np.arange(0, grid.count, 3), proxy.CODEC_JPEG, key=(i == 0),
                           mv=mv)
            s = proxy.apply(s, u)
        states.append(proxy.digest(s))
    assert states[0] == states[1]
    assert len(states[0]) == 16


@pytest.mark.parametrize('mutate, match', [
    (dict(block_indices=np.array([10**6])), 'out of range'),
    (dict(block_indices=np.array([1, 1])), 'duplicate'),
    (dict(block_size=12), 'block_size'),
    (dict(channels=2), 'channels'),
    (dict(height=0), 'frame size'),
    (dict(mv_x=np.zeros(5, np.int64), mv_y=np.zeros(5, np.int64)), 'one per block'),
    (dict(mv_x=np.full(50, 5000), mv_y=np.zeros(50, np.int64)), "beyond"),
    (dict(canvas=np.zeros((32, 32, 3), np.uint8)), "canvas"),
])
def test_malformed_updates_are_rejected_with_reason(mutate, match):
    img = np.zeros((80, 160, 3), np.uint8)  # 5x10 grid = 50 blocks at 16; 60 is wrong too
    _, _, u = _upd(img, 16, np.array([0, 1]), key=True)
    fields = dict(u.__dict__)
    fields.update(mutate)
    with pytest.raises(proxy.ProxyError, match=match):
        proxy.apply(None, proxy.ProxyUpdate(**fields))


def test_non_key_first_batch_and_geometry_change_need_a_key():
    img = np.zeros((32, 32, 3), np.uint8)
    _, _, u = _upd(img, 16, np.array([0]))
    with pytest.raises(proxy.ProxyError, match='key batch'):
        proxy.apply(None, u)
    with pytest.raises(proxy.ProxyError, match='geometry'):
        proxy.apply(np.zeros((48, 32, 3), np.uint8), u)


def test_decode_rejects_truncated_and_garbage_payloads():
    with pytest.raises(proxy.ProxyError, match='expected'):
        proxy.decode_canvas(b'\x00' * 10, proxy.CODEC_RAW, (16, 16, 3))
    with pytest.raises(proxy.ProxyError, match='not a decodable'):
        proxy.decode_canvas(b'\xff\xd8garbage', proxy.CODEC_JPEG, (16, 16, 3))
    with pytest.raises(proxy.ProxyError, match='codec'):
        proxy.decode_canvas(b'x', 9, (16, 16, 3))
