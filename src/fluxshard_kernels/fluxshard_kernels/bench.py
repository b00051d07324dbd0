"""Kernel benchmarks: ``python -m fluxshard_kernels.bench [--quick] [--json PATH]``.

Prints, from one run with variants measured side by side (interleaved repetitions, median):
  1. block motion vs OpenCV DIS optical flow (ULTRAFAST) at 640x480 on one thread: time ratio,
     and warp error of the previous frame by each (DIS flow averaged per block);
  2. codec MVs: decode + rasterise time per frame;
  3. sparse 3x3 conv (64 channels) vs dense at 1/5/10/25/50/100 % active blocks, both layouts,
     and the crossover density above which dense is faster.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

from fluxshard_kernels import codec_mv, data, motion, proxy, sparse as S

FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50, 1.00)


def _interleaved(fns: dict, reps: int, warmup: int = 2) -> dict:
    """Median seconds per variant, variants run in rotation so noise hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in ts.items()}


def bench_motion(seqs, n_frames, reps):
    rows = []
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    for seq in seqs:
        frames = [cv2.resize(f, (640, 480)) for f in data.iter_frames(seq, limit=n_frames)]
        gray = [motion.to_gray(f) for f in frames]
        t_bm, t_dis, e0, e_bm, e_dis = [], [], [], [], []
        prev = None
        for i in range(1, len(frames)):
            a, b = gray[i - 1], gray[i]
            out = {}
            t = _interleaved({'bm': lambda: out.__setitem__('f', motion.estimate_motion(
                b, a, 16, prev)), 'dis': lambda: out.__setitem__('d', dis.calc(b, a, None))},
                reps, warmup=1)
            t_bm.append(t['bm'])
            t_dis.append(t['dis'])
            f, flow = out['f'], out['d']
            prev = f.mv
            g = f.grid

            def err(mx, my):
                w = proxy.warp_image_int(frames[i - 1], g, mx, my)
                return float(np.abs(w.astype(np.int16) - frames[i].astype(np.int16)).mean())
            fb = cv2.resize(flow, (g.cols, g.rows), interpolation=cv2.INTER_AREA)
            e0.append(err(np.zeros(g.count), np.zeros(g.count)))
            e_bm.append(err(f.mv_x, f.mv_y))
            e_dis.append(err(np.rint(fb[..., 0]).reshape(-1), np.rint(fb[..., 1]).reshape(-1)))
        rows.append({'sequence': seq, 'frames': len(frames),
                     'bm_ms': 1e3 * float(np.median(t_bm)),
                     'dis_ms': 1e3 * float(np.median(t_dis)),
                     'bm_over_dis_time': float(np.median(t_bm) / np.median(t_dis)),
                     'err_no_warp': float(np.mean(e0)), 'err_bm': float(np.mean(e_bm)),
                     'err_dis_block': float(np.mean(e_dis))})
    return rows


def bench_codec(seq, n_frames):
    frames = list(data.iter_frames(seq, limit=n_frames))
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, 'clip.mp4')
        codec_mv.encode_h264(frames, path)
        t0 = time.perf_counter()
        fields = [f for _, f in codec_mv.decode_with_motion(path, 16)]
        dt = (time.perf_counter() - t0) / len(fields)
    intra = np.mean([np.mean(f.dissimilarity >= 255) for f in fields if f is not None])
    return {'sequence': seq, 'frames': len(fields), 'decode_and_field_ms': 1e3 * dt,
            'intra_block_fraction': float(intra)}


def bench_sparse(configs, reps, channels=64):
    out = []
    for h, w, b in configs:
        rows, cols = h // b, w // b
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, channels, h, w, generator=g)
        src = S.FMap.from_dense(x, b, rows, cols)
        op = S.conv_op(torch.randn(channels, channels, 3, 3, generator=g) * 0.05,
                       torch.randn(channels, generator=g), 1)
        dst = S.FMap.from_dense(S.dense_windowed(src, op), b, rows, cols)
        n = rows * cols
        for frac in FRACTIONS:
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.randperm(n, generator=g)[:max(1, int(round(frac * n)))]] = True
            mask = mask.view(rows, cols)
            t = _interleaved({
                'dense': lambda: S.dense_windowed(src, op),
                'batch': lambda: S.sparse_windowed(src, dst, mask, op, 'batch'),
                'hw': lambda: S.sparse_windowed(src, dst, mask, op, 'hw')}, reps)
            out.append({'h': h, 'w': w, 'block': b, 'channels': channels, 'active': frac,
                        'dense_ms': 1e3 * t['dense'], 'batch_ms': 1e3 * t['batch'],
                        'hw_ms': 1e3 * t['hw'], 'speedup_batch': t['dense'] / t['batch'],
                        'speedup_hw': t['dense'] / t['hw']})
    return out


