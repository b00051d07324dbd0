"""YOLO11 pre- and post-processing: letterbox, box decoding, NMS, mapping to source pixels."""

from dataclasses import dataclass, field

import cv2
import numpy as np


#: Camera frame shapes (h, w) warmed up before the first frame: 16:9 and 4:3 at 480 rows, the
#: letterbox shapes most cameras map to.
WARM_SHAPES = ((480, 854), (480, 640))


@dataclass(frozen=True)
class Letterbox:
    """How a source image was fitted into the network input.

    Attributes:
        scale: network pixels per source pixel.
        pad_x, pad_y: left/top padding, network pixels.
        in_h, in_w: network input size.
        src_h, src_w: source image size.
    """

    scale: float
    pad_x: int
    pad_y: int
    in_h: int
    in_w: int
    src_h: int
    src_w: int

    @property
    def resized(self):
        """(rows, cols) the source image takes in the network input (at least one each)."""
        return _resized(self.src_h, self.src_w, self.scale)

    def to_source(self, x: np.ndarray, y: np.ndarray):
        """Network-input coordinates -> source-image pixels (clipped to the image)."""
        sx = np.clip((x - self.pad_x) / self.scale, 0, self.src_w)
        sy = np.clip((y - self.pad_y) / self.scale, 0, self.src_h)
        return sx, sy


def _resized(src_h: int, src_w: int, scale: float):
    # a side that rounds to nothing (a 1-pixel-high strip) keeps one row / column
    return max(1, int(round(src_h * scale))), max(1, int(round(src_w * scale)))


def letterbox_geometry(src_h: int, src_w: int, size: int = 640, stride: int = 32,
                       square: bool = False) -> Letterbox:
    """Fit the long side to ``size``; pad the short side to a multiple of ``stride``
    (or to a square)."""
    scale = min(size / src_h, size / src_w)
    nh, nw = _resized(src_h, src_w, scale)
    if square:
        in_h = in_w = size
    else:
        in_h = -(-nh // stride) * stride
        in_w = -(-nw // stride) * stride
    return Letterbox(scale, (in_w - nw) // 2, (in_h - nh) // 2, in_h, in_w, src_h, src_w)


#: uint8 -> float32 in [0, 1], exactly ``np.float32(k) / 255.0`` (one table lookup per value)
_UNIT = np.arange(256, dtype=np.float32) / 255.0


def letterbox_canvas(image_bgr: np.ndarray, size: int = 640, stride: int = 32,
                     square: bool = False):
    """BGR uint8 (H, W, 3) -> the letterboxed (in_h, in_w, 3) BGR uint8 canvas (grey 114
    padding) and its Letterbox."""
    lb = letterbox_geometry(image_bgr.shape[0], image_bgr.shape[1], size, stride, square)
    nh, nw = lb.resized
    canvas = np.full((lb.in_h, lb.in_w, 3), 114, dtype=np.uint8)
    view = canvas[lb.pad_y:lb.pad_y + nh, lb.pad_x:lb.pad_x + nw]
    if (nh, nw) == image_bgr.shape[:2]:
        view[...] = image_bgr
    elif view.flags.c_contiguous:  # full-width rows: resized straight into the canvas
        cv2.resize(image_bgr, (nw, nh), dst=view, interpolation=cv2.INTER_LINEAR)
    else:
        view[...] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, lb


def letterbox_hwc(image_bgr: np.ndarray, size: int = 640, stride: int = 32,
                  square: bool = False):
    """BGR uint8 (H, W, 3) -> (in_h, in_w, 3) float32 RGB in [0, 1] (pixel-major: the
    engine's channels-last storage takes it in one copy) and its Letterbox."""
    canvas, lb = letterbox_canvas(image_bgr, size, stride, square)
    return _UNIT[cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)], lb


def letterbox(image_bgr: np.ndarray, size: int = 640, stride: int = 32, square: bool = False):
    """BGR uint8 (H, W, 3) -> (1, 3, in_h, in_w) float32 RGB in [0, 1] and its Letterbox."""
    x, lb = letterbox_hwc(image_bgr, size, stride, square)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), lb


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_thres: float) -> np.ndarray:
    """Greedy NMS; returns kept indices sorted by descending score."""
    order = np.argsort(-scores, kind='stable')
    keep = []
    x1, y1, x2, y2 = boxes_xyxy.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_thres]
    return np.asarray(keep, dtype=np.int64)


