"""Message <-> array conversions: round trips on real frames and clear rejection of bad input."""

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from fluxshard_msgs_py import conversions
from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
from fluxshard_kernels import data, proxy
from fluxshard_kernels.yolo.processing import Detections


@pytest.fixture(scope='module')
def frame():
    return next(data.iter_frames('pets09-s2l1', limit=1))


@pytest.mark.parametrize('enc', ['bgr8', 'rgb8', 'mono8', 'bgra8', 'rgba8'])
def test_image_round_trip(frame, enc):
    if enc == 'mono8':
        src, want = frame[:, :, :1], frame[:, :, :1]
        arr = src
    elif enc == 'rgb8':
        arr, want = frame[:, :, ::-1], frame
    elif enc in ('bgra8', 'rgba8'):
        base = frame if enc == 'bgra8' else frame[:, :, ::-1]
        arr = np.concatenate([base, np.full(frame.shape[:2] + (1,), 255, np.uint8)], 2)
        want = frame
    else:
        arr, want = frame, frame
    msg = conversions.array_to_image(arr, Header(frame_id='cam'), enc)
    assert msg.header.frame_id == 'cam'
    out = conversions.image_to_array(msg)
    assert np.array_equal(out, want)


def test_row_padding_is_removed(frame):
    h, w = 10, 20
    padded = np.zeros((h, w * 3 + 4), np.uint8)
    padded[:, :w * 3] = frame[:h, :w].reshape(h, -1)
    msg = Image(height=h, width=w, encoding='bgr8', step=w * 3 + 4)
    msg.data = padded.tobytes()
    assert np.array_equal(conversions.image_to_array(msg), frame[:h, :w])


@pytest.mark.parametrize('kw, reason', [
    (dict(encoding='yuv444'), 'bad_encoding'),
    (dict(encoding='uyvy', width=3, step=6, data=b'\x00' * 24), 'bad_step'),
    (dict(encoding='32FC1'), 'bad_encoding'),
    (dict(height=0), 'empty_image'),
    (dict(step=10), 'bad_step'),
    (dict(data=b'\x00' * 47), 'truncated'),
    (dict(width=100000), 'too_large'),
])
def test_bad_images_are_rejected_with_a_reason(kw, reason):
    msg = Image(height=4, width=4, encoding='bgr8', step=12)
    msg.data = b'\x00' * 48
    for k, v in kw.items():
        setattr(msg, k, v)
    with pytest.raises(conversions.InputError) as e:
        conversions.image_to_array(msg)
    assert e.value.reason == reason and str(e.value)


def test_block_batch_round_trip_through_serialization(frame):
    from rclpy.serialization import deserialize_message, serialize_message
    from fluxshard_msgs.msg import BlockBatch
    pipe = EdgePipeline(EdgeConfig(codec='jpeg', block_size=16))
    step = pipe.step(frame)
    hdr = Header(frame_id='cam')
    msg = conversions.update_to_msg(step.update, step.payload, hdr, 'e1', step.seq, 1,
                                    step.codec, step.quality, step.dissimilarity, True,
                                    step.digest)
    back = deserialize_message(serialize_message(msg), BlockBatch)
    upd = conversions.msg_to_update(back)
    assert proxy.digest(proxy.apply(None, upd)) == bytes(back.state_digest) == step.digest
    assert back.key and back.grid_rows * back.grid_cols == upd.grid.count


def test_packed_motion_field_is_smaller_and_decodes_to_the_same_update(frame):
    from rclpy.serialization import deserialize_message, serialize_message
    from fluxshard_msgs.msg import BlockBatch
    pipe = EdgePipeline(EdgeConfig(codec='jpeg', local_inference=False))
    pipe.step(frame)
    moved = np.ascontiguousarray(np.roll(frame, (3, -5), (0, 1)))
    step = pipe.step(moved)
    assert step.update.mv_x is not None and np.asarray(step.update.mv_x).any()
    sizes, updates = {}, {}
    for pack in (True, False):
        msg = conversions.update_to_msg(step.update, step.payload, Header(), 'e1', step.seq, 2,
                                        step.codec, step.quality, step.dissimilarity, True,
                                        step.digest, pack=pack)
        raw = serialize_message(msg)
        sizes[pack] = len(raw)
        back = deserialize_message(raw, BlockBatch)
        assert (back.mv_packing == BlockBatch.MV_PACK_ZLIB8) == pack  # a small field: int8
        assert (len(back.mv_x) == 0) == pack
        updates[pack] = conversions.msg_to_update(back)
    assert sizes[True] < sizes[False] - 2 * step.update.grid.count  # the field shrinks
    for a in ('mv_x', 'mv_y', 'block_indices'):
        assert np.array_equal(getattr(updates[True], a), getattr(updates[False], a))
        assert np.array_equal(getattr(updates[True], a), getattr(step.update, a))


