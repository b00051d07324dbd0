"""All ROS message <-> array conversion for FluxShard (edge, server and result consumers use
this one module).

Imports message types only (no rclpy), so it is testable without DDS. The BlockBatch helpers
need ``fluxshard_kernels`` (the proxy model; both node packages have it) and import it on first
use, so a consumer of the result topics needs numpy and the messages only.
"""

import array
from typing import Optional, Tuple, TYPE_CHECKING
import zlib

import numpy as np

from fluxshard_msgs.msg import BlockBatch, DetectionArray, KeypointArray, LabelMap
from sensor_msgs.msg import Image

if TYPE_CHECKING:  # pragma: no cover
    from fluxshard_kernels import proxy

#: Encodings accepted from cameras -> (channels in the message, conversion to proxy image).
_ENCODINGS = {
    'bgr8': 3, 'rgb8': 3, 'bgra8': 4, 'rgba8': 4, 'mono8': 1, '8UC1': 1, '8UC3': 3,
    # packed 4:2:2, 2 bytes per pixel: ROS 'yuv422' is UYVY (usb_cam's default),
    # 'yuv422_yuy2' / 'yuyv' is YUYV (sensor_msgs image_encodings)
    'yuv422': 2, 'uyvy': 2, 'yuv422_yuy2': 2, 'yuyv': 2,
}
_YUV422 = {'yuv422': 'UYVY', 'uyvy': 'UYVY', 'yuv422_yuy2': 'YUY2', 'yuyv': 'YUY2'}


#: Largest accepted image side (the same as fluxshard_kernels.proxy.MAX_SIDE; a test checks).
MAX_SIDE = 8192


def _proxy():
    from fluxshard_kernels import proxy
    return proxy


def _seq(typecode: str, values) -> array.array:
    """numpy/sequence -> array.array, the type rclpy stores primitive sequences as."""
    dt = {'B': np.uint8, 'h': np.int16, 'H': np.uint16, 'I': np.uint32, 'f': np.float32}[typecode]
    out = array.array(typecode)
    out.frombytes(np.ascontiguousarray(np.asarray(values, dtype=dt)).tobytes())
    return out


class InputError(ValueError):
    """An input message FluxShard cannot use; ``reason`` is a short counter key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def image_to_array(msg: Image, max_side: int = MAX_SIDE) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) BGR uint8 (color encodings) or (H, W, 1) mono8.

    Raises:
        InputError: unsupported encoding, zero or huge size, or a data length that does not
            match height * step.
    """
    enc = msg.encoding
    if enc not in _ENCODINGS:
        raise InputError('bad_encoding', f'unsupported image encoding {enc!r}; expected one of '
                         f'{", ".join(sorted(_ENCODINGS))}')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise InputError('empty_image', f'image has zero size ({w}x{h})')
    if h > max_side or w > max_side:
        raise InputError('too_large', f'image {w}x{h} exceeds the {max_side} px limit')
    c = _ENCODINGS[enc]
    if step < w * c:
        raise InputError('bad_step', f'step {step} < width {w} x {c} bytes for {enc}')
    data = msg.data
    n = len(data)
    if n < h * step:
        raise InputError('truncated', f'image data has {n} bytes, expected {h * step} '
                         f'({h} rows x step {step})')
    buf = np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)
    arr = buf[:h * step].reshape(h, step)[:, :w * c].reshape(h, w, c)
    if msg.is_bigendian not in (0, 1, False, True):
        raise InputError('bad_endianness', 'is_bigendian must be 0 or 1')
    if enc in _YUV422:
        import cv2
        if w % 2:
            raise InputError('bad_step', f'{enc} needs an even width, got {w}')
        code = getattr(cv2, f'COLOR_YUV2BGR_{_YUV422[enc]}')
        return cv2.cvtColor(np.ascontiguousarray(arr), code)
    if enc in ('rgb8',):
        return np.ascontiguousarray(arr[:, :, ::-1])
    if enc == 'rgba8':
        return np.ascontiguousarray(arr[:, :, 2::-1])
    if enc == 'bgra8':
        return np.ascontiguousarray(arr[:, :, :3])
    return np.ascontiguousarray(arr)


