"""rosbag2 files of real footage, through the ``rosbags`` library (no rosbag2_py needed):

* ``write_bag`` turns a frame folder, a data-folder sequence or a video file into a rosbag2
  (MCAP or sqlite3) with ``sensor_msgs/Image`` frames (bgr8, stamped at the source rate) and,
  optionally, a ``sensor_msgs/CompressedImage`` topic of H.264 access units (format ``h264``,
  x264 ``ref=1:bframes=0``, so the edge can take the codec's motion vectors);
* ``BagSource`` reads such bags and bags recorded on robots (sqlite3 or MCAP; Image or
  CompressedImage topics picked by name or by type) as ``(stamp_ns, frame)`` pairs, and bare
  ``.mcap`` files from other tools (Foxglove, the ``mcap`` CLI, ``mcap-ros2-support``'s
  writer: ROS 2 channels with ``ros2msg`` schemas, no ``metadata.yaml``), read with the
  ``mcap`` library; a folder without ``metadata.yaml`` that holds ``.mcap`` files reads them
  in name order.

Messages are serialised and deserialised with ``rclpy.serialization`` (real CDR), so a bag
written here plays in ``ros2 bag play`` and a robot's bag reads here.

Command line (``fluxshard-bag``)::

    fluxshard-bag make davis-parkour out/parkour.mcap [--rate 24] [--h264] [--storage mcap]
    fluxshard-bag info out/parkour.mcap
"""

import argparse
from dataclasses import dataclass
import os
from pathlib import Path
import sys
from typing import Iterator, List, Optional, Tuple

import numpy as np

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
DEFAULT_TOPIC = '/camera/image_raw'

#: Source frame rates of the bundled sequences (their datasets' documentation), Hz.
SEQUENCE_FPS = {'davis-': 24.0, 'pets09-': 7.0, 'sam2-': 24.0, 'bgs-': 25.0}


class BagError(ValueError):
    """A bag that cannot be read or written as asked; the message says what to change."""


def default_rate(source: str) -> float:
    """Frame rate of ``source``: a video file's own, a known sequence's, else 30 Hz."""
    if os.path.isfile(source):
        import cv2
        cap = cv2.VideoCapture(source)
        fps = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        if fps and 0 < fps < 1000:
            return float(fps)
    name = Path(source).name
    for prefix, fps in SEQUENCE_FPS.items():
        if name.startswith(prefix):
            return fps
    return 30.0


def _storage(path: Path, storage: Optional[str]):
    from rosbags.rosbag2 import StoragePlugin
    s = storage or ('sqlite3' if path.suffix == '.db3' else 'mcap')
    if s not in ('mcap', 'sqlite3'):
        raise BagError(f"storage must be 'mcap' or 'sqlite3', got {s!r}")
    return StoragePlugin.MCAP if s == 'mcap' else StoragePlugin.SQLITE3


def write_bag(source: str, out: str, rate: Optional[float] = None, topic: str = DEFAULT_TOPIC,
              frame_id: str = 'camera', h264: bool = False, storage: Optional[str] = None,
              limit: Optional[int] = None, start_ns: int = 1_700_000_000 * 10**9) -> dict:
    """Write ``source``'s frames to the rosbag2 folder ``out`` (must not exist).

    Returns:
        {'frames', 'rate_hz', 'topics', 'bytes', 'path'}.
    Raises:
        BagError: ``out`` exists, bad storage name or rate; FileNotFoundError: no frames.
    """
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import get_typestore, Stores
    from sensor_msgs.msg import Image

    from fluxshard_msgs_py import conversions
    from fluxshard_kernels import data

    outp = Path(out)
    if outp.exists():
        raise BagError(f'{out} exists; rosbag2 writes a new folder, remove it or pick another')
    rate = float(rate or default_rate(source))
    if not 0 < rate <= 1000:
        raise BagError(f'rate must be in (0, 1000] Hz, got {rate}')
    plugin = _storage(outp, storage)
    ts = get_typestore(Stores.ROS2_KILTED)
    n = nbytes = 0
    enc = None
    with Writer(outp, version=8, storage_plugin=plugin) as w:
        conn = w.add_connection(topic, IMAGE, typestore=ts)
        conn_h = w.add_connection(topic + '/h264', COMPRESSED, typestore=ts) if h264 else None
        for frame in data.iter_frames(source, limit):
            t = start_ns + int(round(n * 1e9 / rate))
            msg = conversions.array_to_image(frame, Image().header)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t, 10**9)
            msg.header.frame_id = frame_id
            raw = serialize_message(msg)
            w.write(conn, t, raw)
            nbytes += len(raw)
            if conn_h is not None:
                from fluxshard_kernels.codec_mv import H264Encoder
                if enc is None:
                    enc = H264Encoder(frame.shape[1], frame.shape[0])
                raw = serialize_message(conversions.array_to_compressed(
                    frame, msg.header, 'h264', encoder=enc))
                w.write(conn_h, t, raw)
                nbytes += len(raw)
            n += 1
    if n == 0:
        raise FileNotFoundError(f'no frames in {source}')
    return {'frames': n, 'rate_hz': rate, 'bytes': nbytes, 'path': str(outp),
            'topics': [topic] + ([topic + '/h264'] if h264 else [])}


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int


