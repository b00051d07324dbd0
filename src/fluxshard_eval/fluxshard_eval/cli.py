"""``fluxshard-eval``: rosbag replay evaluation of FluxShard against the paper's baselines.

    fluxshard-eval [--sequences S ...] [--bags BAG ...] [--frames N] [--links high medium low]
                   [--methods ...] [--edges 1 2 3 4] [--delay-ms 10] [--loss 0]
                   [--live] [--out out/eval]

Each source becomes a rosbag2 (MCAP) under ``<out>/bags`` (bags given with ``--bags`` are read
as they are) and its frames are read back from the bag. Every method runs its real edge and
server code on every frame it gets to (modelled timeline, see ``harness``); the tables print as
markdown, the plots, ``results.json`` and ``summary.json`` (the same without per-frame records;
``scripts/render_docs.py`` renders docs/evaluation.md from it) land in ``--out``. ``--live``
also replays the first bag through the real nodes over DDS (FluxShard and Full Offload at the
first link class) and reports the latency measured on this machine.
"""

import argparse
from dataclasses import asdict
import json
import math
import os
import shlex
import sys
import time

from fluxshard_edge.pipeline import EdgeConfig
from fluxshard_eval import report
from fluxshard_eval.methods import BASELINES, METHODS, VIDEO
from fluxshard_eval.sim import LinkSpec
from fluxshard_server.inference import RECOMPUTE_TAU

MOVING = ('davis-parkour', 'davis-bmx-trees', 'davis-blackswan', 'davis-breakdance')
#: FluxShard variants of --sweep: name -> (method, parameters).
SWEEP = {f'fluxshard h264 crf{c}': ('fluxshard', {'codec': 'h264', 'crf': c})
         for c in (18, 20, 23, 28)}
# the server's own drift test (model.recompute_tau)
SWEEP.update({f'fluxshard h264 recompute-tau {t:g}':
              ('fluxshard', {'codec': 'h264', 'recompute_tau': t}) for t in (0.0, 6.0, 10.0)})
SWEEP.update({f'fluxshard h264 drift-{s}': ('fluxshard', {'codec': 'h264', 'drift_scope': s})
              for s in ('objects', 'frame')})
SWEEP.update({f'fluxshard h264 roi{q:g}': ('fluxshard', {'codec': 'h264', 'roi_qoffset': q})
              for q in (0.0, 0.4)})
# large objects coded coarser than small ones (issue 21)
SWEEP.update({f'fluxshard h264 large{q:g}': ('fluxshard', {'codec': 'h264',
                                                           'roi_large_qoffset': q})
              for q in (0.1, 0.2)})
# the CRF floor from the results' retention (issue 21)
SWEEP.update({f'fluxshard h264 target{t}':
              ('fluxshard', {'codec': 'h264', 'target_retention': t / 100})
              for t in (95, 97, 99)})
# the unit's own motion instead of the sent block field (issue 21)
SWEEP['fluxshard h264 no-motion-field'] = ('fluxshard', {'codec': 'h264', 'send_motion': False})
SWEEP['fluxshard h264 motion-field'] = ('fluxshard', {'codec': 'h264', 'send_motion': True})
# frames the server does not need are not sent (issue 21): agreement target, skipped run
SWEEP.update({f'fluxshard h264 skip{t}': ('fluxshard', {'codec': 'h264', 'skip_target': t / 100})
              for t in (90, 95, 97, 99)})
SWEEP['fluxshard h264 no-skip'] = ('fluxshard', {'codec': 'h264', 'skip_target': 0.0})
# the blocks along motion edges of a still scene recomputed (motion.mixed_px and the
# server's model.mixed_px, issue 19; on by default): the rule off
SWEEP['fluxshard h264 mixed0'] = ('fluxshard', {'codec': 'h264', 'mixed_px': 0.0})
SWEEP.update({f'fluxshard jpeg q{q} tau{t:g}':
              ('fluxshard', {'codec': 'jpeg', 'quality': q, 'tau': t})
              for q, t in ((90, 10.0), (75, 10.0), (90, 20.0), (50, 30.0))})