def compressed_to_array(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png) -> (H, W, 3) BGR uint8.

    Raises:
        InputError: empty data, unsupported format, or undecodable bytes.
    """
    import cv2
    fmt = (msg.format or '').lower()
    if not any(k in fmt for k in ('jpeg', 'jpg', 'png')):
        raise InputError('bad_format', f'unsupported compressed format {msg.format!r}; '
                         "expected jpeg or png (or 'h264' with camera.transport h264)")
    buf = np.frombuffer(memoryview(msg.data).cast('B'), dtype=np.uint8)
    if buf.size == 0:
        raise InputError('empty_image', 'compressed image has no data')
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise InputError('undecodable', f'{buf.size} bytes of {msg.format!r} do not decode')
    return img


def array_to_compressed(arr: np.ndarray, header, fmt: str = 'jpeg', quality: int = 90,
                        encoder=None):
    """(H, W, 3) BGR uint8 -> sensor_msgs/CompressedImage: 'jpeg' (``quality``), 'png'
    (lossless, fast level) or 'h264' (one access unit from ``encoder``, an H264Encoder)."""
    import cv2
    from sensor_msgs.msg import CompressedImage
    msg = CompressedImage(header=header, format=fmt)
    if fmt == 'h264':
        if encoder is None:
            raise ValueError("format 'h264' needs an H264Encoder")
        msg.data = encoder.encode(arr)
    elif fmt in ('jpeg', 'png'):
        ext, opt = (('.png', [cv2.IMWRITE_PNG_COMPRESSION, 1]) if fmt == 'png'
                    else ('.jpg', [cv2.IMWRITE_JPEG_QUALITY, int(quality)]))
        msg.data = cv2.imencode(ext, arr, opt)[1].tobytes()
    else:
        raise ValueError(f"format must be 'jpeg', 'png' or 'h264', got {fmt!r}")
    return msg


class H264Input:
    """A stream of ``CompressedImage`` H.264 access units (format 'h264') -> (BGR frame, codec
    MVs of the frame or None); after an undecodable unit it restarts at the next key frame.

    Raises (per call):
        InputError: wrong format, undecodable data, or no frame yet.
    """

    def __init__(self):
        self._dec = None

    def __call__(self, msg):
        from fluxshard_kernels.codec_mv import H264Decoder
        if 'h264' not in (msg.format or '').lower():
            raise InputError('bad_format', f'format {msg.format!r} on an h264 transport; '
                             "expected 'h264'")
        if self._dec is None:
            self._dec = H264Decoder()
        try:
            out = self._dec.decode(bytes(msg.data))
        except ValueError as e:
            self._dec = None
            raise InputError('undecodable', str(e)) from e
        if not out:
            raise InputError('no_frame', 'H.264 data produced no frame yet')
        return out[-1]


def array_to_image(arr: np.ndarray, header, encoding: Optional[str] = None) -> Image:
    """(H, W, 3) BGR / (H, W[, 1]) mono / (H, W) uint16 -> sensor_msgs/Image with ``header``."""
    a = np.ascontiguousarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if encoding is None:
        if a.dtype == np.uint16:
            encoding = 'mono16'
        else:
            encoding = 'bgr8' if a.ndim == 3 else 'mono8'
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.strides[0])
    msg.data = _seq('B', a.reshape(-1).view(np.uint8))
    return msg


def pack_motion(mv_x, mv_y) -> Tuple[int, bytes]:
    """(BlockBatch.MV_PACK_ZLIB8 or MV_PACK_ZLIB, zlib of the field [mv_x, mv_y]): int8 when
    every component fits, else int16 little-endian."""
    field = np.concatenate([np.asarray(mv_x), np.asarray(mv_y)])
    if field.size == 0 or (field.min() >= -128 and field.max() <= 127):
        return BlockBatch.MV_PACK_ZLIB8, zlib.compress(field.astype(np.int8).tobytes(), 9)
    return BlockBatch.MV_PACK_ZLIB, zlib.compress(field.astype('<i2').tobytes(), 9)


def _inflate(packed: bytes, want: int, what: str) -> bytes:
    """Exactly ``want`` bytes inflated from zlib ``packed``; ProxyError on anything else (never
    inflates beyond ``want`` + 1 bytes: a decompression bomb costs nothing)."""
    proxy = _proxy()
    d = zlib.decompressobj()
    try:
        raw = d.decompress(packed, want + 1)
    except zlib.error as e:
        raise proxy.ProxyError(f'{what} is not zlib data: {e}') from None
    if len(raw) != want or d.unconsumed_tail or d.unused_data or not d.eof:
        raise proxy.ProxyError(f'{what} does not hold exactly {want} bytes')
    return raw


def unpack_motion(packed: bytes, count: int, packing: int = BlockBatch.MV_PACK_ZLIB
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of pack_motion for a grid of ``count`` blocks; ProxyError on anything else."""
    dtype = np.int8 if packing == BlockBatch.MV_PACK_ZLIB8 else np.dtype('<i2')
    width = np.dtype(dtype).itemsize
    raw = _inflate(packed, 2 * width * count,
                   f'mv_packed (exactly {count} block vectors, {2 * width * count} bytes)')
    field = np.frombuffer(raw, dtype=dtype).astype(np.int64)
    return field[:count], field[count:]