@pytest.mark.parametrize('mutate, match', [
    (lambda m: setattr(m, 'mv_packed', bytes(m.mv_packed)[:-3]), 'exactly'),
    (lambda m: setattr(m, 'mv_packed', b'not zlib at all'), 'not zlib'),
    (lambda m: setattr(m, 'mv_packed', bytes(m.mv_packed) + b'tail'), 'exactly'),
    # a decompression bomb: far more than the grid's field, never inflated in full
    (lambda m: setattr(m, 'mv_packed', __import__('zlib').compress(bytes(50_000_000))),
     'exactly'),
    (lambda m: setattr(m, 'mv_x', [1] * (m.grid_rows * m.grid_cols)), 'must be empty'),
    (lambda m: setattr(m, 'mv_packing', 7), 'unknown mv_packing'),
])
def test_bad_packed_motion_fields_are_proxy_errors(frame, mutate, match):
    pipe = EdgePipeline(EdgeConfig(codec='jpeg', local_inference=False))
    pipe.step(frame)
    step = pipe.step(np.ascontiguousarray(np.roll(frame, (3, -5), (0, 1))))
    msg = conversions.update_to_msg(step.update, step.payload, Header(), 'e1', step.seq, 2,
                                    step.codec, step.quality, step.dissimilarity, True,
                                    step.digest)
    conversions.msg_to_update(msg)  # the unmutated batch is fine
    mutate(msg)
    with pytest.raises(proxy.ProxyError, match=match):
        conversions.msg_to_update(msg)


def test_truncated_batch_payload_is_a_proxy_error(frame):
    pipe = EdgePipeline(EdgeConfig(codec='raw'))
    step = pipe.step(frame)
    msg = conversions.update_to_msg(step.update, step.payload[:-7], Header(), 'e1', 1, 1,
                                    step.codec, 0, step.dissimilarity, True, step.digest)
    with pytest.raises(proxy.ProxyError, match='raw payload'):
        conversions.msg_to_update(msg)


def test_detections_to_msg_center_size():
    det = Detections(np.array([[10, 20, 50, 100]], np.float32), np.array([0.9], np.float32),
                     np.array([0]))
    m = conversions.detections_to_msg(det, Header(frame_id='c'), 'e', 'server', 3)
    assert (m.center_x[0], m.center_y[0], m.size_x[0], m.size_y[0]) == (30, 60, 40, 80)
    assert list(m.class_ids) == ['0'] and abs(m.scores[0] - 0.9) < 1e-6
    boxes, scores, cls = conversions.boxes_from_msg(m)
    assert np.allclose(boxes, det.boxes)


def test_compressed_images_decode_and_bad_ones_are_rejected(frame):
    import cv2
    from sensor_msgs.msg import CompressedImage
    m = CompressedImage(format='png')
    m.data = cv2.imencode('.png', frame)[1].tobytes()
    assert np.array_equal(conversions.compressed_to_array(m), frame)
    for fmt, raw, reason in (('rgb8; jpeg compressed bgr8', b'\xff\xd8junk', 'undecodable'),
                             ('tiff', b'x', 'bad_format'), ('jpeg', b'', 'empty_image')):
        m = CompressedImage(format=fmt)
        m.data = raw
        with pytest.raises(conversions.InputError) as e:
            conversions.compressed_to_array(m)
        assert e.value.reason == reason


@pytest.mark.parametrize('enc, code', [('yuv422', 'UYVY'), ('uyvy', 'UYVY'),
                                       ('yuv422_yuy2', 'YUY2'), ('yuyv', 'YUY2')])
def test_packed_yuv422_cameras_are_converted_like_opencv(enc, code):
    import cv2
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (6, 8, 2), dtype=np.uint8)
    msg = Image(height=6, width=8, encoding=enc, step=16)
    msg.data = packed.tobytes()
    want = cv2.cvtColor(packed, getattr(cv2, f'COLOR_YUV2BGR_{code}'))
    assert np.array_equal(conversions.image_to_array(msg), want)


def test_max_side_agrees_with_the_proxy_model():
    from fluxshard_kernels import proxy
    assert conversions.MAX_SIDE == proxy.MAX_SIDE


