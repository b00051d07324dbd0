"""Device latency profiles: per-frame compute time of the incremental engine as
``t(k) = a k^2 + b k + c`` seconds for k recomputed blocks, and of the dense pass, for the edge
and the server roles (paper section 4.2, Table 1).

Two kinds:
  * ``PAPER``: the paper's Table 1 (Jetson Xavier NX edge, RTX 3080 server), kept as a labelled
    second view;
  * measured: fitted on this machine for our engine by

        python -m fluxshard_kernels.profile --out profile.json [--sequence S] [--frames N]
            [--edge-threads T] [--server-threads T] [--device cpu|cuda|auto]

    which times ``IncrementalYOLO.step`` (plus decoding) at k = the top-k blocks by
    dissimilarity of real consecutive frames, interleaved with the engine's own dense pass and
    onnxruntime dense on the same frames, and fits the model by least squares (a, b >= 0).

The file is JSON (``DeviceProfile.save`` / ``load``); ``fluxshard-eval --profile measured`` and
the edge's ``scheduler.profile_file`` read it.
"""

import argparse
from dataclasses import asdict, dataclass, field
import json
import math
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Fractions of the block grid recomputed when fitting (FluxShard's misses span 0-50 %).
FRACS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)


def fit_quadratic(ks: Sequence[float], ts: Sequence[float]) -> Tuple[float, float, float]:
    """Least-squares ``a k^2 + b k + c`` with a, b, c >= 0 (a convex, rising model)."""
    ks, ts = np.asarray(ks, float), np.asarray(ts, float)
    if len(np.unique(ks)) < 3:
        raise ValueError('a latency fit needs at least 3 distinct k')
    a, b, c = np.linalg.lstsq(np.stack([ks ** 2, ks, np.ones_like(ks)], 1), ts, rcond=None)[0]
    if a < 0:  # refit linear
        a, (b, c) = 0.0, np.linalg.lstsq(np.stack([ks, np.ones_like(ks)], 1), ts,
                                         rcond=None)[0]
    if b < 0:
        b, c = 0.0, float(np.mean(ts - a * ks ** 2))
    return float(a), float(b), float(max(c, 0.0))


@dataclass(frozen=True)
class RoleProfile:
    """One role's compute model: our engine's incremental pass ``a k^2 + b k + c`` s (k blocks),
    the best dense runtime's pass ``dense_s`` (what dense-only methods run; measured:
    onnxruntime) and the engine's own dense pass ``engine_dense_s`` (what the engine falls back
    to; None = ``dense_s``, as in the paper)."""

    a: float
    b: float
    c: float
    dense_s: float
    engine_dense_s: Optional[float] = None

    @property
    def abc(self) -> Tuple[float, float, float]:
        return (self.a, self.b, self.c)

    @property
    def engine_s(self) -> float:
        """The engine's dense pass (cache refreshes, dense fallback)."""
        return self.dense_s if self.engine_dense_s is None else self.engine_dense_s

    def sparse_s(self, k: float) -> float:
        """The incremental pass for k recomputed blocks, never more than the dense pass (the
        engine runs dense when that is faster); 0 when nothing is recomputed."""
        return min(self.a * k * k + self.b * k + self.c, self.engine_s) if k > 0 else 0.0


@dataclass(frozen=True)
class DeviceProfile:
    """Edge and server compute models plus the edge's fixed per-frame overhead (capture, block
    extraction, scheduling: the scheduler's tau_wait).

    Attributes:
        kind: 'paper' or 'measured'. label: what every table prints beside its times.
        block, frame: the block size and frame (h, w) k was counted on.
        meta: where and how it was measured (machine, threads, dense runtimes, samples).
    """

    kind: str
    label: str
    edge: RoleProfile
    server: RoleProfile
    edge_overhead_s: float = 0.005
    block: int = 16
    frame: Tuple[int, int] = (480, 854)
    meta: Dict = field(default_factory=dict, compare=False)

    def save(self, path: str):
        with open(path, 'w') as f:
            json.dump(asdict(self), f, indent=1)

    @staticmethod
    def load(path: str) -> 'DeviceProfile':
        """Read a profile file; a clear ValueError when it is not one."""
        try:
            with open(path) as f:
                d = json.load(f)
            return DeviceProfile(
                str(d['kind']), str(d['label']), RoleProfile(**d['edge']),
                RoleProfile(**d['server']), float(d.get('edge_overhead_s', 0.005)),
                int(d.get('block', 16)), tuple(d.get('frame', (480, 854))), d.get('meta', {}))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f'{path}: not a FluxShard device profile ({e!r}); write one with '
                             '`python -m fluxshard_kernels.profile --out FILE`') from None


