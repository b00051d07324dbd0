"""H.264 motion vectors -> block MV fields (paper section 2.5): a compressed camera stream needs
no block matching. Decoding with PyAV and ``flags2=+export_mvs`` (facts in
shared/data/MANIFEST.md); intra-coded areas have no vector and become misses."""

import math
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

from fluxshard_kernels.blocks import BlockGrid, warp_image_int
from fluxshard_kernels.motion import MotionField, to_gray

_CELL = 4  # H.264 partitions are multiples of 4x4
#: Fraction of a block that must be covered by inter vectors for it to count as predicted.
MIN_COVERAGE = 0.5


def rasterize(mvs: np.ndarray, grid: BlockGrid) -> Tuple[np.ndarray, np.ndarray]:
    """Codec vectors -> per-block mean MV and inter coverage.

    Args:
        mvs: PyAV ``MOTION_VECTORS`` structured array (fields w, h, dst_x, dst_y, motion_x,
            motion_y, motion_scale, source); dst is the partition centre, src = dst + motion.
        grid: block grid; block_size must be a multiple of 4.

    Returns:
        (mv (rows, cols, 2) int32 rounded mean (dx, dy), coverage (rows, cols) float32 in [0, 1]).
    """
    bs = grid.block_size
    if bs % _CELL:
        raise ValueError('block size must be a multiple of 4 for codec MVs')
    ch, cw = -(-grid.height // _CELL), -(-grid.width // _CELL)
    cells = ch * cw
    sx = np.zeros(cells, np.float64)
    sy = np.zeros(cells, np.float64)
    cnt = np.zeros(cells, np.float64)
    if mvs is not None and len(mvs):
        m = mvs[mvs['source'] < 0] if 'source' in mvs.dtype.names else mvs
        w = m['w'].astype(np.int64) // _CELL
        h = m['h'].astype(np.int64) // _CELL
        x0 = (m['dst_x'].astype(np.int64) - m['w'].astype(np.int64) // 2) // _CELL
        y0 = (m['dst_y'].astype(np.int64) - m['h'].astype(np.int64) // 2) // _CELL
        scale = np.maximum(m['motion_scale'].astype(np.float64), 1)
        dx = m['motion_x'] / scale
        dy = m['motion_y'] / scale
        n = w * h
        rep = np.repeat(np.arange(len(m)), n)
        k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        cx = x0[rep] + k % w[rep]
        cy = y0[rep] + k // w[rep]
        ok = (cx >= 0) & (cx < cw) & (cy >= 0) & (cy < ch)
        idx = cy[ok] * cw + cx[ok]
        np.add.at(sx, idx, dx[rep][ok])
        np.add.at(sy, idx, dy[rep][ok])
        np.add.at(cnt, idx, 1.0)
    f = bs // _CELL
    rows, cols = grid.rows, grid.cols

    def per_block(a):
        pad = np.zeros((rows * f, cols * f))
        pad[:ch, :cw] = a.reshape(ch, cw)
        return pad.reshape(rows, f, cols, f).sum(axis=(1, 3))
    bx, by, bc = per_block(sx), per_block(sy), per_block(np.minimum(cnt, 1))
    area = per_block(np.ones(cells))
    den = np.maximum(per_block(cnt), 1e-9)
    mv = np.stack([np.rint(bx / den), np.rint(by / den)], -1).astype(np.int32)
    return mv, (bc / area).astype(np.float32)


def field_from_codec(mvs: np.ndarray, cur: np.ndarray, ref: np.ndarray,
                     block_size: int = 16) -> MotionField:
    """MotionField from codec vectors, with D measured on the frames; blocks covered less than
    MIN_COVERAGE by inter vectors (intra) get D = 255, i.e. always a miss."""
    g, r = to_gray(cur), to_gray(ref)
    grid = BlockGrid(g.shape[0], g.shape[1], block_size)
    mv, cov = rasterize(mvs, grid)
    warped = warp_image_int(r, grid, mv[..., 0].reshape(-1), mv[..., 1].reshape(-1))
    diff = np.abs(warped.astype(np.int16) - g.astype(np.int16)).astype(np.float32)
    pad = np.zeros(grid.padded_shape, np.float32)
    pad[:grid.height, :grid.width] = diff
    ones = np.zeros(grid.padded_shape, np.float32)
    ones[:grid.height, :grid.width] = 1
    d = grid.block_view(pad).sum(axis=(1, 3)) / grid.block_view(ones).sum(axis=(1, 3))
    d = np.where(cov < MIN_COVERAGE, 255.0, d).astype(np.float32)
    return MotionField(grid, mv, d)


def encode_h264(frames: Iterable[np.ndarray], path, fps: int = 30, crf: int = 23) -> int:
    """Encode BGR frames for causal MV use (x264 ref=1, no B-frames, no scene cuts).

    Returns:
        The number of frames written.
    """
    import av
    out = av.open(str(path), 'w')
    stream = None
    n = 0
    for f in frames:
        if stream is None:
            stream = out.add_stream('libx264', rate=fps)
            stream.width, stream.height = f.shape[1] // 2 * 2, f.shape[0] // 2 * 2
            stream.pix_fmt = 'yuv420p'
            stream.options = {'x264-params': 'ref=1:bframes=0:scenecut=0:keyint=100000',
                              'preset': 'veryfast', 'crf': str(crf)}
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(
            f[:stream.height, :stream.width]), format='bgr24')
        for p in stream.encode(vf):
            out.mux(p)
        n += 1
    if stream is not None:
        for p in stream.encode():
            out.mux(p)
    out.close()
    return n


def decode_with_motion(path, block_size: int = 16,
                       limit: Optional[int] = None) -> Iterator[Tuple[np.ndarray,
                                                                      Optional[MotionField]]]:
    """Decode a video, yielding (BGR frame, MotionField against the previous decoded frame, or
    None for frames without vectors such as I-frames)."""
    import av
    with av.open(str(path)) as inp:
        st = inp.streams.video[0]
        st.codec_context.options = {'flags2': '+export_mvs'}
        prev = None
        for i, fr in enumerate(inp.decode(st)):
            if limit is not None and i >= limit:
                break
            img = fr.to_ndarray(format='bgr24')
            sd = fr.side_data.get('MOTION_VECTORS')
            field = None
            if sd is not None and prev is not None:
                field = field_from_codec(sd.to_ndarray(), img, prev, block_size)
            yield img, field
            prev = img


def _qoffset(q) -> float:
    if not (isinstance(q, (int, float)) and math.isfinite(q) and -1 <= q <= 1):
        raise ValueError(f'ROI quantiser offsets must be in [-1, 1], got {q!r}')
    return float(q)


class RoiMap:
    """Where a frame's bits go: ``regions`` (x, y, w, h pixel rectangles: the objects) keep
    the CRF's quality, the rest of the frame is coded ``background`` coarser (x264 quantiser
    offset per macroblock through FFmpeg's ``addroi``: 0 = same quality, 1.0 = +51 QP;
    a region's offset is ``region_qoffset``, usually 0, negative = finer; a region given as
    (x, y, w, h, qoffset) carries its own). Where regions overlap the finest one holds.

    Raises:
        ValueError: an offset outside [-1, 1] or not finite, a region that is not four
        (or five) finite numbers.
    """

    def __init__(self, regions, background: float, region_qoffset: float = 0.0):
        self.background, self.region_qoffset = _qoffset(background), _qoffset(region_qoffset)
        rects = []
        for r in regions:
            vals = [float(v) for v in r]
            if len(vals) not in (4, 5) or not all(math.isfinite(v) for v in vals):
                raise ValueError(f'ROI region must be (x, y, w, h[, qoffset]) finite numbers, '
                                 f'got {r!r}')
            rects.append(vals[:4] + [_qoffset(vals[4]) if len(vals) == 5 else
                                     self.region_qoffset])
        rects.sort(key=lambda r: r[4])  # the finest first: the first region holds an overlap
        self.regions = rects

    @property
    def any_offset(self) -> bool:
        return bool(self.background) or any(r[4] for r in self.regions)

    def clipped(self, width: int, height: int):
        """(x, y, w, h, qoffset) integer rectangles inside a width x height frame (empty ones
        dropped), the finest first."""
        out = []
        for x, y, w, h, q in self.regions:
            x0, y0 = max(0, int(x)), max(0, int(y))
            x1, y1 = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
            if x1 > x0 and y1 > y0:
                out.append((x0, y0, x1 - x0, y1 - y0, q))
        return out


#: an object is large when its box covers at least this share of the frame's area (COCO's
#: "large", 96 x 96 px of a 640 px image, is 2.25 %): ``object_roi``'s ``large`` offset
LARGE_AREA = 0.0225


def object_roi(boxes, height: int, width: int, margin: float, background: float,
               region: float = 0.0, large: Optional[float] = None) -> 'RoiMap':
    """The ROI map of objects: each (n, 4) xyxy box grown by ``margin`` px keeps ``region``
    (``large`` instead where the box covers ``LARGE_AREA`` of a ``height`` x ``width``
    frame), the rest of the frame is ``background`` coarser. What the FluxShard payload
    (``EdgePipeline._roi``) and the ROI stream baseline both code with."""
    big = LARGE_AREA * height * width
    q_big = region if large is None else large
    m = float(margin)
    return RoiMap([(x1 - m, y1 - m, x2 - x1 + 2 * m, y2 - y1 + 2 * m,
                    q_big if (x2 - x1) * (y2 - y1) >= big else region)
                   for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4)],
                  background, region)


def _roi_frame(frame, roi: 'RoiMap'):
    """``frame`` (a yuv420p VideoFrame) with ``roi`` attached as FFmpeg ROI side data (one
    ``addroi`` filter per region, the regions first so they take precedence over the
    background's full-frame one)."""
    import av
    g = av.filter.Graph()
    last = g.add_buffer(width=frame.width, height=frame.height, format='yuv420p',
                        time_base='1/30')
    for x, y, w, h, q in roi.clipped(frame.width, frame.height):
        f = g.add('addroi', f'x={x}:y={y}:w={w}:h={h}:qoffset={q:g}')
        last.link_to(f)
        last = f
    if roi.background:
        f = g.add('addroi', f'x=0:y=0:w=iw:h=ih:qoffset={roi.background:g}')
        last.link_to(f)
        last = f
    sink = g.add('buffersink')
    last.link_to(sink)
    g.configure()
    g.push(frame)
    return g.pull()


class H264Encoder:
    """Per-frame H.264 access units (Annex B) for causal MV use: x264 ref=1, no B-frames,
    zero latency (one packet out per frame in)."""

    def __init__(self, width: int, height: int, fps: int = 30, crf: int = 23,
                 maxrate_kbps: float = 0.0, buffer_s: float = 0.25):
        """``maxrate_kbps`` > 0: capped CRF, x264's VBV at that rate with a ``buffer_s``
        buffer (a low-latency stream over a link of that rate)."""
        import av
        self.ctx = av.CodecContext.create('libx264', 'w')
        self.ctx.width, self.ctx.height = width // 2 * 2, height // 2 * 2
        self.ctx.pix_fmt = 'yuv420p'
        self.ctx.framerate = int(round(fps))
        params = 'ref=1:bframes=0:scenecut=0:keyint=100000'
        if maxrate_kbps > 0:
            params += (f':vbv-maxrate={int(maxrate_kbps)}'
                       f':vbv-bufsize={max(int(maxrate_kbps * buffer_s), 1)}')
        self.ctx.options = {'x264-params': params,
                            'preset': 'veryfast', 'tune': 'zerolatency', 'crf': str(crf)}
        self._pts = 0

    def encode(self, frame: np.ndarray, key: bool = False, roi: Optional[RoiMap] = None) -> bytes:
        """One access unit for ``frame`` (cropped to even sides); ``key`` forces an IDR
        frame (a decoder that lost a unit restarts there); ``roi`` spends the bits on its
        regions (background coarser)."""
        import av
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(
            frame[:self.ctx.height, :self.ctx.width]), format='bgr24')
        if roi is not None and roi.any_offset:
            f = f.reformat(format='yuv420p')
            f.pts = self._pts
            f = _roi_frame(f, roi)
        self._pts += 1
        if key:
            f.pict_type = av.video.frame.PictureType.I
        return b''.join(bytes(p) for p in self.ctx.encode(f))


class H264Decoder:
    """Decodes one H.264 access unit per call, exporting its motion vectors."""

    def __init__(self, export_mvs: bool = True):
        import av
        self.ctx = av.CodecContext.create('h264', 'r')
        self.ctx.thread_count = 1  # one unit in, its frame out (no frame-threading delay)
        if export_mvs:
            self.ctx.options = {'flags2': '+export_mvs'}

    def decode(self, data: bytes, mvs_as_array: bool = True):
        """List of (BGR frame, MOTION_VECTORS array or None) decoded from ``data``
        (``mvs_as_array`` False: PyAV's side data object, converted by its ``to_ndarray`` when
        needed).

        Raises:
            ValueError: undecodable bytes.
        """
        import av
        try:
            frames = self.ctx.decode(av.Packet(bytes(data)))
        except av.error.FFmpegError as e:
            raise ValueError(f'undecodable H.264 data ({len(data)} bytes): {e}') from e
        out = []
        for fr in frames:
            sd = fr.side_data.get('MOTION_VECTORS')
            out.append((fr.to_ndarray(format='bgr24'),
                        sd.to_ndarray() if sd is not None and mvs_as_array else sd))
        return out
