"""Accuracy retention of incremental YOLO11 against dense inference of the same model on the true
frame (paper section 6), with the work it saves:

    python -m fluxshard_kernels.evaluate [--tasks detect segment pose] [--sequences ...]
        [--frames N] [--tau 10] [--block 16] [--refresh 0] [--k-frac 1.0] [--salience]
        [--halo fixed|exact] [--warp integer|bilinear] [--max-sparse-stride S] [--sweep]
        [--json PATH]

Per task and sequence: object-pooled AP@0.5 of the incremental detections with the dense ones
as reference (every reference object weighs the same, class-aware matching, as the evaluation
harness; the class-mean mAP is kept as ``retention_class_mean``); segmentation mean matched
mask IoU; pose AP at OKS 0.5; plus, where the data has ground truth (DAVIS boxes, PETS09 MOT
boxes), recall@0.5 / AP of both against it. Next to it: the cache hit ratio (blocks with
D < tau), MACs, and time against torch dense and onnxruntime dense on the same frames
(interleaved).
"""

import argparse
import csv
import json
import math
import sys
import time

import cv2
import numpy as np
import torch

from fluxshard_kernels import blocks, data, metrics, motion, salience
from fluxshard_kernels.blocks import block_dissimilarity
from fluxshard_kernels.incremental import IncrementalYOLO, MAX_SPARSE_STRIDE, WARPS
from fluxshard_kernels.motion import MIXED_PX
from fluxshard_kernels.yolo import model as M
from fluxshard_kernels.yolo.processing import letterbox

MOVING = ('davis-parkour', 'davis-bmx-trees', 'davis-blackswan')
DAVIS_CLASS = {'davis-parkour': 0, 'davis-breakdance': 0, 'davis-bmx-trees': 0,
               'davis-blackswan': 14}


def _decode(model, raw, lb):
    return model.decode(raw, lb)


def _ground_truth(seq, n):
    """Per frame list of (boxes xyxy, class) or None."""
    root = data.data_root() / 'video' / seq / 'annotations'
    if (root / 'bbox_from_mask.csv').is_file():
        gt = {}
        with open(root / 'bbox_from_mask.csv') as f:
            for r in csv.DictReader(f):
                gt[int(r['frame'])] = np.array([[float(r['x0']), float(r['y0']),
                                                 float(r['x1']), float(r['y1'])]])
        return [(gt.get(i, np.zeros((0, 4))), DAVIS_CLASS.get(seq, 0)) for i in range(n)]
    if (root / 'gt.txt').is_file():
        rows = np.loadtxt(root / 'gt.txt', delimiter=',')
        out = []
        for i in range(n):
            r = rows[rows[:, 0] == i + 2]  # MOT frame k = frame k - 1 (files start at 1)
            out.append((np.stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]], 1)
                        if len(r) else np.zeros((0, 4)), 0))
        return out
    return None