def pack_indices(indices, count: int) -> bytes:
    """zlib of the row-major bitmap of ``indices`` on a grid of ``count`` blocks
    (BlockBatch.INDEX_PACK_BITMAP_ZLIB)."""
    bits = np.zeros(count, bool)
    bits[np.asarray(indices, np.int64)] = True
    return zlib.compress(np.packbits(bits).tobytes(), 9)


def unpack_indices(packed: bytes, count: int) -> np.ndarray:
    """Ascending block indices of a packed bitmap; ProxyError unless it holds exactly the
    grid's ceil(count / 8) bytes with the unused trailing bits zero."""
    proxy = _proxy()
    nbytes = -(-count // 8)
    raw = _inflate(packed, nbytes, f'indices_packed (a bitmap of {count} blocks)')
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))
    if bits[count:].any():
        raise proxy.ProxyError(f'indices_packed sets a bit past the grid\'s {count} blocks')
    return np.flatnonzero(bits[:count]).astype(np.int64)


def update_to_msg(update: 'proxy.ProxyUpdate', payload: bytes, header, edge_id: str, seq: int,
                  frame_index: int, codec: int, quality: int, dissimilarity: np.ndarray,
                  sparse_inference_requested: bool, state_digest: bytes,
                  pack: bool = True) -> BlockBatch:
    """Build the BlockBatch that carries ``update`` (whose canvas was encoded into ``payload``);
    unless ``pack`` is False the motion field is zlib-packed and an H.264 batch's indices (a
    set: the blocks to recompute) travel as a zlib bitmap, ascending, with their
    dissimilarities in that order."""
    m = BlockBatch()
    m.header = header
    m.edge_id = edge_id
    m.seq = int(seq)
    m.frame_index = int(frame_index)
    m.height, m.width, m.channels = int(update.height), int(update.width), int(update.channels)
    g = update.grid
    m.block_size, m.grid_rows, m.grid_cols = int(g.block_size), int(g.rows), int(g.cols)
    if update.mv_x is not None and np.asarray(update.mv_x).any() or \
            update.mv_y is not None and np.asarray(update.mv_y).any():
        if pack:
            m.mv_packing, packed = pack_motion(update.mv_x, update.mv_y)
            m.mv_packed = _seq('B', np.frombuffer(packed, dtype=np.uint8))
        else:
            m.mv_x = _seq('h', update.mv_x)
            m.mv_y = _seq('h', update.mv_y)
    m.mv_reference = BlockBatch.MV_REF_PROXY
    idx = np.asarray(update.block_indices, np.int64).reshape(-1)
    d = np.clip(np.rint(np.asarray(dissimilarity, dtype=np.float64)), 0, 255).astype(np.uint8)
    if pack and codec == BlockBatch.CODEC_H264 and idx.size:
        order = np.argsort(idx, kind='stable')
        m.index_packing = BlockBatch.INDEX_PACK_BITMAP_ZLIB
        m.indices_packed = _seq('B', np.frombuffer(pack_indices(idx, g.count), np.uint8))
        idx, d = idx[order], d.reshape(-1)[order]
    else:
        m.block_indices = _seq('I', idx)
    m.dissimilarity = _seq('B', d)
    m.codec = int(codec)
    m.quality = int(quality)
    m.canvas_cols = int(update.canvas_cols)
    m.payload = _seq('B', np.frombuffer(payload, dtype=np.uint8))
    m.sparse_inference_requested = bool(sparse_inference_requested)
    m.key = bool(update.key)
    m.state_digest = _seq('B', np.frombuffer(state_digest, dtype=np.uint8))
    return m