#: The paper's Table 1 (YOLOv11): Jetson Xavier NX edge, RTX 3080 server; seconds, k in blocks.
PAPER = DeviceProfile('paper', "paper's Table 1 (Jetson Xavier NX edge, RTX 3080 server)",
                      RoleProfile(3.60e-8, 2.13e-4, 0.0429, 0.209),
                      RoleProfile(2.63e-9, 1.52e-5, 0.00714, 0.012))


def _machine(device: str) -> str:
    if device.startswith('cuda'):
        import torch
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def resolve_device(device: str) -> str:
    """'cpu' | 'cuda' | 'cuda:N' | 'auto' (CUDA when torch sees a GPU) -> a torch device string;
    ValueError when CUDA is asked for and absent."""
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cpu':
        return 'cpu'
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ValueError(f"model.device {device!r}: torch sees no CUDA device here "
                             "(use 'cpu' or 'auto')")
        return device
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")


def measure_role(model, frames: List[np.ndarray], block: int = 16,
                 fracs: Sequence[float] = FRACS, onnx_path: Optional[str] = None,
                 threads: int = 0) -> Dict:
    """Time the engine on real frames: for each consecutive pair, a dense pass on the first
    (timed: the engine's dense), then one incremental step on the second at each k (the top-k
    blocks by dissimilarity, fracs rotated so every k sees every frame), onnxruntime dense on
    the same frame, and block motion. Returns the samples and medians."""
    import torch
    from fluxshard_kernels import motion
    from fluxshard_kernels.incremental import IncrementalYOLO
    from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
    if threads:
        torch.set_num_threads(threads)
    runner = IncrementalYOLO(model, block)
    runner.warm_up([frames[0].shape[:2]])  # as the nodes do: each layer's path measured
    ort = OnnxYolo(onnx_path, threads=threads) if onnx_path else None
    samples, dense, onnx, mot = [], [], [], []
    for i in range(len(frames) - 1):
        prev, img = frames[i], frames[i + 1]
        for j, frac in enumerate(np.roll(fracs, i)):
            t0 = time.perf_counter()
            raw, lb, _ = runner.dense(prev)
            model.decode(raw, lb)
            if j:  # the first dense of a pair warms the caches up
                dense.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            f = motion.estimate_motion(img, runner.state, block)
            mot.append(time.perf_counter() - t0)
            d = f.dissimilarity.reshape(-1)
            k = int(round(frac * d.size))
            miss = np.argsort(-d, kind='stable')[:k]
            t0 = time.perf_counter()
            raw, lb, _ = runner.step(img, f.mv, miss, block)
            model.decode(raw, lb)
            samples.append((k, time.perf_counter() - t0))
            if ort is not None and j % 2 == 0:
                t0 = time.perf_counter()
                ort(img)
                onnx.append(time.perf_counter() - t0)
    n_blocks = math.ceil(frames[0].shape[0] / block) * math.ceil(frames[0].shape[1] / block)
    return {'samples': samples, 'blocks': n_blocks,
            'engine_dense_s': float(np.median(dense)),
            'onnxruntime_dense_s': float(np.median(onnx)) if onnx else None,
            'motion_s': float(np.median(mot))}


def role_profile(m: Dict) -> RoleProfile:
    """Fit a role from ``measure_role``'s samples; dense = onnxruntime (the engine's own dense
    pass where onnxruntime was not timed)."""
    ks, ts = zip(*m['samples'])
    a, b, c = fit_quadratic(ks, ts)
    return RoleProfile(a, b, c, m['onnxruntime_dense_s'] or m['engine_dense_s'],
                       m['engine_dense_s'])