class Progress:
    """A one-line progress bar on stderr (frames consumed, rate, ETA)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.n, self.t0 = max(total, 1), 0, time.monotonic()
        self.label = ''
        self.enabled = enabled and total > 0
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._decile = -1

    def __call__(self, k: int = 1):
        self.n += k
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.5 and self.n < self.total):
            return
        self._last = now
        frac = min(self.n / self.total, 1.0)
        if not self.tty:  # a log file: one line per 10 %
            if int(10 * frac) == self._decile:
                return
            self._decile = int(10 * frac)
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0
        bar = '#' * int(30 * frac) + '-' * (30 - int(30 * frac))
        sys.stderr.write(f'{chr(13) if self.tty else ""}[{bar}] {100 * frac:5.1f}% '
                         f'{self.n}/{self.total} frames {el / 60:5.1f} min, ETA '
                         f'{eta / 60:5.1f} min  {self.label[:40]:<40}' + ('' if self.tty
                                                                          else '\n'))
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write('\n')


def _args(argv):
    p = argparse.ArgumentParser(prog='fluxshard-eval', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sequences', nargs='*', default=None,
                   help='data-folder sequences, frame folders or video files (default: all '
                        'sequences of the data folder)')
    p.add_argument('--bags', nargs='*', default=[], help='existing rosbag2 folders to replay')
    p.add_argument('--topic', default='', help='image topic in --bags (default: the only one)')
    p.add_argument('--frames', type=int, default=0, help='frames per source (0 = all)')
    p.add_argument('--links', nargs='+', default=['high', 'medium', 'low'],
                   help="link classes (high 130, medium 56, low 25 Mbit/s), a rate in Mbit/s "
                        "or trace:<file>")
    p.add_argument('--methods', nargs='+', default=['fluxshard', *BASELINES, *VIDEO],
                   choices=METHODS + ('full-offload-png',),
                   help='methods run at every link (video-offload-crfN: the camera as an '
                        'H.264 stream at CRF N; video-offload-roi-crfN: the same with '
                        "FluxShard's ROI coding from the results; full-offload-png: lossless "
                        'frames, a check of the harness)')
    p.add_argument('--ablations', nargs='*', default=['no-ata', 'no-ms-comp'],
                   choices=['no-ata', 'no-ms-comp'], help='run at the medium link only')
    p.add_argument('--edges', nargs='*', type=int, default=[2, 3, 4],
                   help='scalability: edge counts besides 1 (run at the first link)')
    p.add_argument('--scal-source', default='davis-blackswan',
                   help='source of the scalability runs')
    p.add_argument('--scal-frames', type=int, default=40)
    p.add_argument('--scal-methods', nargs='*', default=None,
                   help='methods of the scalability runs (default: --methods)')
    p.add_argument('--sweep', action='store_true',
                   help='also run FluxShard variants (H.264 CRF, server recompute-tau, JPEG '
                        'payloads at several quality / tau) at the medium link on the '
                        'moving-camera sequences: the bytes / accuracy trade-off')
    p.add_argument('--variants', nargs='+', default=None, choices=list(SWEEP),
                   metavar='VARIANT', help='with --sweep: only these variants, on every '
                   'sequence (of: '
                   + ', '.join(SWEEP) + ')')
    p.add_argument('--delay-ms', type=float, default=10.0, help='one-way link delay, ms')
    p.add_argument('--loss', type=float, default=0.0, help='message loss probability')
    p.add_argument('--zero-bias', type=float, default=None,
                   help="the edge's block matching keeps zero motion unless a match is better "
                        'by more than this mean abs error (modelled runs only; default: '
                        'motion.ZERO_BIAS)')
    p.add_argument('--task', default='detect', choices=['detect', 'segment', 'pose'])
    p.add_argument('--rate', type=float, default=0.0,
                   help='replay rate, Hz (0 = the bag rate from its stamps)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--profile', choices=['paper', 'measured'], default='paper',
                   help="device compute times of the modelled timeline: the paper's Table 1 "
                        "(Xavier NX edge, RTX 3080 server) or our engine measured on this "
                        "machine (fitted at start-up, ~20 s, unless --profile-file)")
    p.add_argument('--profile-file', default='',
                   help='a measured profile (python -m fluxshard_kernels.profile --out F); '
                        'implies --profile measured')
    p.add_argument('--out', default='out/eval', help='folder for bags, plots, JSON, report')
    p.add_argument('--live', action='store_true',
                   help='also replay the first bag through the real nodes over DDS')
    p.add_argument('--live-frames', type=int, default=24)
    p.add_argument('--live-rate', type=float, default=0.0,
                   help='live replay rate, Hz (0 = the bag rate; the nodes run CPU inference '
                        'here, so a lower rate shows latency rather than queueing)')
    p.add_argument('--live-link', choices=['auto', 'netns', 'transport'], default='auto',
                   help='live link shaping: network namespaces + tc (root), the edge '
                        'transport, or auto (netns where possible)')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--quick', action='store_true',
                   help='the short run of the README: davis-parkour and pets09-s2l1 (those '
                        'present), 24 frames each, scalability on the first, live replay '
                        'of 40 frames at 2 Hz')
    a = p.parse_args(argv)
    if a.zero_bias is not None:
        if a.zero_bias < 0 or a.live or a.quick:
            p.error('--zero-bias must be >= 0 and is for modelled runs (the nodes of --live '
                    'use motion.ZERO_BIAS)')
        from fluxshard_kernels import motion
        motion.ZERO_BIAS = a.zero_bias
    if a.quick:
        from fluxshard_kernels import data
        have = data.sequences()
        a.sequences = a.sequences or [s for s in ('davis-parkour', 'pets09-s2l1')
                                      if s in have] or have[:1]
        a.frames = a.frames or 24
        a.scal_source, a.scal_frames = a.sequences[0], 24
        a.live = True
        a.live_frames, a.live_rate = 40, a.live_rate or 2.0
    if not 0 <= a.loss < 1:
        p.error('--loss must be in [0, 1)')
    if a.profile_file:
        a.profile = 'measured'
    return a


def _profile(a):
    """The run's DeviceProfile: the paper's, a measured file, or fitted now (saved in --out)."""
    from fluxshard_kernels import profile as P
    if a.profile == 'paper':
        return P.PAPER
    if a.profile_file:
        return P.DeviceProfile.load(a.profile_file)
    print('fluxshard-eval: fitting the device profile of this machine '
          '(python -m fluxshard_kernels.profile)...', flush=True)
    prof = P.measure(a.task, edge_threads=a.threads, server_threads=a.threads)
    os.makedirs(a.out, exist_ok=True)
    a.profile_file = os.path.join(a.out, 'profile.json')
    prof.save(a.profile_file)
    print(P.describe(prof), flush=True)
    return prof


def _bags(a):
    from fluxshard_eval import bag
    from fluxshard_kernels import data
    out = []
    srcs = a.sequences if a.sequences is not None else (data.sequences() if not a.bags else [])
    os.makedirs(os.path.join(a.out, 'bags'), exist_ok=True)
    for s in srcs:
        name = os.path.basename(os.path.normpath(s)).split('.')[0]
        path = os.path.join(a.out, 'bags', name)
        if not bag.is_bag(path):  # long enough for the live replay too
            want = max(a.frames, a.live_frames if a.live else 0) if a.frames else 0
            r = bag.write_bag(s, path, limit=want or None)
            print(f"bag {path}: {r['frames']} frames at {r['rate_hz']:g} Hz "
                  f"({r['bytes'] / 1e6:.0f} MB)", flush=True)
        out.append((name, path))
    for b in a.bags:
        name = os.path.basename(os.path.normpath(b))
        if os.path.isfile(b):  # a bare .mcap / .db3 file: its name without the suffix
            name = os.path.splitext(name)[0]
        out.append((name, b))
    return out


def _load(path, topic, frames):
    from fluxshard_eval.bag import BagSource
    with BagSource(path, topic) as b:
        rate = b.rate_hz()
        imgs = [f for _, f in b.frames(frames or None)]
    return imgs, rate


def main(argv=None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    import cv2
    import torch
    from fluxshard_kernels.evaluate import _ground_truth
    from fluxshard_eval import harness, methods
    from fluxshard_server.inference import load_model
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    try:
        links = [LinkSpec.parse(x, a.delay_ms, a.loss) for x in a.links]
        bags = _bags(a)
        prof = _profile(a)
    except (ValueError, OSError) as e:
        print(f'fluxshard-eval: {e}', file=sys.stderr)
        return 2
    model = load_model(a.task)
    sources = []
    for name, path in bags:
        imgs, rate = _load(path, a.topic, a.frames)
        gt = None
        try:
            gt = _ground_truth(name, len(imgs))
        except (FileNotFoundError, OSError):
            pass
        sources.append((name, imgs, a.rate or rate, harness.Reference(model, imgs, gt)))
    scal_methods = a.scal_methods if a.scal_methods is not None else a.methods
    scal = None
    if a.edges:
        if a.scal_source in [n for n, *_ in sources]:
            scal = next(s for s in sources if s[0] == a.scal_source)
        else:
            try:
                path = os.path.join(a.out, 'bags', a.scal_source)
                if not __import__('fluxshard_eval.bag').bag.is_bag(path):
                    from fluxshard_eval.bag import write_bag
                    write_bag(a.scal_source, path)
                imgs, rate = _load(path, '', a.scal_frames)
                scal = (a.scal_source, imgs, a.rate or rate,
                        harness.Reference(model, imgs, None))
            except (ValueError, OSError) as e:
                print(f'fluxshard-eval: no scalability runs: {e}', file=sys.stderr)
    medium = next((lk for lk in links if lk.name == 'medium'), links[0])
    plan = [(m, lk, s, 1) for s in sources for lk in links for m in a.methods]
    if a.sweep:
        # the whole sweep on the moving clips; variants named with --variants on every clip
        plan += [(v, medium, s, 1) for s in sources if s[0] in MOVING or a.variants
                 for v in (a.variants or SWEEP)]
    plan += [(m, medium, s, 1) for s in sources for m in a.ablations]
    if scal is not None:
        imgs = scal[1][:a.scal_frames]
        scal = (scal[0], imgs, scal[2], scal[3])
        plan += [(m, links[0], scal, e) for m in scal_methods for e in [1] + a.edges]
    total = sum(len(s[1]) * e for _, _, s, e in plan)
    print(f'fluxshard-eval: {len(plan)} runs, {total} frames, sources '
          f'{", ".join(n for n, *_ in sources)}; links '
          f'{", ".join(f"{lk.name} ({lk.mbps:g} Mbit/s)" for lk in links)}, delay '
          f'{a.delay_ms:g} ms, loss {a.loss:g}; device times modelled on {prof.label}',
          flush=True)
    bar = Progress(total, not a.no_progress)
    runs = []
    t0 = time.monotonic()
    for m, lk, (name, imgs, rate, ref), e in plan:
        bar.label = f'{m} {lk.name} {name} x{e}'
        mk, kw = SWEEP.get(m, (m, {}))

        def factory(eid, mk=mk, kw=kw, lk=lk):
            return methods.make(mk, model, eid, lk, prof, **kw)
        r = harness.replay(factory, imgs, rate, lk, ref, edges=e, progress=bar)
        r.update(method=m, link=lk.name, link_mbps=lk.mbps, sequence=name)
        if scal is not None and imgs is scal[1]:
            r['link'] = f'{lk.name}, scalability ({name}, {len(imgs)} frames)'
            r.pop('per_frame', None)
        runs.append(r)
    bar.close()
    wall = time.monotonic() - t0
    live = None
    if a.live and bags:
        from fluxshard_eval import live as L
        mode = L.default_mode() if a.live_link == 'auto' else a.live_link
        live_profile = a.profile_file
        if not live_profile:  # the nodes start from this machine's measured costs
            from fluxshard_kernels import profile as P
            print('fluxshard-eval: measuring this machine for the live nodes '
                  '(python -m fluxshard_kernels.profile)...', flush=True)
            live_profile = os.path.join(a.out, 'profile-live.json')
            P.measure(a.task, edge_threads=a.threads, server_threads=a.threads).save(
                live_profile)
        live = L.run(bags[0][1], links[0], a.live_frames, a.out, mode=mode, rate=a.live_rate,
                     profile_file=live_profile)
    have = {r['sequence'] for r in runs}
    res = {'command': shlex.join(['fluxshard-eval', *(sys.argv[1:] if argv is None else argv)]),
           'args': vars(a), 'wall_s': wall, 'runs': runs, 'live': live,
           'profile': asdict(prof),
           'frontier': {'link': medium.name,
                        'points': report.frontier(runs, medium.name,
                                                  [s for s in MOVING if s in have] or None)}}
    text = render(res)
    print('\n' + text)
    os.makedirs(a.out, exist_ok=True)
    names = [lk.name for lk in links]
    files = report.plots(report.aggregate(runs), names, a.out)
    pts = res['frontier']['points']
    if pts:
        files.append(report.frontier_plot(pts, medium.name, os.path.join(a.out,
                                                                         'frontier.png')))
    with open(os.path.join(a.out, 'report.md'), 'w') as f:
        f.write(text)
    with open(os.path.join(a.out, 'results.json'), 'w') as f:
        json.dump({**res, 'aggregate': [{'method': k[0], 'link': k[1], 'edges': k[2], **v}
                                        for k, v in report.aggregate(runs).items()]},
                  f, indent=1, default=float)
    with open(os.path.join(a.out, 'summary.json'), 'w') as f:  # without per-frame records
        json.dump({**res, 'runs': [{k: v for k, v in r.items() if k != 'per_frame'}
                                   for r in runs]}, f, indent=0, default=float)
    print(f'wrote {a.out}/report.md, {a.out}/results.json, {a.out}/summary.json, '
          + ', '.join(files)
          + f' ({wall / 60:.1f} min)')
    bad = [r for r in runs if r['bytes_counted'] != r['bytes_on_link']]
    if bad:
        print('fluxshard-eval: byte counts disagree in ' + ', '.join(
            f"{r['method']}/{r['sequence']}" for r in bad), file=sys.stderr)
        return 1
    return 0


def render(res: dict) -> str:
    """Every table of a run as markdown, from its saved ``results.json`` (``report.md`` and the
    tables of docs/evaluation.md are both this text)."""
    a, runs = res['args'], res['runs']
    links = [LinkSpec.parse(x, a['delay_ms'], a['loss']) for x in a['links']]
    names = [lk.name for lk in links]
    agg = report.aggregate(runs)
    medium = res['frontier']['link']
    text = report.tables(agg, names, runs, res.get('profile', {}).get('label', ''))
    if a.get('sweep'):
        text += '\n' + sweep_table(runs, medium)
    pts = res['frontier']['points']
    text += '\n' + report.frontier_table(pts, medium)
    text += '\n' + targets(runs, agg, names, pts)
    if res.get('live'):
        from fluxshard_eval import live as L
        text += '\n' + L.table(res['live'], links[0])
    return text


def sweep_table(runs, link) -> str:
    lines = [f'### FluxShard variants at the {link} link, moving-camera sequences (mean)', '',
             '| variant | bytes / Full Offload | retention (%) | retention, refs >= 0.5 (%) | '
             'hit (%) | latency ms |', '|---|---|---|---|---|---|']
    for v in ['fluxshard', *SWEEP]:
        rs = [r for r in runs if r['method'] == v and r['link'] == link and r['edges'] == 1
              and r['sequence'] in MOVING]
        if not rs:
            continue
        ratio = []
        for r in rs:
            fo = next((o for o in runs if o['method'] == 'full-offload' and o['link'] == link
                       and o['sequence'] == r['sequence'] and o['edges'] == 1), None)
            if fo:
                ratio.append(r['bytes_on_link'] / fo['bytes_on_link'])
        name = (f'fluxshard (default: h264 crf{EdgeConfig.crf}, recompute-tau '
                f'{RECOMPUTE_TAU:g})') if v == 'fluxshard' else v
        mean = (lambda k: sum(r[k] for r in rs) / len(rs))
        lines.append(f"| {name} | {100 * sum(ratio) / max(len(ratio), 1):.1f} % | "
                     f"{100 * mean('retention'):.1f} | {100 * mean('retention_confident'):.1f} "
                     f"| {100 * mean('hit_ratio'):.1f} | {mean('latency_ms_mean'):.1f} |")
    return '\n'.join(lines) + '\n'


def targets(runs, agg, links, pts=()) -> str:
    """The issue's targets, measured in this run (moving-camera DAVIS at the medium link)."""
    lines = ['### Targets (this run)', '']
    med = 'medium' if 'medium' in links else links[0]
    mv = [s for s in MOVING if all(any(r['sequence'] == s and r['method'] == m
                                       and r['link'] == med for r in runs)
                                   for m in ('fluxshard', 'full-offload'))]

    def get(m, s, k):
        return next((r[k] for r in runs if r['method'] == m and r['sequence'] == s
                     and r['link'] == med and r['edges'] == 1), math.nan)
    if mv:
        ratio = [get('fluxshard', s, 'bytes_on_link') / get('full-offload', s, 'bytes_on_link')
                 for s in mv]
        ret = [get('fluxshard', s, 'retention') for s in mv]
        hit = [get('fluxshard', s, 'hit_ratio') for s in mv]
        dhit = [get('deltacnn', s, 'hit_ratio') for s in mv]
        r_, t_, h_ = max(ratio), min(ret), min(hit)
        lines.append(f"- FluxShard bytes / Full Offload on moving DAVIS at {med}: "
                     f"{', '.join(f'{100 * x:.1f} %' for x in ratio)} (target <= 8 %: "
                     f"{'met' if r_ <= 0.08 else 'not met'})")
        lines.append(f"- retention: {', '.join(f'{100 * x:.1f} %' for x in ret)} (target >= 99 %"
                     f": {'met' if t_ >= 0.99 else 'not met'})")
        rec = [get('fluxshard', s, 'server_dense_equiv_per_frame') for s in mv]
        lines.append(f"- server recomputes {', '.join(f'{100 * x:.1f} %' for x in rec)} of the "
                     f"blocks per frame (target <= 25 %: "
                     f"{'met' if max(rec) <= 0.25 else 'not met'})")
        lines.append(f"- edge hit ratio: {', '.join(f'{100 * x:.1f} %' for x in hit)}; "
                     f"DeltaCNN-style"
                     f" {', '.join(f'{100 * x:.1f} %' for x in dhit)} (target >= 75 %: "
                     f"{'met' if h_ >= 0.75 else 'not met'})")
        lat = {m: [get(m, s, 'latency_ms_mean') for s in mv] for m in
               ('fluxshard', *BASELINES)}
        mean = {m: float(sum(v) / len(v)) for m, v in lat.items()}
        best = min((m for m in BASELINES if not math.isnan(mean[m])), key=mean.get,
                   default=None)
        best2 = min((m for m in BASELINES if m != 'full-offload' and not math.isnan(mean[m])),
                    key=mean.get, default=None)
        if best:
            sp = mean[best] / mean['fluxshard']
            lines.append(f"- modelled speedup over the best baseline ({best}): {sp:.2f}x "
                         f"(target >= 2x: {'met' if sp >= 2 else 'not met'})")
        if best2:
            lines.append(f"- over the best baseline other than Full Offload ({best2}): "
                         f"{mean[best2] / mean['fluxshard']:.2f}x")
        fo = [get('full-offload', s, 'retention') for s in mv]
        ok = all(x >= 0.97 and x >= f - 0.01 for x, f in zip(ret, fo))
        lines.append(f"- retention >= 97 % on each and never more than 1 point below Full "
                     f"Offload's ({', '.join(f'{100 * f:.1f} %' for f in fo)}): "
                     f"{'met' if ok else 'not met'}")
    fx = next((p for p in pts if p['method'] == 'fluxshard'), None)
    if fx is not None:
        from fluxshard_eval.report import video_bytes_at
        vb, how = video_bytes_at(pts, fx['retention'])
        if vb is not None:
            ratio = fx['kb_per_frame'] / vb
            lines.append(f"- FluxShard bytes vs Video Offload at the same retention "
                         f"({100 * fx['retention']:.1f} %, {how}): {fx['kb_per_frame']:.1f} vs "
                         f"{vb:.1f} KB/frame = {ratio:.2f}x (target <= 0.7x: "
                         f"{'met' if ratio <= 0.7 else 'not met'})")
    es = sorted({k[2] for k in agg if k[0] == 'fluxshard' and k[2] > 1})
    if 3 in es:
        sl = next(k[1] for k in agg if k[0] == 'fluxshard' and k[2] == 3)
        g = agg[('fluxshard', sl, 3)]['latency_ms_mean'] / \
            agg[('fluxshard', sl, 1)]['latency_ms_mean']
        lines.append(f"- FluxShard latency growth 1 -> 3 edges: {g:.2f}x (target <= 1.35x: "
                     f"{'met' if g <= 1.35 else 'not met'})")
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    raise SystemExit(main())
