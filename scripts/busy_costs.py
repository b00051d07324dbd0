#!/usr/bin/env python3
"""What a busy moment does to the engine's per-layer paths (``incremental.LayerCosts``): one
thread (where the sparse side is timed at run time), a real clip, and two busy processes
started for ``--busy-s`` seconds at frame 5. Three variants side by side:
  * samples counted as measured and no probes (the engine before both);
  * samples capped at ``SPIKE`` times their prediction, no probes (``PROBE_MIN`` beyond the clip);
  * capped samples and probes (the default).
Prints, per run, the layers running dense at the clip's end (and at the peak), and the mean
share of dense MACs over its last 30 frames.

Usage:  scripts/fluxshard run python scripts/busy_costs.py [--clip pets09-s2l1] [--reps 2]
"""

import argparse
import subprocess
import sys
import time


def one(clip: str, variant: str, busy_s: float) -> dict:
    from fluxshard_kernels import data, incremental as inc, motion
    from fluxshard_kernels.yolo import model as M
    model = M.load('detect', '', 'cpu')
    run = inc.IncrementalYOLO(model, 16)
    frames = list(data.iter_frames(clip))
    run.warm_up([frames[0].shape[:2]])
    costs = next(iter(run.layer_costs.values()))
    if variant != 'both':  # no probe within the clip
        costs.PROBE_MIN = costs.PROBE_MAX = 10 ** 9
    if variant == 'neither':  # a sample counts whatever it took
        costs.SPIKE = float('inf')
    run.dense(frames[0])
    dense, macs, hogs, prev, t_busy = [], [], [], None, 0.0
    try:
        for i, f in enumerate(frames[1:]):
            if i == 5:
                hogs = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
                        for _ in range(2)]
                t_busy = time.monotonic()
            if hogs and time.monotonic() - t_busy > busy_s:
                _stop(hogs)
            fld = motion.estimate_motion(f, run.state, 16, prev)
            prev = fld.mv
            _, _, st = run.step(f, fld.mv, fld.misses(10.0, mixed_px=motion.MIXED_PX))
            dense.append(sum(x.mode == 'dense' for x in st.layers))
            macs.append(st.mac_ratio)
    finally:
        _stop(hogs)
    tail = macs[-30:]
    return {'frames': len(dense), 'dense_peak': max(dense), 'dense_end': dense[-1],
            'macs_tail': sum(tail) / len(tail), 'probes': costs.probes}


def _stop(hogs):
    for h in hogs:
        if h.poll() is None:
            h.kill()
            h.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--clip', default='pets09-s2l1')
    p.add_argument('--reps', type=int, default=2)
    p.add_argument('--busy-s', type=float, default=3.0)
    a = p.parse_args(argv)
    import torch
    from fluxshard_kernels.incremental import LayerCosts
    torch.set_num_threads(1)
    names = {'neither': 'samples as measured, no probes',
             'cap': f'samples capped at {LayerCosts.SPIKE:g}x, no probes',
             'both': 'capped samples and probes (default)'}
    print(f'{a.clip}, one thread, two busy processes for {a.busy_s:g} s from frame 5:')
    for rep in range(a.reps):
        for variant, name in names.items():
            r = one(a.clip, variant, a.busy_s)
            print(f"  {name} (run {rep + 1}): {r['dense_end']} layers dense at frame "
                  f"{r['frames']} (peak {r['dense_peak']}), MACs {r['macs_tail']:.2f} of dense "
                  f"over the last 30 frames, {r['probes']} probes", flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
