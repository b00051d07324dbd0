"""Kernel benchmarks: ``python -m fluxshard_kernels.bench [--quick] [--json PATH]``.

Prints, from one run with variants measured side by side (interleaved repetitions, median):
  1. block motion vs OpenCV DIS optical flow (ULTRAFAST) at 640x480 on one thread: time ratio,
     and warp error of the previous frame by each (DIS flow averaged per block);
  2. codec MVs: decode + rasterise time per frame;
  3. sparse 3x3 conv (64 channels) vs dense at 1/5/10/25/50/100 % active blocks, both layouts,
     and the crossover density above which dense is faster;
  4. the whole engine: one incremental YOLO11n step (real motion, the blocks with D >= tau
     and, in a still scene, those along motion edges recomputed: ``--mixed-px``) against
     onnxruntime dense, torch dense and the engine's dense pass on the same frames,
     interleaved per frame, with where the step's time goes (warp, masks, gather, conv,
     scatter, dense layers, head, decode + NMS, ...) and its torch op and host-sync counts.
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

from fluxshard_kernels import blocks, codec_mv, compiled, data, motion, sparse as S

FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50, 1.00)
SECTIONS = ('motion', 'codec', 'sparse', 'engine')
#: the stages of a step the table always lists (a layer fused into one call, gather + product
#: + scatter, counts as 'conv'; 'gather' and 'scatter' are then the unfused layers' own)
STAGE_NAMES = ('state image', 'letterbox', 'masks', 'warp', 'gather', 'conv', 'scatter',
               'pointwise', 'dense layers', 'attention', 'head', 'decode + NMS')


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
                w = blocks.warp_image_int(frames[i - 1], g, mx, my)
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


class OpCounter:
    """Counts the aten ops a piece of torch code issues (``TorchDispatchMode``), and the host
    syncs among them (``.item()``, ``nonzero``: the device must finish before the host goes on)."""

    SYNCS = ('aten::_local_scalar_dense', 'aten::nonzero', 'aten::is_nonzero')

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func._schema.name
                counter.ops += 1
                counter.syncs += name in OpCounter.SYNCS
                return func(*args, **(kwargs or {}))
        self.ops = self.syncs = 0
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def bench_engine(seqs, n_frames, tau=10.0, block=16, warmup=3, device='cpu',
                 warp='bilinear', mixed_px=motion.MIXED_PX):
    """Incremental step vs dense runtimes per frame, interleaved (see the module docstring).
    ``device``: where the engine and torch dense run (onnxruntime stays on the CPU);
    ``mixed_px``: the motion-edge blocks of a still scene recomputed too, as the nodes do."""
    from fluxshard_kernels.incremental import IncrementalYOLO
    from fluxshard_kernels.yolo import model as M
    from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
    from fluxshard_kernels.yolo.processing import letterbox
    model = M.load('detect', '', device)
    on_cuda = device.startswith('cuda')

    def sync():
        if on_cuda:
            torch.cuda.synchronize()
    ort = OnnxYolo(str(data.model_path('detect')), threads=torch.get_num_threads())
    rows = []
    for seq in seqs:
        runner = IncrementalYOLO(model, block, warp=warp)
        imgs = list(data.iter_frames(seq, limit=n_frames + warmup + 1))
        runner.warm_up([imgs[0].shape[:2]])  # as the nodes do: each layer's path measured
        runner.dense(imgs[0])
        t = {k: [] for k in ('step', 'onnxruntime', 'torch', 'engine_dense')}
        stages, misses, macs, prev_mv = [], [], [], None  # stages: a dict per frame
        queued = []  # (calls, worker seconds) a step queued to the engine's worker thread
        qstats = compiled._fx().queue_stats if compiled.available() else (lambda: (0,) * 4)
        counts = None
        for i, img in enumerate(imgs[1:]):
            f = motion.estimate_motion(img, runner.state, block, prev_mv)
            prev_mv = f.mv
            d = f.dissimilarity.reshape(-1)
            miss = f.misses(tau, mixed_px=mixed_px)
            x, lb = letterbox(img, 640)
            xt = torch.from_numpy(x)
            timed = i >= warmup
            S.STAGES.reset(on=timed, cuda=on_cuda)
            sync()
            q0 = qstats()
            t0 = time.perf_counter()
            raw, lb2, st = runner.step(img, f.mv, miss, block)
            with S.STAGES('decode + NMS'):
                model.decode(raw, lb2)
            sync()
            dt = time.perf_counter() - t0
            stage_s = dict(S.STAGES.seconds)
            S.STAGES.reset(on=False)
            if not timed:
                continue
            stage_s['other (glue)'] = max(dt - sum(stage_s.values()), 0.0)
            stages.append(stage_s)
            q1 = qstats()
            queued.append((q1[1] - q0[1], 1e-9 * (q1[3] - q0[3])))
            t['step'].append(dt)
            misses.append(len(miss) / d.size)
            macs.append(st.mac_ratio)
            t0 = time.perf_counter()
            ort(img)
            t['onnxruntime'].append(time.perf_counter() - t0)
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                model.decode(model(xt.to(device)), lb)
            sync()
            t['torch'].append(time.perf_counter() - t0)
        # the memory floor of a warp that moves every cached pixel: one copy of every cache
        maps = [c.valid for c in runner.ex.caches.values()]  # the valid pixels, no padding
        spare = [torch.empty_like(m, memory_format=torch.channels_last) for m in maps]
        copies = []
        for _ in range(5):
            sync()
            t0 = time.perf_counter()
            for d, m in zip(spare, maps):
                d.copy_(m)
            sync()
            copies.append(time.perf_counter() - t0)
        cache_mb = sum(m.numel() * m.element_size() for m in maps) / 2 ** 20
        del spare
        # op counts of one more step, outside the timed ones
        probe = IncrementalYOLO(model, block, warp=warp)
        probe.dense(imgs[-2])
        f = motion.estimate_motion(imgs[-1], probe.state, block)
        with OpCounter() as c:
            probe.step(imgs[-1], f.mv, f.misses(tau, mixed_px=mixed_px), block)
        counts = (c.ops, c.syncs)
        with OpCounter() as c, torch.no_grad():
            model(torch.from_numpy(letterbox(imgs[-1], 640)[0]).to(device))
        for _ in range(2):  # the engine's own dense pass (fills every cache)
            t0 = time.perf_counter()
            raw, lb2, _ = probe.dense(imgs[-1])
            model.decode(raw, lb2)
            t['engine_dense'].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in t.items()}
        rows.append({'sequence': seq, 'frames': len(t['step']), 'device': device,
                     'miss_fraction': float(np.mean(misses)), 'mac_ratio': float(np.mean(macs)),
                     **{f'{k}_ms': 1e3 * v for k, v in med.items()},
                     'step_over_onnxruntime': med['step'] / med['onnxruntime'],
                     'torch_over_onnxruntime': med['torch'] / med['onnxruntime'],
                     'engine_dense_over_onnxruntime': med['engine_dense'] / med['onnxruntime'],
                     # the median over every timed frame, a frame that did not run a stage
                     # counting 0 there (a stage of a few frames does not count whole)
                     'stages_ms': {k: 1e3 * float(np.median([f.get(k, 0.0) for f in stages]))
                                   for k in dict.fromkeys(
                                       [*STAGE_NAMES, *(k for f in stages for k in f)])},
                     'cache_mb': cache_mb, 'cache_copy_ms': 1e3 * float(np.median(copies)),
                     'queued_calls': float(np.median([q[0] for q in queued])),
                     'worker_ms': 1e3 * float(np.median([q[1] for q in queued])),
                     'step_ops': counts[0], 'step_syncs': counts[1],
                     'dense_ops': c.ops, 'dense_syncs': c.syncs})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fewer frames and repetitions')
    p.add_argument('--json', default=None, help='write every number here')
    p.add_argument('--threads', type=int, default=1, help='CPU threads (torch and OpenCV)')
    p.add_argument('--sections', nargs='+', default=list(SECTIONS), choices=list(SECTIONS),
                   help='which benchmarks to run (default all)')
    p.add_argument('--zero-bias', type=float, default=motion.ZERO_BIAS,
                   help='block matching keeps zero motion on blocks static up to noise unless '
                        'a match is better by more than this mean abs error (0 = off; '
                        'default: motion.ZERO_BIAS, %(default)s)')
    p.add_argument('--warp', choices=['integer', 'bilinear'], default='bilinear',
                   help='engine section: how cached features follow the block motion')
    p.add_argument('--mixed-px', type=float, default=motion.MIXED_PX,
                   help='engine section: in a still scene, also recompute the blocks next to '
                        'a motion edge of >= this many px (0 = off; default: '
                        'motion.MIXED_PX, %(default)s)')
    p.add_argument('--device', default='cpu',
                   help='engine section: cpu, cuda, cuda:N or auto (onnxruntime stays on CPU)')
    a = p.parse_args(argv)
    if a.zero_bias < 0:
        p.error('--zero-bias must be >= 0')
    motion.ZERO_BIAS = a.zero_bias
    from fluxshard_kernels.profile import resolve_device
    try:
        a.device = resolve_device(a.device)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    reps = 3 if a.quick else 7
    seqs = ['davis-parkour', 'davis-bmx-trees'] if a.quick else [
        s for s in ('davis-parkour', 'davis-bmx-trees', 'davis-blackswan', 'davis-breakdance',
                    'pets09-s2l1', 'bgs-highway', 'sam2-bedroom') if s in data.sequences()]
    result = {'meta': _meta(a.threads),
              'command': 'python -m fluxshard_kernels.bench ' + ' '.join(
                  sys.argv[1:] if argv is None else argv)}
    if 'motion' in a.sections:
        result['motion'] = bench_motion(seqs, 4 if a.quick else 10, reps)
        result['motion_time_over_dis'] = float(np.median(
            [r['bm_over_dis_time'] for r in result['motion']]))
    if 'codec' in a.sections:
        result['codec_mv'] = bench_codec('davis-parkour', 8 if a.quick else 30)
    if 'sparse' in a.sections:
        sp = bench_sparse([(120, 160, 4), (240, 320, 8)], reps)
        result['sparse'] = sp
        result['sparse_speedup_at_10pct'] = {
            lay: {f"{r['h']}x{r['w']}/b{r['block']}": r[f'speedup_{lay}'] for r in sp
                  if r['active'] == 0.10} for lay in S.LAYOUTS}
        result['dense_crossover'] = {lay: crossover(sp, lay) for lay in S.LAYOUTS}
    if 'engine' in a.sections:
        result['engine'] = bench_engine(
            [s for s in ('davis-parkour', 'pets09-s2l1') if s in data.sequences()],
            4 if a.quick else 10, device=a.device, warp=a.warp, mixed_px=a.mixed_px)
    print(render(result))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'\nwrote {a.json}')
    return 0


def render(result: dict) -> str:
    """Every table of a benchmark run as markdown (docs/engine.md renders from the JSON); only
    the sections the run measured."""
    m = result['meta']
    out = [f"# FluxShard kernel benchmark ({m['cpu']}, {m.get('threads', 1)} thread(s), "
           f"torch {m.get('torch', '')}, OpenCV {m.get('opencv', '')}"
           + (f", GPU {m['cuda']}" if m.get('cuda') else '') + ')']
    if result.get('motion'):
        out += ['', '## Block motion vs DIS optical flow (ULTRAFAST), 640x480, block 16', '',
                '| sequence | ours ms | DIS ms | ours / DIS time | warp err: none | ours | '
                'DIS/block |', '|---|---|---|---|---|---|---|']
        for r in result['motion']:
            out.append(f"| {r['sequence']} | {r['bm_ms']:.2f} | {r['dis_ms']:.2f} | "
                       f"{r['bm_over_dis_time']:.2f} | {r['err_no_warp']:.2f} | "
                       f"{r['err_bm']:.2f} | {r['err_dis_block']:.2f} |")
        out += ['', f"median time ratio ours / DIS: {result['motion_time_over_dis']:.2f}"]
    cd = result.get('codec_mv')
    if cd:
        out += ['', f"## Codec MVs (H.264, PyAV): decode + block field "
                f"{cd['decode_and_field_ms']:.1f} ms/frame at 854x480; intra (miss) blocks "
                f"{100 * cd['intra_block_fraction']:.0f} %"]
    if result.get('sparse'):
        out += ['', '## Sparse 3x3 conv, 64 -> 64 channels, speedup over dense (same run)', '',
                '| map | block | active | dense ms | batch ms | batch x | hw ms | hw x |',
                '|---|---|---|---|---|---|---|---|']
        for r in result['sparse']:
            out.append(f"| {r['h']}x{r['w']} | {r['block']} | {100 * r['active']:.0f} % | "
                       f"{r['dense_ms']:.2f} | {r['batch_ms']:.2f} | "
                       f"{r['speedup_batch']:.1f} | {r['hw_ms']:.2f} | {r['speedup_hw']:.1f} |")
        out += ['', f"speedup at 10 % active: {json.dumps(result['sparse_speedup_at_10pct'])}",
                f"dense is faster from (active fraction): "
                f"{json.dumps(result['dense_crossover'])}"]
    if result.get('engine'):
        out += ['', render_engine(result['engine'])]
    return '\n'.join(out) + '\n'


def render_engine(rows) -> str:
    """The engine section: times and ratios against onnxruntime dense, then the breakdown."""
    out = ['#### Incremental YOLO11n step vs dense runtimes (detect, tau 10, ms, medians of '
           'interleaved frames; ratios over onnxruntime dense)', '',
           '| sequence | misses | MACs vs dense | step | onnxruntime | torch dense | '
           'engine dense | step / ort | torch / ort | engine dense / ort | ops (syncs) step '
           '/ dense |', '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        out.append(f"| {r['sequence']} | {100 * r['miss_fraction']:.1f} % | "
                   f"{100 * r['mac_ratio']:.0f} % | {r['step_ms']:.1f} | "
                   f"{r['onnxruntime_ms']:.1f} | {r['torch_ms']:.1f} | {r['engine_dense_ms']:.1f} "
                   f"| {r['step_over_onnxruntime']:.2f}x | {r['torch_over_onnxruntime']:.2f}x | "
                   f"{r['engine_dense_over_onnxruntime']:.2f}x | {r['step_ops']} "
                   f"({r['step_syncs']}) / {r['dense_ops']} ({r['dense_syncs']}) |")
    names = []
    for r in rows:
        names += [k for k in r['stages_ms'] if k not in names]
    out += ['', '#### Where one incremental step goes (ms, median per frame)', '',
            '| stage | ' + ' | '.join(r['sequence'] for r in rows) + ' |',
            '|---|' + '---|' * len(rows)]
    for k in names:
        cells = [f"{r['stages_ms'].get(k, 0.0):.1f}" for r in rows]
        out.append(f'| {k} | ' + ' | '.join(cells) + ' |')
    if all('cache_copy_ms' in r for r in rows):
        out += ['', 'Copying every cached map once (the memory a warp that moves every pixel '
                'reads and writes at least): ' + ', '.join(
                    f"{r['sequence']} {r['cache_copy_ms']:.1f} ms ({r['cache_mb']:.0f} MB)"
                    for r in rows) + '.']
    if any(r.get('queued_calls') for r in rows):
        out += ['', 'Kernel calls queued to the engine\'s worker thread (two threads or more; '
                'the stages above time this thread, which only queues them and waits where '
                'it must), median per step: ' + ', '.join(
                    f"{r['sequence']} {r['queued_calls']:.0f} calls, {r['worker_ms']:.1f} ms "
                    'on the worker' for r in rows) + '.']
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