def msg_to_update(m: BlockBatch, decoder=None) -> 'proxy.ProxyUpdate':
    """BlockBatch -> ProxyUpdate with the payload decoded; raises ProxyError on bad content.
    An inter-coded (CODEC_H264) batch needs the session's ``decoder`` (a proxy.InterDecoder),
    which it advances: offer it only batches the session will apply."""
    proxy = _proxy()
    if m.block_size not in (8, 16, 32):
        raise proxy.ProxyError(f'block_size must be 8, 16 or 32, got {m.block_size}')
    if not (0 < m.height <= proxy.MAX_SIDE and 0 < m.width <= proxy.MAX_SIDE):
        raise proxy.ProxyError(f'frame size {m.height}x{m.width} outside 1..{proxy.MAX_SIDE}')
    grid_rows = -(-m.height // m.block_size)
    grid_cols = -(-m.width // m.block_size)
    if (m.grid_rows, m.grid_cols) != (grid_rows, grid_cols):
        raise proxy.ProxyError(f'grid {m.grid_rows}x{m.grid_cols} does not match '
                               f'{m.height}x{m.width} at block size {m.block_size}')
    if m.channels not in (1, 3):
        raise proxy.ProxyError(f'channels must be 1 or 3, got {m.channels}')
    if m.index_packing == BlockBatch.INDEX_PACK_BITMAP_ZLIB:
        if m.codec != proxy.CODEC_H264:
            raise proxy.ProxyError('packed indices need an H.264 payload (a canvas follows '
                                   'the indices\' order)')
        if len(m.block_indices):
            raise proxy.ProxyError('block_indices must be empty when the indices are in '
                                   'indices_packed')
        idx = unpack_indices(bytes(m.indices_packed), grid_rows * grid_cols)
    elif m.index_packing == BlockBatch.INDEX_PACK_NONE:
        if len(m.indices_packed):
            raise proxy.ProxyError('indices_packed is set but index_packing is INDEX_PACK_NONE')
        idx = np.asarray(m.block_indices, dtype=np.int64)
    else:
        raise proxy.ProxyError(f'unknown index_packing {m.index_packing}')
    if len(m.dissimilarity) != idx.size:
        raise proxy.ProxyError(f'{len(m.dissimilarity)} dissimilarity values for '
                               f'{idx.size} blocks')
    inter = m.codec == proxy.CODEC_H264
    if inter and m.canvas_cols != 0:
        raise proxy.ProxyError(f'canvas_cols must be 0 for an H.264 payload, got '
                               f'{m.canvas_cols}')
    if not inter and (m.canvas_cols <= 0 or m.canvas_cols > 4096):
        raise proxy.ProxyError(f'canvas_cols {m.canvas_cols} outside 1..4096')
    if idx.size > grid_rows * grid_cols:
        raise proxy.ProxyError(f'{idx.size} blocks carried, the grid has '
                               f'{grid_rows * grid_cols}')
    frame = canvas = None
    if not inter:
        shape = proxy.canvas_shape(idx.size, m.canvas_cols, m.block_size, m.channels)
        canvas = proxy.decode_canvas(bytes(m.payload), m.codec, shape)
    if m.mv_packing in (BlockBatch.MV_PACK_ZLIB, BlockBatch.MV_PACK_ZLIB8):
        if len(m.mv_x) or len(m.mv_y):
            raise proxy.ProxyError('mv_x / mv_y must be empty when the field is in mv_packed')
        mvx, mvy = (unpack_motion(bytes(m.mv_packed), grid_rows * grid_cols, m.mv_packing)
                    if len(m.mv_packed) else (None, None))
    elif m.mv_packing == BlockBatch.MV_PACK_NONE:
        if len(m.mv_packed):
            raise proxy.ProxyError('mv_packed is set but mv_packing is MV_PACK_NONE')
        mvx = np.asarray(m.mv_x, dtype=np.int64) if len(m.mv_x) else None
        mvy = np.asarray(m.mv_y, dtype=np.int64) if len(m.mv_y) else None
    else:
        raise proxy.ProxyError(f'unknown mv_packing {m.mv_packing}')
    if inter:  # checked all else first: the decoder moves on only for a well-formed batch
        if decoder is None:
            raise proxy.ProxyError('an H.264 payload needs the session decoder')
        frame = decoder.decode(bytes(m.payload), int(m.height), int(m.width), int(m.channels),
                               bool(m.key))
    upd = proxy.ProxyUpdate(int(m.height), int(m.width), int(m.channels), int(m.block_size),
                            idx, canvas, int(m.canvas_cols), mvx, mvy, bool(m.key), frame)
    proxy.validate(upd)
    return upd


def detections_to_msg(det, header, edge_id: str, computed_by: str, frame_index: int,
                      with_masks: bool = False) -> DetectionArray:
    """fluxshard_kernels Detections -> DetectionArray (center/size boxes, source pixels)."""
    m = DetectionArray()
    m.header = header
    m.edge_id, m.computed_by, m.frame_index = edge_id, computed_by, int(frame_index)
    b = np.asarray(det.boxes, dtype=np.float32).reshape(-1, 4)
    m.class_ids = [str(int(c)) for c in det.class_ids]
    m.scores = _seq('f', det.scores)
    m.center_x = _seq('f', (b[:, 0] + b[:, 2]) / 2)
    m.center_y = _seq('f', (b[:, 1] + b[:, 3]) / 2)
    m.size_x = _seq('f', b[:, 2] - b[:, 0])
    m.size_y = _seq('f', b[:, 3] - b[:, 1])
    if with_masks:
        m.mask_labels = _seq('H', np.arange(1, len(det) + 1))
    return m


def keypoints_to_msg(det, header, edge_id: str, computed_by: str,
                     frame_index: int) -> KeypointArray:
    """Pose Detections -> KeypointArray (17 COCO keypoints per person, flattened)."""
    m = KeypointArray()
    m.header = header
    m.edge_id, m.computed_by, m.frame_index = edge_id, computed_by, int(frame_index)
    b = np.asarray(det.boxes, dtype=np.float32).reshape(-1, 4)
    m.center_x = _seq('f', (b[:, 0] + b[:, 2]) / 2)
    m.center_y = _seq('f', (b[:, 1] + b[:, 3]) / 2)
    m.size_x = _seq('f', b[:, 2] - b[:, 0])
    m.size_y = _seq('f', b[:, 3] - b[:, 1])
    m.scores = _seq('f', det.scores)
    k = np.asarray(det.keypoints, dtype=np.float32).reshape(-1, 3)
    m.keypoint_x = _seq('f', k[:, 0])
    m.keypoint_y = _seq('f', k[:, 1])
    m.keypoint_scores = _seq('f', k[:, 2])
    return m


def label_map_msg(names: dict, header) -> LabelMap:
    """Class id -> name table for the latched ``labels`` topic."""
    m = LabelMap()
    m.header = header
    ids = sorted(names)
    m.class_ids = [str(i) for i in ids]
    m.class_names = [names[i] for i in ids]
    return m


def boxes_from_msg(m: DetectionArray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DetectionArray -> (boxes xyxy (n, 4), scores (n,), class ids (n,) int)."""
    cx, cy = np.asarray(m.center_x), np.asarray(m.center_y)
    sx, sy = np.asarray(m.size_x), np.asarray(m.size_y)
    boxes = np.stack([cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2], 1)
    return boxes.astype(np.float32), np.asarray(m.scores), np.asarray(
        [int(c) for c in m.class_ids], dtype=np.int64)
