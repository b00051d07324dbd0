"""The picture of a result: the source image with the results drawn on it, for RViz and Foxglove
(``annotated``, ``sensor_msgs/CompressedImage`` jpeg), as yolo_ros and Isaac ROS publish a debug
image beside their detections.

``draw`` is pure (numpy + OpenCV): boxes with class names and scores, instance masks, COCO
skeletons, which side computed the result, and optionally the frame's block map (hits, blocks
recomputed on this side, blocks offloaded). ``AnnotatedPublisher`` publishes it on a node,
off by default, throttled, and drawn only while someone subscribes.
"""

import time
from typing import Dict, Optional

import numpy as np

from fluxshard_msgs_py.node import Param, RESULT_QOS

#: COCO keypoint pairs of the skeleton (0-based, Ultralytics order).
SKELETON = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
            (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5),
            (4, 6)]
#: Block map codes: what happened to each block of the frame on the side that drew it.
HIT, RECOMPUTED, OFFLOADED = 0, 1, 2
_MAP_COLOURS = {RECOMPUTED: (0, 0, 255), OFFLOADED: (255, 128, 0)}  # BGR: red, blue
_SIDE_COLOURS = {'edge': (0, 200, 0), 'server': (255, 160, 0)}


def block_map(shape, block_size: int, indices, code: int = OFFLOADED) -> np.ndarray:
    """Per-block codes of a frame of ``shape`` (h, w, ...): ``code`` at block ``indices``
    (row-major; out-of-range ones ignored), HIT elsewhere."""
    rows, cols = -(-shape[0] // block_size), -(-shape[1] // block_size)
    out = np.zeros(rows * cols, np.uint8)
    idx = np.asarray(indices, np.int64)
    out[idx[(idx >= 0) & (idx < out.size)]] = code
    return out


def colour(class_id: int):
    """A stable, distinct BGR colour per class."""
    h = (int(class_id) * 47) % 180
    import cv2
    c = cv2.cvtColor(np.uint8([[[h, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(v) for v in c)


def draw(image: np.ndarray, det, names: Optional[Dict[int, str]] = None,
         computed_by: str = '', block_map: Optional[np.ndarray] = None,
         block_size: int = 16, conf_kpt: float = 0.5) -> np.ndarray:
    """``image`` (BGR or mono uint8, not modified) with ``det`` (fluxshard_kernels
    Detections) drawn on it; returns a new BGR image of the same size.

    Args:
        block_map: per-block codes (HIT / RECOMPUTED / OFFLOADED) in row-major block order of
            a ``block_size`` grid over the image; drawn as tinted blocks when given.
    """
    import cv2
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if out.shape[2] == 4:
        out = np.ascontiguousarray(out[:, :, :3])
    h, w = out.shape[:2]
    names = names or {}
    if block_map is not None and block_map.size:
        rows, cols = -(-h // block_size), -(-w // block_size)
        codes = np.asarray(block_map).reshape(rows, cols)
        tint = np.zeros_like(out)
        for code, c in _MAP_COLOURS.items():
            m = np.kron(codes == code, np.ones((block_size, block_size), bool))[:h, :w]
            tint[m] = c
        on = tint.any(axis=2)
        out[on] = (0.6 * out[on] + 0.4 * tint[on]).astype(np.uint8)
    masks = getattr(det, 'masks', None)
    if masks is not None and len(masks):
        for m, c in zip(masks, det.class_ids):
            m = np.asarray(m, bool)
            if m.shape != (h, w):
                m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            out[m] = (0.5 * out[m] + 0.5 * np.array(colour(c))).astype(np.uint8)
    thick = max(1, round(min(h, w) / 360))
    for b, s, c in zip(det.boxes, det.scores, det.class_ids):
        x1, y1, x2, y2 = (int(round(float(v))) for v in b)
        col = colour(c)
        cv2.rectangle(out, (x1, y1), (x2, y2), col, thick)
        label = f'{names.get(int(c), str(int(c)))} {float(s):.2f}'
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, thick)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty + base // 2), col, -1)
        cv2.putText(out, label, (x1, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick,
                    (0, 0, 0), thick, cv2.LINE_AA)
    kpts = getattr(det, 'keypoints', None)
    if kpts is not None and len(kpts):
        for person in np.asarray(kpts):
            ok = person[:, 2] >= conf_kpt
            for a, b in SKELETON:
                if ok[a] and ok[b]:
                    cv2.line(out, tuple(int(v) for v in person[a, :2]),
                             tuple(int(v) for v in person[b, :2]), (0, 255, 255), thick,
                             cv2.LINE_AA)
            for (x, y, _), good in zip(person, ok):
                if good:
                    cv2.circle(out, (int(x), int(y)), thick + 1, (0, 0, 255), -1, cv2.LINE_AA)
    if computed_by:
        text = f'computed by {computed_by}'
        col = _SIDE_COLOURS.get(computed_by, (255, 255, 255))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, thick)
        cv2.rectangle(out, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
        cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, col, thick,
                    cv2.LINE_AA)
    return out


#: Parameters of the annotated picture, declared by both nodes.
PARAMS = [
    Param('annotated.enabled', False, "Publish 'annotated' (CompressedImage jpeg): the "
          'results drawn on the image they were computed from, while someone subscribes'),
    Param('annotated.max_rate_hz', 2.0, "At most this many 'annotated' pictures a second",
          lo=0.1, hi=100.0),
    Param('annotated.block_map', False, "Tint the frame's blocks in 'annotated': red = "
          'recomputed on the edge, blue = offloaded / carried to the server'),
    Param('annotated.jpeg_quality', 80, "JPEG quality of 'annotated'", lo=1, hi=100),
]


def from_params(node, p, prefix: str, computed_by: str) -> Optional['AnnotatedPublisher']:
    """The node's AnnotatedPublisher for ``prefix``, or None when ``annotated.enabled`` is
    false (``p``: the node's Params holding ``PARAMS``)."""
    if not p['annotated.enabled']:
        return None
    return AnnotatedPublisher(node, prefix, computed_by, p['annotated.max_rate_hz'],
                              p['annotated.jpeg_quality'], p['annotated.block_map'])


class AnnotatedPublisher:
    """``<prefix>annotated`` (CompressedImage jpeg) for one robot on ``node``: published at
    most ``max_rate_hz`` times a second and only while it has a subscriber (nothing is drawn
    otherwise). The picture carries the source image's stamp and frame_id."""

    def __init__(self, node, prefix: str, computed_by: str, max_rate_hz: float = 2.0,
                 quality: int = 80, block_map: bool = False):
        from sensor_msgs.msg import CompressedImage
        self._type = CompressedImage
        self.node, self.by = node, computed_by
        self.period = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
        self.quality, self.block_map = int(quality), bool(block_map)
        self.pub = node.create_publisher(CompressedImage, prefix + 'annotated', RESULT_QOS)
        self._last = -1e9
        self.published = 0

    def wanted(self, now: Optional[float] = None) -> bool:
        """Someone listens and the throttle allows a picture now."""
        now = time.monotonic() if now is None else now
        return now - self._last >= self.period and self.pub.get_subscription_count() > 0

    def publish(self, image, det, header, names=None, block_map=None, block_size=16) -> bool:
        if image is None or not self.wanted():
            return False
        import cv2
        self._last = time.monotonic()
        pic = draw(image, det, names, self.by, block_map if self.block_map else None,
                   block_size)
        ok, buf = cv2.imencode('.jpg', pic, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
            return False
        msg = self._type(header=header, format='jpeg', data=buf.tobytes())
        self.pub.publish(msg)
        self.published += 1
        return True

    def destroy(self):
        self.node.destroy_publisher(self.pub)