def run_sequence(model, seq, frames, tau=10.0, block=16, refresh=0, k_frac=1.0,
                 use_salience=False, net_block=16, layout='batch', dense_above=0.8,
                 independent_px=0.0, mixed_px=MIXED_PX, max_sparse_stride=MAX_SPARSE_STRIDE,
                 ort=None, halo='fixed', sub_block=0, warp='bilinear'):
    """Incremental vs dense over one sequence; returns a dict of numbers. ``ort``: an
    ``OnnxYolo`` of the same weights, timed on every frame beside the engine."""
    runner = IncrementalYOLO(model, net_block, layout=layout, dense_above=dense_above,
                             max_sparse_stride=max_sparse_stride, halo=halo, warp=warp)
    imgs = list(data.iter_frames(seq, limit=frames))
    runner.warm_up([imgs[0].shape[:2]])  # as the nodes do: each layer's path measured
    gt = _ground_truth(seq, len(imgs))
    ap_ref = metrics.APAccumulator(0.5)    # object-pooled AP: the retention
    ap_class = metrics.APAccumulator(0.5)  # class-mean mAP (noisy: a rare class weighs a lot)
    ap_conf = metrics.APAccumulator(0.5)   # confident references only (score >= 0.5)
    ap_stale = metrics.APAccumulator(0.5)  # baseline: reuse the last dense result unchanged
    stale = None
    gt_acc = {'dense': metrics.APAccumulator(0.5), 'incremental': metrics.APAccumulator(0.5)}
    mask_ious, hits, macs, t_inc, t_dense, k_used, t_ort = [], [], [], [], [], [], []
    prev_mv, prev_det = None, None
    for i, img in enumerate(imgs):
        x, lb = letterbox(img, 640)
        t0 = time.perf_counter()
        raw_d = model(torch.from_numpy(x))
        t_dense.append(time.perf_counter() - t0)
        ref = _decode(model, raw_d, lb)
        if i == 0 or (refresh and i % refresh == 0):
            raw, lb2, st = runner.dense(img)
            det = _decode(model, raw, lb2)
            stale = det
            if i == 0:
                prev_det = det
                continue  # the shared starting point: both are dense
        else:
            t0 = time.perf_counter()
            f = motion.estimate_motion(img, runner.state, block, prev_mv)
            prev_mv = f.mv
            d = f.dissimilarity.reshape(-1)
            if sub_block:  # D as the largest sub-block error of the compensated state
                comp = blocks.warp_image_int(runner.state, f.grid, f.mv_x, f.mv_y)
                d = block_dissimilarity(img, comp, f.grid, sub_block)
            hits.append(float(np.mean(d < tau)))
            sal = None
            if use_salience and prev_det is not None and len(prev_det):
                boxes = salience.project_boxes(prev_det.boxes, f.mv, f.grid)
                sal = salience.salience_map(boxes, prev_det.scores, f.grid)
            n_miss = int(np.sum(d >= tau))
            k = math.ceil(k_frac * n_miss)
            extra = f.extra_misses(independent_px, mixed_px)
            if extra is not None:
                n_miss = int(np.sum((d >= tau) | extra.reshape(-1)))
                k = math.ceil(k_frac * n_miss)
            miss = salience.rank_misses(d, tau, sal, k, extra)
            k_used.append(len(miss) / f.grid.count)
            raw, lb2, st = runner.step(img, f.mv, miss, block)
            det = _decode(model, raw, lb2)
            t_inc.append(time.perf_counter() - t0)
            macs.append(st.mac_ratio)
            if ort is not None:
                t0 = time.perf_counter()
                ort(img)
                t_ort.append(time.perf_counter() - t0)
        prev_det = det
        sim = _similarity(model.task, det, ref)
        ap_ref.add_pooled(sim, det.class_ids, det.scores, ref.class_ids)
        ap_class.add(sim, det.class_ids, det.scores, ref.class_ids)
        rs, dp = ref.scores >= 0.5, det.scores >= 0.4
        ap_conf.add_pooled(sim[dp][:, rs], det.class_ids[dp], det.scores[dp],
                           ref.class_ids[rs])
        ap_stale.add_pooled(_similarity(model.task, stale, ref), stale.class_ids, stale.scores,
                            ref.class_ids)
        if model.task == 'segment':
            mask_ious.append(metrics.matched_mask_iou(det.boxes, det.masks, ref.boxes,
                                                      ref.masks))
        if gt is not None and model.task != 'pose':
            gb, gc = gt[i]
            for name, dd in (('dense', ref), ('incremental', det)):
                sel = dd.class_ids == gc
                gt_acc[name].add(metrics.box_iou(dd.boxes[sel], gb), np.full(sel.sum(), gc),
                                 dd.scores[sel], np.full(len(gb), gc))
    res = {'sequence': seq, 'task': model.task, 'frames': len(imgs), 'tau': tau,
           'block': block, 'refresh': refresh, 'k_frac': k_frac, 'salience': use_salience,
           'independent_px': independent_px, 'mixed_px': mixed_px,
           'hit_ratio': float(np.mean(hits)) if hits else 1.0,
           'recomputed_fraction': float(np.mean(k_used)) if k_used else 0.0,
           'mac_ratio': float(np.mean(macs)) if macs else 0.0,
           'time_ratio': float(np.sum(t_inc) / max(np.sum(t_dense[1:]), 1e-9)),
           'max_sparse_stride': max_sparse_stride, 'halo': halo, 'sub_block': sub_block,
           'warp': warp,
           'incremental_ms': 1e3 * float(np.median(t_inc)) if t_inc else float('nan'),
           'onnxruntime_ms': 1e3 * float(np.median(t_ort)) if t_ort else float('nan'),
           'time_ratio_ort': (float(np.sum(t_inc) / np.sum(t_ort)) if t_ort else float('nan')),
           'retention': ap_ref.value(), 'retention_confident': ap_conf.value(),
           'retention_class_mean': ap_class.value(),
           'stale_retention': ap_stale.value()}
    if model.task == 'segment':
        res['retention'] = float(np.nanmean(mask_ious)) if mask_ious else float('nan')
        res['det_retention'] = ap_ref.value()
    if gt is not None and model.task != 'pose':
        res['gt_ap_dense'] = gt_acc['dense'].value()
        res['gt_ap_incremental'] = gt_acc['incremental'].value()
    return res


