"""Proxy state: the reference image both edge and server hold, kept bit-identical (paper 4.4).

Both sides update their copy with :func:`apply`, a pure function of the previous state and one
:class:`ProxyUpdate` (the decoded contents of a ``BlockBatch``): MV warp with integer vectors,
then paste of the carried blocks as the sender itself decoded them. The same sequence of updates
gives the same bytes on any machine; :func:`digest` proves it on every message.
"""

from dataclasses import dataclass
import hashlib
from typing import Optional

import cv2
import numpy as np

from fluxshard_kernels.blocks import BlockGrid, warp_image_int

CODEC_RAW = 0
CODEC_PNG = 1
CODEC_JPEG = 2
CODEC_H264 = 3
CODEC_NAMES = {'raw': CODEC_RAW, 'png': CODEC_PNG, 'jpeg': CODEC_JPEG, 'h264': CODEC_H264}

#: Largest frame side accepted anywhere (guards allocations against absurd input).
MAX_SIDE = 8192
#: Largest MV component magnitude accepted, pixels.
MAX_MV = 1024


class ProxyError(ValueError):
    """An update that cannot be applied; the message says why."""


@dataclass(frozen=True)
class ProxyUpdate:
    """Decoded content of one BlockBatch.

    Attributes:
        height, width, channels, block_size: frame geometry (channels 1 or 3).
        block_indices: (k,) row-major indices of the carried blocks.
        canvas: (ceil(k / canvas_cols) * bs, canvas_cols * bs, channels) uint8 decoded payload.
        canvas_cols: carried blocks per canvas row.
        mv_x, mv_y: (count,) int per-block MVs (source = destination + mv) or None for zero.
        key: reset the state to zeros before applying.
        frame: the decoded (H, W, C) frame of an inter-coded (H.264) payload: it *is* the new
            state; ``block_indices`` then name the blocks to recompute, and there is no canvas.
    """

    height: int
    width: int
    channels: int
    block_size: int
    block_indices: np.ndarray
    canvas: Optional[np.ndarray]
    canvas_cols: int
    mv_x: Optional[np.ndarray] = None
    mv_y: Optional[np.ndarray] = None
    key: bool = False
    frame: Optional[np.ndarray] = None

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.height, self.width, self.block_size)


def canvas_columns(k: int) -> int:
    """Near-square canvas: ceil(sqrt(k)) blocks per row (at least 1)."""
    return max(1, int(np.ceil(np.sqrt(max(k, 1)))))


