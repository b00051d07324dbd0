"""The YOLO11 head decode, redone for the anchors whose raw outputs changed (incremental engine).

A dense decode turns every anchor's raw head output (DFL box distribution, class logits, pose
keypoints) into boxes and scores each frame: about 6,300 anchors at 640x480, a few ms on a CPU
core. Between incremental steps most anchors' raw outputs are bit-identical (their features were
neither recomputed nor warped), so ``HeadDecoder`` keeps the last raw rows (one per anchor) and
their decoded columns, finds the rows that differ (one compiled pass), and decodes only those.
Each anchor decodes on its own (``Detect.decode_columns``), so the result is the dense decode's.
Segmentation models (mask coefficients and prototypes), CUDA tensors and a process without the
compiled kernels decode densely (``YOLO11.head_outputs``). The per-level inputs are tensors or
the engine's values (``incremental.SF``), whose concats are read straight from their parts.
"""

from typing import Optional

import torch

from fluxshard_kernels import compiled
from fluxshard_kernels.yolo import model as M


#: Share of changed anchors above which the whole head decodes at once (picking the columns
#: out and back costs more than it saves there: a moving camera changes most anchors).
FULL_ABOVE = 0.3


class HeadDecoder:
    """One per executor (one stream of frames): the last raw rows and decoded output."""

    def __init__(self):
        self._rows: Optional[torch.Tensor] = None
        self._out: Optional[torch.Tensor] = None
        self._geom = None  # (level shapes, anchors, strides)
        self.decoded = 0  # anchors decoded by the last call (diagnostics, tests)

    def __call__(self, model: 'M.YOLO11', feats: dict) -> torch.Tensor:
        det = [_parts(v) for v in feats['det']]
        if model.task == 'segment' or det[0][0].device.type != 'cpu' or \
                not compiled.available():
            return model.head_outputs({k: ([_tensor(v) for v in vals] if isinstance(vals, list)
                                           else _tensor(vals)) for k, vals in feats.items()})
        head = model.model[23]
        levels = det
        if model.task == 'pose':  # keypoint channels after the detection ones
            levels = [d + _parts(k) for d, k in zip(det, feats['extra'])]
        shapes = [tuple(d[0].shape[2:]) for d in det]
        width = sum(t.shape[1] for t in levels[0])
        n = sum(h * w for h, w in shapes)
        if self._geom is not None and self._geom[0] == shapes and self._rows is not None and \
                self._rows.shape == (n, width) and all(compiled.serves(t) for lv in levels
                                                       for t in lv):
            # the kept rows updated in place, the changed ones found in the same pass
            idx = compiled.rows_update(levels, shapes, self._rows)
            self.decoded = len(idx)
            return self._redo(model, head, self._rows, idx)
        rows = torch.empty((n, width), dtype=det[0][0].dtype)
        a0 = 0
        for parts, (h, w) in zip(levels, shapes):  # (h w, channels) per level, one copy
            c0 = 0
            for t in parts:
                c = t.shape[1]
                rows[a0:a0 + h * w, c0:c0 + c].view(h, w, c).copy_(t[0].permute(1, 2, 0))
                c0 += c
            a0 += h * w
        if self._geom is None or self._geom[0] != shapes or self._rows is None or \
                self._rows.shape != rows.shape:
            self._geom = (shapes, *M.make_anchors(shapes, head.strides, rows.device,
                                                  rows.dtype))
            anchors, strides = self._geom[1], self._geom[2]  # (x, y, stride) for the kernel
            self._cgeom = (anchors[0].contiguous(), anchors[1].contiguous(),
                           strides[0].contiguous())
            out = self._decode(model, head, rows, self._geom[1], self._geom[2])
            self.decoded = rows.shape[0]
        else:
            idx = compiled.diff_rows(rows, self._rows)
            self.decoded = len(idx)
            self._rows = rows
            return self._redo(model, head, rows, idx)
        self._rows, self._out = rows, out
        return out

    def _redo(self, model, head, rows, idx) -> torch.Tensor:
        """The last output with the anchors ``idx`` decoded anew from ``rows`` (a new
        tensor: the caller may keep the last one). The detection columns decode in one
        compiled pass straight into the output (``compiled.decode_rows``; the torch
        ``Detect.decode_columns`` is its reference), pose keypoints in torch."""
        if len(idx) > FULL_ABOVE * rows.shape[0]:  # most moved: every anchor at once
            out, idx = torch.empty_like(self._out), None
        else:
            out = self._out.clone()
            if not len(idx):
                self._out = out
                return out
        compiled.decode_rows(rows, idx, self._cgeom, head.dfl_weights(), head.nc, out)
        if model.task == 'pose':
            sel = slice(None) if idx is None else torch.from_numpy(idx)
            out[:, 4 + head.nc:, sel] = head.decode_kpt_columns(
                rows[sel, head.no:].t()[None], self._geom[1][:, sel], self._geom[2][:, sel])
        self._out = out
        return out

    @staticmethod
    def _decode(model, head, rows, anchors, strides) -> torch.Tensor:
        """(n, width) raw rows -> (1, 4 + nc [+ nk], n) decoded columns."""
        x = rows.t()[None]
        d = head.decode_columns(x[:, :head.no], anchors, strides)
        if model.task == 'pose':
            return torch.cat([d, head.decode_kpt_columns(x[:, head.no:], anchors, strides)], 1)
        return d


def _parts(v) -> list:
    """A level's input as channel parts, (1, C_i, h, w) each: a tensor, an engine value's map,
    or a concat's parts (no copy)."""
    if isinstance(v, torch.Tensor):
        return [v]
    fmap = v.fmap
    return [p.valid for p in fmap.parts] if hasattr(fmap, 'parts') else [fmap.valid]


def _tensor(v) -> torch.Tensor:
    parts = _parts(v)
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)