def is_bag(path: str) -> bool:
    """True for a rosbag2 folder (metadata.yaml), a bare .mcap / .db3 file, or a folder of
    .mcap files."""
    p = Path(path)
    return (p.is_dir() and ((p / 'metadata.yaml').is_file() or any(p.glob('*.mcap')))) or (
        p.is_file() and p.suffix in ('.mcap', '.db3'))


class _Rosbag2:
    """A rosbag2 folder through ``rosbags`` (sqlite3 or MCAP storage)."""

    def __init__(self, path: Path):
        from rosbags.rosbag2 import Reader
        self._reader = Reader(path)
        self._reader.open()
        self.connections = [(c.topic, c.msgtype, c.msgcount) for c in self._reader.connections]
        self.duration_ns = self._reader.duration

    def raw(self, topic: str) -> Iterator[Tuple[int, str, bytes]]:
        conns = [c for c in self._reader.connections if c.topic == topic]
        for c, t, raw in self._reader.messages(connections=conns):
            yield t, c.msgtype, raw

    def close(self):
        self._reader.close()


class _BareMcap:
    """MCAP files without rosbag2 metadata, through the ``mcap`` library: ROS 2 channels
    (``cdr`` encoding, ``ros2msg`` schemas such as ``sensor_msgs/msg/Image``)."""

    def __init__(self, files: List[Path]):
        from mcap.reader import make_reader
        self.files = files
        counts, start, end = {}, None, None
        self._types = {}
        for f in files:
            with open(f, 'rb') as fh:
                reader = make_reader(fh)
                summary = reader.get_summary()
                if summary is not None and summary.statistics is not None:
                    st = summary.statistics
                    for cid, ch in summary.channels.items():
                        self._add_channel(ch, summary.schemas.get(ch.schema_id))
                        counts[ch.topic] = counts.get(ch.topic, 0) + \
                            st.channel_message_counts.get(cid, 0)
                    if st.message_count:
                        start = min(start or st.message_start_time, st.message_start_time)
                        end = max(end or st.message_end_time, st.message_end_time)
                    continue
                # no summary section (a file cut short): count by reading it through
                for schema, ch, msg in reader.iter_messages():
                    self._add_channel(ch, schema)
                    counts[ch.topic] = counts.get(ch.topic, 0) + 1
                    start = min(start or msg.log_time, msg.log_time)
                    end = max(end or msg.log_time, msg.log_time)
        self.connections = [(t, self._types[t], counts.get(t, 0)) for t in self._types]
        self.duration_ns = (end - start) if start is not None else 0

    def _add_channel(self, ch, schema):
        if ch.message_encoding != 'cdr':
            return  # not a ROS 2 channel (json, protobuf, ...): not offered as a topic
        name = schema.name if schema is not None else ''
        if '/msg/' not in name and name.count('/') == 1:  # ROS 1 style 'pkg/Type'
            name = name.replace('/', '/msg/')
        self._types.setdefault(ch.topic, name)

    def raw(self, topic: str) -> Iterator[Tuple[int, str, bytes]]:
        from mcap.reader import make_reader
        for f in self.files:
            with open(f, 'rb') as fh:
                for _, _, msg in make_reader(fh).iter_messages(topics=[topic],
                                                               log_time_order=True):
                    yield msg.log_time, self._types[topic], msg.data

    def close(self):
        pass