def _similarity(task, det, ref):
    if task == 'pose':
        return metrics.oks(det.keypoints, ref.keypoints, ref.boxes)
    return metrics.box_iou(det.boxes, ref.boxes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tasks', nargs='+', default=['detect', 'segment', 'pose'])
    p.add_argument('--sequences', nargs='+', default=None)
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--tau', type=float, default=10.0)
    p.add_argument('--block', type=int, default=16)
    p.add_argument('--refresh', type=int, default=0, help='dense refresh every N frames')
    p.add_argument('--k-frac', type=float, default=1.0, help='fraction of misses recomputed')
    p.add_argument('--salience', action='store_true')
    p.add_argument('--independent', type=float, default=0.0,
                   help='also recompute blocks moving >= this many px against their '
                        'neighbourhood (0 = off)')
    p.add_argument('--mixed-px', type=float, default=MIXED_PX,
                   help='in a still scene, also recompute the blocks next to a motion edge '
                        'of >= this many px (motion.mixed_px; 0 = off; default: '
                        'motion.MIXED_PX, %(default)s)')
    p.add_argument('--sweep', action='store_true',
                   help='also sweep tau, block, refresh, k/N (+/- salience) for detection on '
                        'davis-parkour and pets09-s2l1')
    p.add_argument('--max-sparse-stride', type=int, default=MAX_SPARSE_STRIDE,
                   choices=[2, 4, 8, 16, 32], help='deeper layers run dense on warped input')
    p.add_argument('--halo', choices=['fixed', 'exact'], default='fixed',
                   help="active set per layer: the misses plus 8 input px ('fixed', the "
                        "paper's) or the exact receptive-field growth ('exact')")
    p.add_argument('--warp', choices=list(WARPS), default='bilinear',
                   help="how cached features follow the block motion: an index remap with the "
                        "remainder carried ('integer') or bilinear resampling")
    p.add_argument('--zero-bias', type=float, default=motion.ZERO_BIAS,
                   help='block matching keeps zero motion on blocks static up to noise unless '
                        'a match is better by more than this mean abs error (0 = off; '
                        'default: motion.ZERO_BIAS, %(default)s)')
    p.add_argument('--sub-block', type=int, default=0, choices=[0, 2, 4, 8],
                   help='D = the largest mean error over sub x sub sub-blocks (0 = the '
                        "block's mean, the paper's)")
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--json', default=None)
    a = p.parse_args(argv)
    if a.zero_bias < 0:
        p.error('--zero-bias must be >= 0')
    motion.ZERO_BIAS = a.zero_bias
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    seqs = a.sequences or data.sequences()
    models = {t: M.load(t) for t in set(a.tasks) | (
        {'detect'} if a.sweep else set())}
    from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
    orts = {t: OnnxYolo(str(data.model_path(t)), threads=a.threads) for t in a.tasks}
    rows = []
    print(HEADER)
    for task in a.tasks:
        for seq in seqs:
            r = run_sequence(models[task], seq, a.frames, a.tau, a.block, a.refresh,
                             a.k_frac, a.salience, independent_px=a.independent,
                             mixed_px=a.mixed_px,
                             max_sparse_stride=a.max_sparse_stride, ort=orts[task],
                             halo=a.halo, sub_block=a.sub_block, warp=a.warp)
            rows.append(r)
            print(row_line(r), flush=True)
    sweep = []
    if a.sweep:
        print('\n' + SWEEP_HEADER)
        base = dict(tau=a.tau, block=a.block, refresh=a.refresh, k_frac=1.0, use_salience=False)
        variants = ([dict(base, tau=t) for t in (5.0, 20.0)]
                    + [dict(base, block=b) for b in (8, 32)]
                    + [dict(base, refresh=10)]
                    + [dict(base, k_frac=f, use_salience=s) for f in (0.25, 0.5)
                       for s in (False, True)])
        for seq in ('davis-parkour', 'pets09-s2l1'):
            for v in variants:
                r = run_sequence(models['detect'], seq, min(a.frames, 20), **v)
                sweep.append(r)
                print(sweep_line(r), flush=True)
    if a.json:
        cmd = 'python -m fluxshard_kernels.evaluate ' + ' '.join(
            sys.argv[1:] if argv is None else argv)
        with open(a.json, 'w') as f:
            json.dump({'command': cmd, 'rows': rows, 'sweep': sweep, 'args': vars(a)}, f,
                      indent=1)
        print(f'\nwrote {a.json}')
    return 0


HEADER = ('| task | sequence | retention | retention (ref >= 0.5) | stale reuse | '
          'GT AP dense / incr. | hit ratio | k/N | MACs | time vs torch dense | '
          'incremental ms | onnxruntime ms | time vs onnxruntime |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|')
SWEEP_HEADER = ('## Sweep (detect)\n\n'
                '| sequence | tau | block | refresh | k/N | salience | retention | hit | MACs |\n'
                '|---|---|---|---|---|---|---|---|---|')


def row_line(r) -> str:
    gt = ''
    if 'gt_ap_dense' in r:
        gt = f"{r['gt_ap_dense']:.3f} / {r['gt_ap_incremental']:.3f}"
    return (f"| {r['task']} | {r['sequence']} | {100 * r['retention']:.1f} % | "
            f"{100 * r['retention_confident']:.1f} % | {100 * r['stale_retention']:.1f} % | "
            f"{gt} | {100 * r['hit_ratio']:.1f} % | {100 * r['recomputed_fraction']:.1f} % | "
            f"{100 * r['mac_ratio']:.1f} % | {r['time_ratio']:.2f}x | "
            f"{r.get('incremental_ms', math.nan):.0f} | {r.get('onnxruntime_ms', math.nan):.0f} "
            f"| {r.get('time_ratio_ort', math.nan):.2f}x |")


def sweep_line(r) -> str:
    return (f"| {r['sequence']} | {r['tau']:g} | {r['block']} | {r['refresh']} | "
            f"{r['k_frac']:g} | {'yes' if r['salience'] else 'no'} | "
            f"{100 * r['retention']:.1f} % | {100 * r['hit_ratio']:.1f} % | "
            f"{100 * r['mac_ratio']:.1f} % |")


def render(res: dict) -> str:
    """The tables of a saved ``--json`` run as markdown (docs/engine.md renders from it)."""
    out = [HEADER] + [row_line(r) for r in res['rows']]
    if res.get('sweep'):
        out += ['', SWEEP_HEADER] + [sweep_line(r) for r in res['sweep']]
    return '\n'.join(out) + '\n'


if __name__ == '__main__':
    raise SystemExit(main())