def crossover(rows, layout):
    """Active fraction where dense becomes as fast as sparse (speedup crosses 1), linearly
    interpolated between measured fractions, per config; 1.0 when sparse always wins."""
    res = {}
    by = {}
    for r in rows:
        by.setdefault(f"{r['h']}x{r['w']}/b{r['block']}", []).append(
            (r['active'], r[f'speedup_{layout}']))
    for key, pts in by.items():
        pts.sort()
        res[key] = 1.0
        for (f0, s0), (f1, s1) in zip(pts, pts[1:]):
            if s0 > 1.0 >= s1:
                res[key] = round(f0 + (s0 - 1.0) * (f1 - f0) / (s0 - s1), 3)
                break
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fewer frames and repetitions')
    p.add_argument('--json', default=None, help='write every number here')
    p.add_argument('--threads', type=int, default=1, help='CPU threads (torch and OpenCV)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    reps = 3 if a.quick else 7
    seqs = ['davis-parkour', 'davis-bmx-trees'] if a.quick else [
        s for s in ('davis-parkour', 'davis-bmx-trees', 'davis-blackswan', 'davis-breakdance',
                    'pets09-s2l1', 'bgs-highway', 'sam2-bedroom') if s in data.sequences()]
    result = {'meta': _meta(a.threads),
              'command': 'python -m fluxshard_kernels.bench ' + ' '.join(
                  sys.argv[1:] if argv is None else argv)}
    result['motion'] = bench_motion(seqs, 4 if a.quick else 10, reps)
    result['motion_time_over_dis'] = float(np.median(
        [r['bm_over_dis_time'] for r in result['motion']]))
    result['codec_mv'] = bench_codec('davis-parkour', 8 if a.quick else 30)
    sp = bench_sparse([(120, 160, 4), (240, 320, 8)], reps)
    result['sparse'] = sp
    result['sparse_speedup_at_10pct'] = {
        lay: {f"{r['h']}x{r['w']}/b{r['block']}": r[f'speedup_{lay}'] for r in sp
              if r['active'] == 0.10} for lay in S.LAYOUTS}
    result['dense_crossover'] = {lay: crossover(sp, lay) for lay in S.LAYOUTS}
    print(render(result))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'\nwrote {a.json}')
    return 0


def render(result: dict) -> str:
    """Every table of a benchmark run as markdown (docs/engine.md renders from the JSON)."""
    m = result['meta']
    out = [f"# FluxShard kernel benchmark ({m['cpu']}, {m.get('threads', 1)} thread(s), "
           f"torch {m.get('torch', '')}, OpenCV {m.get('opencv', '')})", '',
           '## Block motion vs DIS optical flow (ULTRAFAST), 640x480, block 16', '',
           '| sequence | ours ms | DIS ms | ours / DIS time | warp err: none | ours | DIS/block |',
           '|---|---|---|---|---|---|---|']
    for r in result['motion']:
        out.append(f"| {r['sequence']} | {r['bm_ms']:.2f} | {r['dis_ms']:.2f} | "
                   f"{r['bm_over_dis_time']:.2f} | {r['err_no_warp']:.2f} | {r['err_bm']:.2f} | "
                   f"{r['err_dis_block']:.2f} |")
    cd = result['codec_mv']
    out += ['', f"median time ratio ours / DIS: {result['motion_time_over_dis']:.2f}", '',
            f"## Codec MVs (H.264, PyAV): decode + block field {cd['decode_and_field_ms']:.1f} "
            f"ms/frame at 854x480; intra (miss) blocks {100 * cd['intra_block_fraction']:.0f} %",
            '', '## Sparse 3x3 conv, 64 -> 64 channels, speedup over dense (same run)', '',
            '| map | block | active | dense ms | batch ms | batch x | hw ms | hw x |',
            '|---|---|---|---|---|---|---|---|']
    for r in result['sparse']:
        out.append(f"| {r['h']}x{r['w']} | {r['block']} | {100 * r['active']:.0f} % | "
                   f"{r['dense_ms']:.2f} | {r['batch_ms']:.2f} | {r['speedup_batch']:.1f} | "
                   f"{r['hw_ms']:.2f} | {r['speedup_hw']:.1f} |")
    out += ['', f"speedup at 10 % active: {json.dumps(result['sparse_speedup_at_10pct'])}",
            f"dense is faster from (active fraction): {json.dumps(result['dense_crossover'])}"]
    return '\n'.join(out) + '\n'


def _meta(threads):
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                                text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ''
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        pass
    return {'commit': commit, 'cpu': cpu, 'threads': threads, 'torch': torch.__version__,
            'opencv': cv2.__version__, 'numpy': np.__version__,
            'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


if __name__ == '__main__':
    raise SystemExit(main())