class BagSource:
    """Frames of one image topic of a rosbag2 (sqlite3 or MCAP).

    Args:
        path: bag folder (or its .mcap/.db3 file), a bare .mcap file, or a folder of them.
        topic: topic name; when empty, the only ``sensor_msgs/Image`` topic, else the only
            ``CompressedImage`` one (an error lists the candidates when that is ambiguous).
    """

    def __init__(self, path: str, topic: str = ''):
        p = Path(path)
        if not p.exists():
            raise BagError(f'{path} does not exist')
        folder = p.parent if p.is_file() else p
        self.path = p
        try:
            if (folder / 'metadata.yaml').is_file():
                self.path = folder
                self._reader = _Rosbag2(folder)
            elif p.is_file() and p.suffix == '.mcap':
                self._reader = _BareMcap([p])
            elif p.is_dir() and sorted(p.glob('*.mcap')):
                self._reader = _BareMcap(sorted(p.glob('*.mcap')))
            else:
                raise BagError(f'{path} is neither a rosbag2 folder (metadata.yaml), an .mcap '
                               'file nor a folder of .mcap files')
        except BagError:
            raise
        except Exception as e:  # noqa: B902 - the readers raise several types; name the file
            raise BagError(f'cannot open bag {path}: {type(e).__name__}: {e}') from e
        self.topics = [TopicInfo(t, m, n) for t, m, n in self._reader.connections]
        self.topic = self._pick(topic)
        self.msgtype = next(t.msgtype for t in self.topics if t.name == self.topic)
        self.count = sum(t.count for t in self.topics if t.name == self.topic)
        self.h264_topic = next((t.name for t in self.topics if t.msgtype == COMPRESSED
                                and t.name == self.topic + '/h264'), '')

    def _pick(self, topic):
        names = {t.name: t.msgtype for t in self.topics}
        if topic:
            if topic not in names:
                raise BagError(f'topic {topic!r} not in {self.path}; it has '
                               + ', '.join(f'{n} ({m})' for n, m in names.items()))
            if names[topic] not in (IMAGE, COMPRESSED):
                raise BagError(f'topic {topic} is {names[topic]}, not an image topic')
            return topic
        for typ in (IMAGE, COMPRESSED):
            cands = [n for n, m in names.items() if m == typ and not n.endswith('/h264')]
            if len(cands) == 1:
                return cands[0]
            if len(cands) > 1:
                raise BagError(f'{self.path} has several {typ} topics ({", ".join(cands)}); '
                               'name one')
        raise BagError(f'{self.path} has no image topic; it has '
                       + (', '.join(f'{n} ({m})' for n, m in names.items()) or 'no topics'))

    def duration_s(self) -> float:
        return self._reader.duration_ns / 1e9

    def rate_hz(self) -> float:
        """Mean message rate of the image topic (stamps of the bag)."""
        d = self.duration_s()
        return (self.count - 1) / d if self.count > 1 and d > 0 else 30.0

    def messages(self, topic: Optional[str] = None) -> Iterator[Tuple[int, object]]:
        """(bag time ns, deserialised message) of ``topic`` (default: the image topic)."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CompressedImage, Image
        topic = topic or self.topic
        for t, msgtype, raw in self._reader.raw(topic):
            typ = Image if msgtype == IMAGE else CompressedImage
            try:
                yield t, deserialize_message(raw, typ)
            except Exception as e:  # noqa: B902 - a corrupt record: name it, do not skip it
                raise BagError(f'{self.path}: a {msgtype} message on {topic} at {t} ns does '
                               f'not deserialise: {type(e).__name__}: {e}') from e

    def frames(self, limit: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """(bag time ns, BGR/mono uint8 frame) of the image topic, in order."""
        from fluxshard_msgs_py import conversions
        for i, (t, msg) in enumerate(self.messages()):
            if limit is not None and i >= limit:
                return
            if self.msgtype == IMAGE:
                yield t, conversions.image_to_array(msg)
            else:
                yield t, conversions.compressed_to_array(msg)

    def close(self):
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_source(source: str, limit: Optional[int] = None, topic: str = ''
                ) -> Iterator[np.ndarray]:
    """Frames of a bag, a frame folder, a data-folder sequence or a video file."""
    if is_bag(source):
        with BagSource(source, topic) as b:
            for _, f in b.frames(limit):
                yield f
        return
    from fluxshard_kernels import data
    yield from data.iter_frames(source, limit)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='fluxshard-bag', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('make', help='frames or video -> rosbag2')
    m.add_argument('source', help='sequence name, frame folder or video file')
    m.add_argument('out', help='new bag folder')
    m.add_argument('--rate', type=float, default=None, help='Hz (default: the source rate)')
    m.add_argument('--topic', default=DEFAULT_TOPIC)
    m.add_argument('--frame-id', default='camera')
    m.add_argument('--h264', action='store_true', help='also write <topic>/h264')
    m.add_argument('--storage', choices=['mcap', 'sqlite3'], default='mcap')
    m.add_argument('--count', type=int, default=None, help='frames (default all)')
    i = sub.add_parser('info', help='topics, counts and rate of a bag')
    i.add_argument('bag')
    a = p.parse_args(argv)
    try:
        if a.cmd == 'make':
            r = write_bag(a.source, a.out, a.rate, a.topic, a.frame_id, a.h264, a.storage,
                          a.count)
            print(f"wrote {r['path']}: {r['frames']} frames at {r['rate_hz']:g} Hz, "
                  f"{r['bytes'] / 1e6:.1f} MB, topics {', '.join(r['topics'])}")
        else:
            with BagSource(a.bag) as b:
                for t in b.topics:
                    print(f'{t.name}  {t.msgtype}  {t.count} messages')
                print(f'image topic: {b.topic} ({b.count} frames, {b.rate_hz():.2f} Hz, '
                      f'{b.duration_s():.2f} s)')
    except (BagError, FileNotFoundError) as e:
        print(f'fluxshard-bag: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