def pack_canvas(image: np.ndarray, grid: BlockGrid, indices: np.ndarray,
                canvas_cols: int) -> np.ndarray:
    """Tile the blocks ``indices`` of ``image`` into a canvas (see BlockBatch.msg).

    Args:
        image: (H, W, C) uint8.
        grid: the frame's block grid.
        indices: (k,) block indices, in canvas order.
        canvas_cols: blocks per canvas row.

    Returns:
        (ceil(k / canvas_cols) * bs, canvas_cols * bs, C) uint8; unused tiles are zero.
    """
    bs = grid.block_size
    idx = np.asarray(indices, dtype=np.int64)
    k = idx.size
    c = image.shape[2]
    nrows = -(-k // canvas_cols) if k else 0
    tiles = np.zeros((nrows * canvas_cols, bs, bs, c), dtype=np.uint8)
    if k:
        r, col = grid.block_rc(idx)
        tiles[:k] = grid.block_view(grid.pad(image))[r, :, col]
    return (tiles.reshape(nrows, canvas_cols, bs, bs, c)
            .transpose(0, 2, 1, 3, 4).reshape(nrows * bs, canvas_cols * bs, c))


def encode_canvas(canvas: np.ndarray, codec: int, quality: int = 90) -> bytes:
    """Encode a canvas for the wire. CODEC_RAW is the canvas bytes, row-major HxWxC."""
    if canvas.size == 0 or codec == CODEC_RAW:
        return canvas.tobytes()
    if codec == CODEC_PNG:
        ok, buf = cv2.imencode('.png', canvas, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif codec == CODEC_JPEG:
        ok, buf = cv2.imencode('.jpg', canvas, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        raise ProxyError(f'unknown payload codec {codec}')
    if not ok:
        raise ProxyError(f'encoding the payload canvas with codec {codec} failed')
    return buf.tobytes()


def canvas_shape(k: int, canvas_cols: int, block_size: int, channels: int) -> tuple:
    nrows = -(-k // canvas_cols) if k else 0
    return nrows * block_size, canvas_cols * block_size, channels


def decode_canvas(payload: bytes, codec: int, shape: tuple) -> np.ndarray:
    """Decode a payload into a canvas of the expected ``shape`` (H, W, C), or raise ProxyError."""
    h, w, c = shape
    if h * w == 0:
        if len(payload):
            raise ProxyError(f'payload has {len(payload)} bytes but carries no blocks')
        return np.zeros(shape, dtype=np.uint8)
    buf = np.frombuffer(payload, dtype=np.uint8)
    if codec == CODEC_RAW:
        if buf.size != h * w * c:
            raise ProxyError(f'raw payload has {buf.size} bytes, expected {h * w * c} '
                             f'({h}x{w}x{c})')
        return buf.reshape(shape)
    if codec not in (CODEC_PNG, CODEC_JPEG):
        raise ProxyError(f'unknown payload codec {codec}')
    if buf.size == 0:
        raise ProxyError('empty payload for a batch that carries blocks')
    flag = cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(buf, flag)
    if img is None:
        raise ProxyError(f'payload ({buf.size} bytes) is not a decodable '
                         f'{"PNG" if codec == CODEC_PNG else "JPEG"} image')
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape != (h, w, c):
        raise ProxyError(f'decoded payload is {img.shape}, expected {(h, w, c)}')
    return img


def validate(update: ProxyUpdate) -> None:
    """Raise ProxyError unless ``update`` is well-formed."""
    if not (0 < update.height <= MAX_SIDE and 0 < update.width <= MAX_SIDE):
        raise ProxyError(f'frame size {update.height}x{update.width} outside 1..{MAX_SIDE}')
    if update.channels not in (1, 3):
        raise ProxyError(f'channels must be 1 or 3, got {update.channels}')
    if update.block_size not in (8, 16, 32):
        raise ProxyError(f'block_size must be 8, 16 or 32, got {update.block_size}')
    grid = update.grid
    idx = np.asarray(update.block_indices)
    if idx.ndim != 1:
        raise ProxyError('block_indices must be one-dimensional')
    if idx.size:
        if idx.min() < 0 or idx.max() >= grid.count:
            raise ProxyError(f'block index {int(idx.max())} out of range for a '
                             f'{grid.rows}x{grid.cols} grid')
        if np.unique(idx).size != idx.size:
            raise ProxyError('duplicate block indices')
    if update.frame is not None:
        want = (update.height, update.width, update.channels)
        if tuple(update.frame.shape) != want or update.frame.dtype != np.uint8:
            raise ProxyError(f'decoded frame is {update.frame.shape} {update.frame.dtype}, '
                             f'expected {want} uint8')
    else:
        if update.canvas_cols <= 0:
            raise ProxyError(f'canvas_cols must be positive, got {update.canvas_cols}')
        want = canvas_shape(idx.size, update.canvas_cols, update.block_size, update.channels)
        if update.canvas is None or tuple(update.canvas.shape) != want:
            got = None if update.canvas is None else tuple(update.canvas.shape)
            raise ProxyError(f'payload canvas is {got}, expected {want}')
    for name in ('mv_x', 'mv_y'):
        mv = getattr(update, name)
        if mv is not None and np.asarray(mv).size not in (0, grid.count):
            raise ProxyError(f'{name} has {np.asarray(mv).size} entries, expected 0 or '
                             f'{grid.count} (one per block)')
        if mv is not None and np.asarray(mv).size and np.abs(np.asarray(mv)).max() > MAX_MV:
            raise ProxyError(f'{name} has a vector beyond +-{MAX_MV} px')
    if (update.mv_x is None) != (update.mv_y is None):
        raise ProxyError('mv_x and mv_y must both be given or both be empty')


def apply(state: Optional[np.ndarray], update: ProxyUpdate) -> np.ndarray:
    """Next proxy state from ``state`` and one update (pure: ``state`` is not modified).

    Args:
        state: (H, W, C) uint8 current proxy image, or None before the first key update.
        update: the decoded BlockBatch.

    Returns:
        The new (H, W, C) uint8 proxy image.

    Raises:
        ProxyError: malformed update, or a non-key update that does not fit ``state``.
    """
    validate(update)
    shape = (update.height, update.width, update.channels)
    if update.key:
        cur = np.zeros(shape, dtype=np.uint8)
    else:
        if state is None:
            raise ProxyError('no proxy state yet: the first batch must be a key batch')
        if state.shape != shape:
            raise ProxyError(f'batch geometry {shape} differs from the proxy state '
                             f'{state.shape}: a geometry change needs a key batch')
        cur = state
    if update.frame is not None:  # inter-coded: the decoded frame is the state
        return update.frame.copy()
    grid = update.grid
    if update.mv_x is not None and np.asarray(update.mv_x).size:
        new = warp_image_int(cur, grid, update.mv_x, update.mv_y)
    else:
        new = cur.copy()
    idx = np.asarray(update.block_indices, dtype=np.int64)
    if idx.size:
        bs = grid.block_size
        padded = np.empty(grid.padded_shape + (update.channels,), dtype=np.uint8)
        padded[:grid.height, :grid.width] = new
        k = idx.size
        tiles = (update.canvas.reshape(-1, bs, update.canvas_cols, bs, update.channels)
                 .transpose(0, 2, 1, 3, 4).reshape(-1, bs, bs, update.channels)[:k])
        r, c = grid.block_rc(idx)
        grid.block_view(padded)[r, :, c] = tiles
        new = np.ascontiguousarray(padded[:grid.height, :grid.width])
    return new


def digest(state: np.ndarray) -> bytes:
    """SHA-256 of the state's shape and bytes, its first 16 bytes. Both sides hash every proxy
    image (a megabyte a frame): OpenSSL's SHA-256 runs on the SHA instructions of x86 and
    ARMv8 CPUs, about twice as fast here as the blake2b it replaced."""
    h = hashlib.sha256(np.asarray(state.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(state).reshape(-1).view(np.uint8))  # no copy
    return h.digest()[:16]


def build_update(image: np.ndarray, grid: BlockGrid, indices: np.ndarray, codec: int,
                 quality: int = 90, mv_x=None, mv_y=None, key: bool = False):
    """Sender side: pack and encode the blocks, then decode them back as the receiver will.

    Returns:
        (payload bytes, canvas_cols, ProxyUpdate holding the *decoded* canvas).
    """
    cols = canvas_columns(len(indices))
    canvas = pack_canvas(image, grid, indices, cols)
    payload = encode_canvas(canvas, codec, quality)
    decoded = canvas if codec == CODEC_RAW else decode_canvas(payload, codec, canvas.shape)
    upd = ProxyUpdate(grid.height, grid.width, image.shape[2], grid.block_size,
                      np.asarray(indices, dtype=np.int64), decoded, cols, mv_x, mv_y, key)
    return payload, cols, upd


def _even(n: int) -> int:
    return n // 2 * 2


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """x264 codes even sides: the odd last row / column repeats its neighbour (both sides)."""
    if img.shape[:2] == (h, w):
        return img
    return np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), mode='edge')


class InterDecoder:
    """The receiving side of CODEC_H264: one H.264 decoder per edge session, restarted at every
    key batch. Decoding is bit-exact (libavcodec), so the edge's own decoder and the server's
    reach the same proxy state. With ``export_mvs`` (the server's) the unit's own motion
    vectors of the last decode are read by ``last_mvs`` (FFmpeg MOTION_VECTORS rows, None for
    an intra unit): the block motion field of the batch, without sending one (converted only
    when asked for)."""

    def __init__(self, export_mvs: bool = False):
        self._dec = None
        self.export_mvs = export_mvs
        self._mvs = None  # PyAV side data of the last unit's vectors

    @property
    def last_mvs(self):
        return None if self._mvs is None else self._mvs.to_ndarray()

    def reset(self):
        self._dec = None
        self._mvs = None

    def decode(self, payload: bytes, height: int, width: int, channels: int,
               key: bool) -> np.ndarray:
        """The (height, width, channels) frame of one access unit.

        Raises:
            ProxyError: not decodable, no frame, a non-key unit before any key, wrong size.
        """
        from fluxshard_kernels.codec_mv import H264Decoder
        if key or self._dec is None:
            if not key:
                raise ProxyError('inter-coded batch before any key batch')
            self._dec = H264Decoder(export_mvs=self.export_mvs)
        self._mvs = None
        if not payload:
            raise ProxyError('empty H.264 payload')
        try:
            out = self._dec.decode(payload, mvs_as_array=False)
        except ValueError as e:
            self._dec = None  # the reference is lost: only a key batch can restart
            raise ProxyError(str(e)) from e
        if len(out) != 1:
            self._dec = None
            raise ProxyError(f'H.264 payload decoded to {len(out)} frames, expected 1')
        img, self._mvs = out[0]
        if img.shape[:2] != (_even(height), _even(width)):
            self._dec = None
            raise ProxyError(f'H.264 frame is {img.shape[1]}x{img.shape[0]}, expected '
                             f'{_even(width)}x{_even(height)}')
        img = _pad_to(img, height, width)
        if channels == 1:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
        return np.ascontiguousarray(img)


class InterEncoder:
    """The sending side of CODEC_H264: x264 over the frames the edge sends, each coded against
    the previous one's reconstruction (the proxy); decodes its own output with an
    ``InterDecoder`` so the edge holds exactly the server's state."""

    def __init__(self):
        self._enc = None
        self._geom = None
        self.decoder = InterDecoder()

    def encode(self, frame: np.ndarray, key: bool, crf: int, roi=None):
        """(access unit bytes, decoded frame) for ``frame``; ``key`` (or a new size or CRF)
        starts a new stream with an IDR unit; ``roi`` (a ``codec_mv.RoiMap``) codes its
        regions at the CRF and the rest coarser."""
        from fluxshard_kernels.codec_mv import H264Encoder
        h, w, c = frame.shape
        if h < 2 or w < 2:
            raise ProxyError(f'H.264 payloads need frames of at least 2x2, got {w}x{h}')
        geom = (h, w, int(crf))
        if key or self._enc is None or geom != self._geom:
            key = True
            self._enc, self._geom = H264Encoder(w, h, crf=int(crf)), geom
        img = frame if c == 3 else np.repeat(frame, 3, axis=2)
        au = self._enc.encode(img, key=key, roi=roi)
        return au, self.decoder.decode(au, h, w, c, key)
