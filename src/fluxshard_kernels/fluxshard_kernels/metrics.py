"""Accuracy metrics used for retention (paper section 6: accuracy normalised to a reference):
detection AP@0.5, matched mask IoU, OKS-based keypoint AP."""

import numpy as np

#: COCO keypoint sigmas (OKS).
KPT_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87,
                       .87, .89, .89]) / 10.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) xyxy -> (n, m) IoU."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def agreement(det, ref, thr: float = 0.5) -> float:
    """F1 of ``det`` against ``ref`` (both with ``boxes``, ``class_ids``): objects matched
    greedily (highest IoU first, same class, IoU >= ``thr``); 1.0 when both are empty. A cheap
    online accuracy estimate of one result against a trusted one."""
    nd, nr = len(det.boxes), len(ref.boxes)
    if nd == 0 and nr == 0:
        return 1.0
    if nd == 0 or nr == 0:
        return 0.0
    iou = box_iou(det.boxes, ref.boxes)
    iou[np.asarray(det.class_ids)[:, None] != np.asarray(ref.class_ids)[None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[i, j] < thr:
            break
        matched += 1
        iou[i, :] = 0.0
        iou[:, j] = 0.0
    return 2.0 * matched / (nd + nr)


def average_precision(tp: np.ndarray, conf: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP of ranked predictions."""
    if n_gt == 0:
        return float('nan')
    if len(tp) == 0:
        return 0.0
    order = np.argsort(-np.asarray(conf), kind='stable')
    tp = np.asarray(tp, np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    rec = ctp / n_gt
    prec = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[1.0], prec, [0.0]])
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class APAccumulator:
    """mAP over frames: per class, predictions matched greedily to references at a threshold
    of a similarity (box IoU, or OKS)."""

    def __init__(self, thr: float = 0.5):
        self.thr = thr
        self.tp, self.conf, self.n_gt = {}, {}, {}

    def add(self, sim: np.ndarray, pred_cls, pred_conf, gt_cls):
        """``sim``: (n_pred, n_gt) similarity of this frame."""
        pred_cls, gt_cls = np.asarray(pred_cls), np.asarray(gt_cls)
        for c in np.unique(np.concatenate([pred_cls, gt_cls])):
            pi, gi = np.flatnonzero(pred_cls == c), np.flatnonzero(gt_cls == c)
            self.n_gt[c] = self.n_gt.get(c, 0) + gi.size
            order = pi[np.argsort(-np.asarray(pred_conf)[pi], kind='stable')]
            used = np.zeros(gi.size, bool)
            for p in order:
                ok = 0
                if gi.size:
                    s = sim[p, gi].copy()
                    s[used] = -1
                    j = int(np.argmax(s))
                    if s[j] >= self.thr:
                        used[j], ok = True, 1
                self.tp.setdefault(c, []).append(ok)
                self.conf.setdefault(c, []).append(float(pred_conf[p]))

    def add_pooled(self, sim: np.ndarray, pred_cls, pred_conf, gt_cls):
        """Object-pooled AP: every reference object weighs the same whatever its class (a
        match only between equal classes). The class-mean mAP of ``add`` halves when one
        rare-class reference appears in a single frame and is missed; this does not."""
        pred_cls, gt_cls = np.asarray(pred_cls), np.asarray(gt_cls)
        same = np.where(pred_cls[:, None] == gt_cls[None, :], sim, -1.0)
        self.add(same, np.zeros(len(pred_cls)), pred_conf, np.zeros(len(gt_cls)))

    def value(self) -> float:
        aps = [average_precision(np.array(self.tp.get(c, [])), np.array(self.conf.get(c, [])),
                                 n) for c, n in self.n_gt.items() if n > 0]
        return float(np.mean(aps)) if aps else float('nan')


def oks(kp_pred: np.ndarray, kp_gt: np.ndarray, box_gt: np.ndarray) -> np.ndarray:
    """(n, 17, 3) x (m, 17, 3) -> (n, m) object keypoint similarity (gt visibility = score
    > 0.5, area from the gt box)."""
    n, m = len(kp_pred), len(kp_gt)
    out = np.zeros((n, m))
    for j in range(m):
        vis = kp_gt[j, :, 2] > 0.5
        if not vis.any():
            continue
        area = max((box_gt[j, 2] - box_gt[j, 0]) * (box_gt[j, 3] - box_gt[j, 1]), 1.0)
        d2 = ((kp_pred[:, :, :2] - kp_gt[j, None, :, :2]) ** 2).sum(-1)
        e = d2 / (2 * area * (2 * KPT_SIGMAS) ** 2 + np.spacing(1))
        out[:, j] = np.exp(-e)[:, vis].mean(1)
    return out


def matched_mask_iou(boxes_p, masks_p, boxes_r, masks_r, thr: float = 0.5) -> float:
    """Mean mask IoU over reference instances, matched by box IoU >= thr (0 when unmatched);
    NaN when the reference has no instance."""
    if len(boxes_r) == 0:
        return float('nan')
    if len(boxes_p) == 0:
        return 0.0
    iou = box_iou(boxes_p, boxes_r)
    vals = []
    used = set()
    for j in range(len(boxes_r)):
        cand = [i for i in np.argsort(-iou[:, j]) if i not in used and iou[i, j] >= thr]
        if not cand:
            vals.append(0.0)
            continue
        i = cand[0]
        used.add(i)
        a, b = masks_p[i], masks_r[j]
        vals.append(float((a & b).sum() / max((a | b).sum(), 1)))
    return float(np.mean(vals))