@dataclass
class Detections:
    """Detections in source-image pixels.

    Attributes:
        boxes: (n, 4) float32 x1, y1, x2, y2.
        scores: (n,) float32 in [0, 1].
        class_ids: (n,) int64.
        keypoints: (n, 17, 3) float32 x, y, score (pose models) or None.
        masks: (n, H, W) bool instance masks (segmentation models) or None.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    keypoints: np.ndarray = None
    masks: np.ndarray = None

    def __len__(self):
        return int(self.scores.shape[0])


def decode(output: np.ndarray, lb: Letterbox, num_classes: int, conf: float = 0.25,
           iou: float = 0.45, max_det: int = 300, nkpt: int = 0,
           protos: np.ndarray = None) -> Detections:
    """Decode one image's raw head output into source-pixel detections.

    Args:
        output: (4 + num_classes + extra, A) raw head output (boxes cx, cy, w, h in network px,
            class scores already sigmoid-ed; extra = 32 mask coefficients or nkpt * 3 keypoints).
        lb: the letterbox used for this image.
        num_classes: number of classes.
        conf, iou, max_det: confidence threshold, NMS IoU, maximum detections.
        nkpt: keypoints per instance (17 for pose), 0 otherwise.
        protos: (32, mh, mw) mask prototypes for segmentation, or None.
    """
    # the best score of every anchor from the class rows (a reduction over whole rows, fast
    # on the (classes, anchors) layout); the class itself for the anchors above conf only
    cls_rows = output[4:4 + num_classes]
    sel = cls_rows.max(0) > conf
    kept = cls_rows[:, sel]
    cls = kept.argmax(0)
    score = kept[cls, np.arange(kept.shape[1])]
    pred = output[:, sel].T
    if pred.shape[0] == 0:
        det = Detections()
        if nkpt:
            det.keypoints = np.zeros((0, nkpt, 3), np.float32)
        if protos is not None:
            det.masks = np.zeros((0, lb.src_h, lb.src_w), bool)
        return det
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    # class-aware NMS by offsetting boxes per class
    offs = xyxy + cls[:, None].astype(np.float32) * 7680.0
    keep = nms(offs, score, iou)[:max_det]
    xyxy, cls, score, pred = xyxy[keep], cls[keep], score[keep], pred[keep]
    x1, y1 = lb.to_source(xyxy[:, 0], xyxy[:, 1])
    x2, y2 = lb.to_source(xyxy[:, 2], xyxy[:, 3])
    det = Detections(np.stack([x1, y1, x2, y2], 1).astype(np.float32),
                     score.astype(np.float32), cls.astype(np.int64))
    extra = pred[:, 4 + num_classes:]
    if nkpt:
        k = extra[:, :nkpt * 3].reshape(-1, nkpt, 3).copy()
        k[:, :, 0], k[:, :, 1] = lb.to_source(k[:, :, 0], k[:, :, 1])
        det.keypoints = k.astype(np.float32)
    if protos is not None:
        det.masks = assemble_masks(protos, extra[:, :protos.shape[0]], xyxy, lb)
    return det


def candidate_boxes(output: np.ndarray, lb: Letterbox, num_classes: int,
                    conf: float) -> np.ndarray:
    """(n, 4) source-pixel xyxy boxes of every anchor of a raw head output (as ``decode``
    takes it) whose best class scores >= ``conf``, without NMS: where objects may be."""
    cand = output[:, output[4:4 + num_classes].max(0) >= conf]
    cx, cy, w, h = cand[0], cand[1], cand[2] / 2, cand[3] / 2
    x1, y1 = lb.to_source(cx - w, cy - h)
    x2, y2 = lb.to_source(cx + w, cy + h)
    return np.stack([x1, y1, x2, y2], 1).astype(np.float32)


def assemble_masks(protos: np.ndarray, coeffs: np.ndarray, boxes_net: np.ndarray,
                   lb: Letterbox) -> np.ndarray:
    """Instance masks in source pixels from prototypes and per-instance coefficients."""
    c, mh, mw = protos.shape
    m = 1.0 / (1.0 + np.exp(-(coeffs @ protos.reshape(c, -1)))).reshape(-1, mh, mw)
    out = np.zeros((m.shape[0], lb.src_h, lb.src_w), dtype=bool)
    sx, sy = mw / lb.in_w, mh / lb.in_h
    nh, nw = lb.resized
    y0, x0 = int(round(lb.pad_y * sy)), int(round(lb.pad_x * sx))
    y1, x1 = int(round((lb.pad_y + nh) * sy)), int(round((lb.pad_x + nw) * sx))
    bx1, by1 = lb.to_source(boxes_net[:, 0], boxes_net[:, 1])
    bx2, by2 = lb.to_source(boxes_net[:, 2], boxes_net[:, 3])
    yy = np.arange(lb.src_h)[:, None] + 0.5
    xx = np.arange(lb.src_w)[None, :] + 0.5
    for i in range(m.shape[0]):
        crop = cv2.resize(m[i, y0:y1, x0:x1], (lb.src_w, lb.src_h),
                          interpolation=cv2.INTER_LINEAR) > 0.5
        inside = (xx >= bx1[i]) & (xx <= bx2[i]) & (yy >= by1[i]) & (yy <= by2[i])
        out[i] = crop & inside
    return out


def label_image(masks: np.ndarray, scores: np.ndarray, shape: tuple) -> np.ndarray:
    """(n, H, W) masks -> (H, W) uint16 label image, instance i has label i + 1 (best on top)."""
    lab = np.zeros(shape, dtype=np.uint16)
    for i in np.argsort(scores):
        lab[masks[i]] = i + 1
    return lab