def measure(task: str = 'detect', sequence: str = 'davis-parkour', frames: int = 6,
            block: int = 16, edge_threads: int = 2, server_threads: int = 2,
            device: str = 'cpu', fracs: Sequence[float] = FRACS,
            progress=None) -> DeviceProfile:
    """A measured DeviceProfile of this machine (see the module docstring). The edge role runs
    on the CPU with ``edge_threads``; the server role on ``device`` with ``server_threads``
    (measured once when both are the same)."""
    import cv2
    import torch
    from fluxshard_kernels import data
    from fluxshard_kernels.yolo import model as M
    device = resolve_device(device)
    imgs = list(data.iter_frames(sequence, limit=frames))
    if len(imgs) < 2:
        raise ValueError(f'{sequence}: need at least 2 frames to fit a profile')
    onnx_path = str(data.model_path(task))
    cv2.setNumThreads(edge_threads)
    model = M.load(task, '', 'cpu')
    roles = {'edge': measure_role(model, imgs, block, fracs, onnx_path, edge_threads)}
    if progress:
        progress('edge', roles['edge'])
    if (server_threads, device) == (edge_threads, 'cpu'):
        roles['server'] = roles['edge']
    else:
        if device != 'cpu':
            model = M.load(task, '', device)
        roles['server'] = measure_role(model, imgs, block, fracs, onnx_path, server_threads)
        if progress:
            progress('server', roles['server'])
    torch.set_num_threads(edge_threads)
    same = roles['server'] is roles['edge']
    label = (f"measured on {_machine('cpu')}, {edge_threads} thread(s)"
             + (' (edge and server alike)' if same else
                f"; server {_machine(device)}, {server_threads} thread(s)"))
    meta = {'task': task, 'sequence': sequence, 'frames': len(imgs), 'device': device,
            'edge_threads': edge_threads, 'server_threads': server_threads,
            'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'torch': torch.__version__, 'python': sys.version.split()[0],
            **{f'{r}_{k}': v for r, m in roles.items() for k, v in m.items()}}
    return DeviceProfile('measured', label, role_profile(roles['edge']),
                         role_profile(roles['server']),
                         edge_overhead_s=roles['edge']['motion_s'], block=block,
                         frame=tuple(imgs[0].shape[:2]), meta=meta)


def describe(p: DeviceProfile) -> str:
    """A markdown table of a profile (times in ms at a few k)."""
    n = math.ceil(p.frame[0] / p.block) * math.ceil(p.frame[1] / p.block)
    lines = [f'Device profile: {p.label}', '',
             '| role | a (s/k^2) | b (s/k) | c (s) | dense ms | engine dense ms | ' + ' | '.join(
                 f'{int(100 * f)} % ms' for f in FRACS[1:]) + ' |',
             '|---|---|---|---|---|---|' + '---|' * (len(FRACS) - 1)]
    for role in ('edge', 'server'):
        r = getattr(p, role)
        lines.append(f'| {role} | {r.a:.3g} | {r.b:.3g} | {r.c:.3g} | {1e3 * r.dense_s:.1f} | '
                     f'{1e3 * r.engine_s:.1f} | '
                     + ' | '.join(f'{1e3 * r.sparse_s(f * n):.1f}' for f in FRACS[1:]) + ' |')
    if p.kind == 'measured':
        lines += ['', "dense = onnxruntime on the same frames; engine dense = our engine's own "
                  "dense pass (its fallback, which caps the incremental times); edge overhead "
                  f"(block motion) {1e3 * p.edge_overhead_s:.1f} ms"]
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='profile file to write (JSON)')
    p.add_argument('--task', default='detect', choices=['detect', 'segment', 'pose'])
    p.add_argument('--sequence', default='davis-parkour')
    p.add_argument('--frames', type=int, default=6, help='consecutive frames timed')
    p.add_argument('--block', type=int, default=16, choices=[8, 16, 32])
    p.add_argument('--edge-threads', type=int, default=2)
    p.add_argument('--server-threads', type=int, default=2)
    p.add_argument('--device', default='cpu', help="server role: cpu, cuda, cuda:N or auto")
    a = p.parse_args(argv)
    try:
        prof = measure(a.task, a.sequence, a.frames, a.block, a.edge_threads,
                       a.server_threads, a.device)
    except (ValueError, OSError) as e:
        print(f'fluxshard_kernels.profile: {e}', file=sys.stderr)
        return 2
    prof.save(a.out)
    print(describe(prof) + f'\nwrote {a.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