def test_a_field_beyond_int8_packs_as_int16():
    mx = np.zeros(60, np.int64)
    my = mx.copy()
    mx[7], my[9] = 200, -129
    packing, packed = conversions.pack_motion(mx, my)
    from fluxshard_msgs.msg import BlockBatch
    assert packing == BlockBatch.MV_PACK_ZLIB
    bx, by = conversions.unpack_motion(packed, 60, packing)
    assert np.array_equal(bx, mx) and np.array_equal(by, my)
    mx[7], my[9] = 127, -128  # the int8 range's ends
    packing, packed = conversions.pack_motion(mx, my)
    assert packing == BlockBatch.MV_PACK_ZLIB8
    assert [np.array_equal(a, b) for a, b in
            zip(conversions.unpack_motion(packed, 60, packing), (mx, my))] == [True, True]
    with pytest.raises(proxy.ProxyError, match='exactly'):  # int8 bytes read as int16
        conversions.unpack_motion(packed, 60, BlockBatch.MV_PACK_ZLIB)


def _h264_batch(frame):
    pipe = EdgePipeline(EdgeConfig(codec='h264', local_inference=False))
    pipe.step(frame)
    moved = np.ascontiguousarray(frame.copy())
    moved[100:180, 200:330] = 255 - moved[100:180, 200:330]  # a changed region
    step = pipe.step(moved)
    assert step.codec == proxy.CODEC_H264 and len(step.update.block_indices) > 1
    return pipe, step


def test_h264_indices_travel_as_a_bitmap_and_decode_to_the_same_set(frame):
    from rclpy.serialization import deserialize_message, serialize_message
    from fluxshard_msgs.msg import BlockBatch
    _, step = _h264_batch(frame)
    idx = np.asarray(step.update.block_indices)
    assert not np.array_equal(idx, np.sort(idx))  # the edge ranks them: the order is dropped
    sizes, back = {}, {}
    for pack in (True, False):
        msg = conversions.update_to_msg(step.update, step.payload, Header(), 'e1', step.seq, 2,
                                        step.codec, step.quality, step.dissimilarity, True,
                                        step.digest, pack=pack)
        sizes[pack] = len(serialize_message(msg))
        back[pack] = deserialize_message(serialize_message(msg), BlockBatch)
    m = back[True]
    assert m.index_packing == BlockBatch.INDEX_PACK_BITMAP_ZLIB and len(m.block_indices) == 0
    assert sizes[True] < sizes[False] - 2 * idx.size  # 4 bytes an index, a bit a block
    got = conversions.unpack_indices(bytes(m.indices_packed), step.update.grid.count)
    assert np.array_equal(got, np.sort(idx))
    # each dissimilarity stays with its block
    d = np.clip(np.rint(step.dissimilarity), 0, 255).astype(np.uint8)
    assert dict(zip(got.tolist(), bytes(m.dissimilarity))) == dict(zip(idx.tolist(), d))


@pytest.mark.parametrize('mutate, match', [
    (lambda m: setattr(m, 'indices_packed', bytes(m.indices_packed)[:-2]), 'exactly'),
    (lambda m: setattr(m, 'indices_packed', b'junk'), 'not zlib'),
    (lambda m: setattr(m, 'indices_packed', __import__('zlib').compress(bytes(10**7))),
     'exactly'),
    (lambda m: setattr(m, 'block_indices', [1, 2]), 'must be empty'),
    (lambda m: setattr(m, 'index_packing', 9), 'unknown index_packing'),
    (lambda m: setattr(m, 'codec', proxy.CODEC_JPEG), 'need an H.264'),
    (lambda m: (setattr(m, 'index_packing', 0), setattr(m, 'block_indices', [1])),
     'index_packing is INDEX_PACK_NONE'),
])
def test_bad_packed_indices_are_proxy_errors(frame, mutate, match):
    _, step = _h264_batch(frame)
    msg = conversions.update_to_msg(step.update, step.payload, Header(), 'e1', step.seq, 2,
                                    step.codec, step.quality, step.dissimilarity, True,
                                    step.digest)
    mutate(msg)
    with pytest.raises(proxy.ProxyError, match=match):
        conversions.msg_to_update(msg, proxy.InterDecoder())


def test_a_bit_past_the_grid_is_a_proxy_error():
    import zlib
    count = 13  # two bytes, three unused bits
    good = zlib.compress(bytes([0b10000000, 0b00001000]))
    assert list(conversions.unpack_indices(good, count)) == [0, 12]
    with pytest.raises(proxy.ProxyError, match='past the grid'):
        conversions.unpack_indices(zlib.compress(bytes([0, 0b00000100])), count)
