"""``python -m fluxshard_eval.cellular``: FluxShard over real cellular uplinks, against what a
robot team does instead (stream H.264 to a dense server, or compute on the robot).

    python -m fluxshard_eval.cellular [--sequences S ...] [--traces T.up ...] [--frames 60]
        [--delay-ms 50] [--profiles paper measured] [--robots 3] [--json F] [--plots DIR]

Each clip becomes a rosbag2 (under ``--out``) and its frames are read back from it; every method
replays them on the modelled timeline (``harness``) over each trace (mahimahi packet traces,
integrated over each transfer, looped), with the one-way delay in both directions, on each
device profile: the paper's Table 1 (labelled as such) and this machine's measured one. Methods:
FluxShard, Edge-only (dense on the robot, latest frame wins) and Video Offload (x264 CRF 18 / 23
/ 28, and VBV at the trace's median rate; with ``--roi-streams`` also CRF 23 / 28 with
FluxShard's ROI map).

The comparator of a run is the fastest (mean latency) of the Video Offload rungs (the ROI ones
where run) and Edge-only whose retention is at least FluxShard's minus 2 points. Per run:
latency mean / p90, the age of the newest result at each camera frame (p90), deadline misses,
frames served, retention, bytes.
``render`` prints the tables and targets from the saved JSON (docs/evaluation.md);
``--plots`` writes the latency CDFs per trace and a timeline of one run.
"""

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict

import numpy as np

from fluxshard_eval import harness, methods as M, report, sim

STATIC = ('pets09-s2l1', 'bgs-highway', 'sam2-bedroom')
VIDEO = ('video-offload-crf18', 'video-offload-crf23', 'video-offload-crf28',
         'video-offload-vbv')
#: the stream with FluxShard's ROI map (``--roi-streams``): any team could code it so
ROI_VIDEO = ('video-offload-roi-crf23', 'video-offload-roi-crf28')
#: the comparator's pool: the ROI rungs count where they were run
ALTERNATIVES = (*VIDEO, *ROI_VIDEO, 'edge-only')
METHODS = ('fluxshard', *VIDEO, 'edge-only')
#: every method a run may hold, in table order
ALL_METHODS = ('fluxshard', *VIDEO, *ROI_VIDEO, 'edge-only')
#: The comparator may keep this much less retention than FluxShard (2 points).
RETENTION_SLACK = 0.02
#: Per-frame fields kept for the timeline plot (one run per profile and trace).
TIMELINE = ('index', 'arrival', 'latency', 'computed_by', 'uplink_bytes')


def default_traces():
    from fluxshard_kernels import data
    d = data.data_root() / 'traces'
    return sorted(str(p) for p in d.glob('*.up')) if d.is_dir() else []


def comparator(runs, fx):
    """The fastest alternative (mean latency) of ``fx``'s clip, trace, profile and robots whose
    retention is at least FluxShard's minus 2 points; None when none keeps it."""
    ok = [r for r in runs if r['method'] in ALTERNATIVES and same_cell(r, fx)
          and r['retention'] >= fx['retention'] - RETENTION_SLACK
          and not math.isnan(r['latency_ms_mean'])]
    return min(ok, key=lambda r: r['latency_ms_mean'], default=None)


def same_cell(a, b):
    return all(a[k] == b[k] for k in ('sequence', 'trace', 'profile', 'robots'))


def _slim(r, keep_timeline):
    out = {k: v for k, v in r.items() if k != 'per_frame'}
    pf = r['per_frame']
    out['latencies_ms'] = [round(1e3 * f['latency'], 1) for f in pf
                           if not math.isnan(f['latency'])]
    if keep_timeline:
        out['timeline'] = [{k: f[k] for k in TIMELINE} for f in pf]
    return out


def run(a) -> dict:
    import cv2
    import torch
    from fluxshard_eval import cli
    from fluxshard_kernels import profile as P
    from fluxshard_server.inference import load_model
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    traces = a.traces or default_traces()
    if not traces:
        raise ValueError('no traces: pass --traces or put mahimahi *.up files in the data '
                         'folder\'s traces/')
    links = [sim.LinkSpec.parse(f'trace:{t}', a.delay_ms) for t in traces]
    a.bags = []
    if a.live and a.sequences is not None and a.live not in a.sequences:
        a.sequences = [*a.sequences, a.live]
    bags = cli._bags(a)  # long enough for the live replay too
    profiles = {}
    for p in a.profiles:
        if p == 'paper':
            profiles[p] = P.PAPER
        elif a.profile_file:
            profiles[p] = P.DeviceProfile.load(a.profile_file)
        else:
            print('cellular: measuring this machine (python -m fluxshard_kernels.profile)...',
                  flush=True)
            profiles[p] = P.measure('detect', edge_threads=a.threads, server_threads=a.threads)
    model = load_model('detect')
    sources = []
    for name, path in bags:
        imgs, rate = cli._load(path, '', a.frames)
        sources.append((name, imgs, rate, harness.Reference(model, imgs)))
    plan = [] if a.live_only else [
        (pn, lk, s, m, 1) for pn in profiles for lk in links for s in sources
        for m in (*METHODS, *(ROI_VIDEO if a.roi_streams else ()))]
    robots_on = [s for s in sources if s[0] in a.robot_sequences]
    if a.robots > 1 and not a.live_only:
        cell = [lk for lk in links if a.robot_trace in lk.name] or links[:1]
        plan += [('paper', cell[0], s, m, a.robots) for s in robots_on
                 for m in ('fluxshard', *VIDEO) if 'paper' in profiles]
    total = sum(len(s[1]) * e for _, _, s, _, e in plan)
    print(f'cellular: {len(plan)} runs, {total} frames; traces '
          f'{", ".join(f"{lk.name} ({lk.mbps:.2f} Mbit/s mean)" for lk in links)}, one-way '
          f'delay {a.delay_ms:g} ms; profiles {", ".join(profiles)}', flush=True)
    bar = cli.Progress(total, not a.no_progress)
    runs, t0 = [], time.monotonic()
    timeline_seq = next((s[0] for s in sources if s[0] == a.timeline), sources[0][0]
                        if sources else '')
    for pn, lk, (name, imgs, rate, ref), m, e in plan:
        bar.label = f'{pn} {lk.name} {name} {m} x{e}'
        prof = profiles[pn]

        def factory(eid, m=m, lk=lk, prof=prof, rate=rate):
            return M.make(m, model, eid, lk, prof, fps=rate)
        r = harness.replay(factory, imgs, rate, lk, ref, edges=e, progress=bar,
                           deadline_ms=a.deadline_ms)
        r.update(method=m, trace=lk.name, trace_mbps=lk.mbps, sequence=name, profile=pn,
                 robots=e, static=name in STATIC)
        runs.append(_slim(r, e == 1 and name == timeline_seq))
    bar.close()
    live = None
    if a.live:
        from fluxshard_eval import live as L
        lk = next((lk for lk in links if a.robot_trace in lk.name), links[0])
        path = next((p for n, p in bags if n == a.live), bags[0][1])
        mode = L.default_mode() if a.live_link == 'auto' else a.live_link
        live = {'sequence': a.live, 'trace': lk.name, 'frames': a.live_frames,
                'rate_hz': a.live_rate, 'delay_ms': lk.delay_ms,
                'results': L.run(path, lk, a.live_frames, a.out, mode=mode, rate=a.live_rate,
                                 methods=('fluxshard', 'video-offload-crf23', 'edge-only'),
                                 profile_file=a.profile_file)}
    return {'command': 'python -m fluxshard_eval.cellular ' + ' '.join(a.argv),
            'live': live,
            'args': {k: v for k, v in vars(a).items() if k != 'argv'},
            'wall_s': time.monotonic() - t0, 'runs': runs,
            'profiles': {k: asdict(v) for k, v in profiles.items()},
            'traces': {lk.name: {'mean_mbps': lk.mbps, 'median_mbps': lk.median_mbps,
                                 'rate_mbps_per_100ms': [round(lk.trace.at(t), 3) for t in
                                                         np.arange(0, 30, 0.1)]}
                       for lk in links}}


def _ratio(a, b):
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _at_most(x, limit) -> bool:
    """``x <= limit`` where equal up to floating-point rounding counts as equal: result ages
    are whole camera frame intervals summed in floating point, so two runs holding results
    equally old (4 intervals, 166.67 ms) gave a ratio of 1.0000000000000007."""
    return x <= limit + 1e-9


def rows(res, profile, robots=1):
    """(FluxShard run, comparator run or None) per clip and trace of a profile."""
    runs = res['runs']
    return [(fx, comparator(runs, fx)) for fx in runs if fx['method'] == 'fluxshard'
            and fx['profile'] == profile and fx['robots'] == robots]


def table(res, profile) -> str:
    label = res['profiles'][profile]['label']
    lines = [f'#### Device times modelled on {label} ({profile})', '',
             '| clip | trace | FluxShard: mean / p90 ms, age p90 ms (at frames / any time), '
             'served, retention %, KB/frame, on edge % | comparator | its mean / p90, age p90 '
             '(frames / any time), served, retention | mean, p90, age ratio (frames / any '
             'time) |', '|---|---|---|---|---|---|']
    for fx, c in rows(res, profile):
        by = fx['computed_by']
        edge = 100 * by.get('edge', 0) / max(fx['served'], 1)
        kb = fx['bytes_on_link'] / 1e3 / max(fx['processed'], 1)
        head = (f"| {fx['sequence']}{' (static)' if fx['static'] else ''} | {fx['trace']} | "
                f"{fx['latency_ms_mean']:.0f} / {fx['latency_ms_p90']:.0f}, "
                f"{fx['age_ms_p90']:.0f} / {fx['age_ms_p90_any_time']:.0f}, "
                f"{fx['served']}/{fx['frames']}, "
                f"{100 * fx['retention']:.1f}, {kb:.1f}, {edge:.0f} |")
        if c is None:
            lines.append(head + ' none keeps its retention | | |')
            continue
        lines.append(head + f" {report.name(c['method'])} | {c['latency_ms_mean']:.0f} / "
                     f"{c['latency_ms_p90']:.0f}, {c['age_ms_p90']:.0f} / "
                     f"{c['age_ms_p90_any_time']:.0f}, "
                     f"{c['served']}/{c['frames']}, {100 * c['retention']:.1f} | "
                     f"{_ratio(fx['latency_ms_mean'], c['latency_ms_mean']):.2f}, "
                     f"{_ratio(fx['latency_ms_p90'], c['latency_ms_p90']):.2f}, "
                     f"{_ratio(fx['age_ms_p90'], c['age_ms_p90']):.2f} / "
                     f"{_ratio(fx['age_ms_p90_any_time'], c['age_ms_p90_any_time']):.2f} |")
    return '\n'.join(lines) + '\n'


def methods_table(res, profile) -> str:
    """Every method's means over clips, per trace."""
    runs = [r for r in res['runs'] if r['profile'] == profile and r['robots'] == 1]
    lines = [f'#### Every method, means over clips ({profile})', '',
             '| trace | method | latency mean / p90 ms | age p90 ms | deadline misses % | '
             'served % | retention % | KB/frame |', '|---|---|---|---|---|---|---|---|']
    for tr in sorted({r['trace'] for r in runs}):
        for m in ALL_METHODS:
            rs = [r for r in runs if r['trace'] == tr and r['method'] == m]
            if not rs:
                continue

            def mean(k, rs=rs):
                return float(np.nanmean([r[k] for r in rs]))
            kb = np.mean([r['bytes_on_link'] / 1e3 / max(r['processed'], 1) for r in rs])
            lines.append(f"| {tr} | {report.name(m)} | {mean('latency_ms_mean'):.0f} / "
                         f"{mean('latency_ms_p90'):.0f} | {mean('age_ms_p90'):.0f} | "
                         f"{100 * mean('deadline_miss_rate'):.0f} | "
                         f"{100 * mean('served_fraction'):.0f} | "
                         f"{100 * mean('retention'):.1f} | {kb:.1f} |")
    return '\n'.join(lines) + '\n'


def robots_table(res) -> str:
    rs = [r for r in res['runs'] if r['robots'] > 1]
    if not rs:
        return ''
    lines = [f"#### {rs[0]['robots']} robots on one {rs[0]['trace']} cell (paper profile)", '',
             '| clip | method | latency mean / p90 ms | age p90 ms | served % | retention % |',
             '|---|---|---|---|---|---|']
    for r in rs:
        lines.append(f"| {r['sequence']} | {report.name(r['method'])} | "
                     f"{r['latency_ms_mean']:.0f} / {r['latency_ms_p90']:.0f} | "
                     f"{r['age_ms_p90']:.0f} | {100 * r['served_fraction']:.0f} | "
                     f"{100 * r['retention']:.1f} |")
    return '\n'.join(lines) + '\n'


def targets(res) -> str:
    """The issue's targets, measured in this run."""
    out = ['#### Targets (this run)', '']

    def verdict(ok):
        return 'met' if ok else 'not met'
    if any(r['profile'] == 'paper' for r in res['runs']):
        for static, lim_lat, lim_age in ((True, 0.6, 0.6), (False, 0.8, 1.0)):
            rr = [(fx, c) for fx, c in rows(res, 'paper') if fx['static'] == static]
            if not rr:
                continue
            mean = [_ratio(fx['latency_ms_mean'], c['latency_ms_mean']) if c else math.nan
                    for fx, c in rr]
            p90 = [_ratio(fx['latency_ms_p90'], c['latency_ms_p90']) if c else math.nan
                   for fx, c in rr]
            age = [_ratio(fx['age_ms_p90'], c['age_ms_p90']) if c else math.nan
                   for fx, c in rr]
            served = [_ratio(fx['served'], c['served']) if c else math.nan for fx, c in rr]
            any_t = [_ratio(fx['age_ms_p90_any_time'], c['age_ms_p90_any_time']) if c
                     else math.nan for fx, c in rr]
            what = 'static' if static else 'moving'
            out.append(
                f"- paper profile, {what} clips ({len(rr)} clip-trace runs): worst FluxShard / "
                f"comparator mean {np.nanmax(mean):.2f}x, p90 {np.nanmax(p90):.2f}x "
                f"(target <= {lim_lat}x: {verdict(_at_most(np.nanmax(mean + p90), lim_lat))}); "
                f"age p90 {np.nanmax(age):.2f}x (<= {lim_age}x: "
                f"{verdict(_at_most(np.nanmax(age), lim_age))}; at any time rather than at camera "
                f"frames, worst {np.nanmax(any_t):.2f}x, median {np.nanmedian(any_t):.2f}x); "
                f"median mean {np.nanmedian(mean):.2f}x;"
                f" served >= 0.95x: worst {np.nanmin(served):.2f}x "
                f"({verdict(_at_most(0.95, np.nanmin(served)))}); runs without a comparator at "
                f"FluxShard's retention: {sum(c is None for _, c in rr)}")
    if any(r['profile'] == 'measured' for r in res['runs']):
        mean = [_ratio(fx['latency_ms_mean'], c['latency_ms_mean']) if c else math.nan
                for fx, c in rows(res, 'measured')]
        out.append(f"- measured profile: worst FluxShard / comparator mean latency "
                   f"{np.nanmax(mean):.2f}x (target <= 1.05x on every clip and trace: "
                   f"{verdict(_at_most(np.nanmax(mean), 1.05))}); "
                   f"median {np.nanmedian(mean):.2f}x")
    multi = [r for r in res['runs'] if r['robots'] > 1 and r['method'] == 'fluxshard']
    for fx in multi:
        vo = [r for r in res['runs'] if r['method'] in VIDEO and same_cell(r, fx)
              and r['retention'] >= fx['retention'] - RETENTION_SLACK]
        best = min(vo, key=lambda r: r['latency_ms_p90'], default=None)
        if best is None:
            out.append(f"- {fx['robots']} robots, {fx['sequence']}: no Video Offload rung "
                       f"keeps FluxShard's retention ({100 * fx['retention']:.1f} %)")
            continue
        rt = _ratio(fx['latency_ms_p90'], best['latency_ms_p90'])
        out.append(f"- {fx['robots']} robots on one {fx['trace']} cell, {fx['sequence']}: "
                   f"FluxShard p90 {fx['latency_ms_p90']:.0f} ms vs {report.name(best['method'])}"
                   f" {best['latency_ms_p90']:.0f} ms = {rt:.2f}x (target <= 0.6x: "
                   f"{verdict(_at_most(rt, 0.6))})")
    bad = [r for r in res['runs'] if r['results_out_of_order']]
    late = sum(r['dropped_out_of_order'] for r in res['runs'])
    out.append(f"- results published after a newer one: "
               f"{sum(r['results_out_of_order'] for r in bad)} in {len(bad)} runs ("
               f"{late} results later than a newer one dropped, as the nodes do); frames "
               f"unaccounted (processed + dropped != frames x robots): "
               f"{sum(1 for r in res['runs'] if not accounted(r))} runs")
    return '\n'.join(out) + '\n'


def accounted(r) -> bool:
    """Every camera frame of every robot is served, dropped while the edge was busy, or lost."""
    return r['processed'] + r['dropped_edge_busy'] == r['frames'] * r['robots'] and \
        r['served'] + r['lost_on_link'] + r['dropped_out_of_order'] == r['processed']


def render(res) -> str:
    a = res['args']
    head = (f"{len(res['runs'])} runs, {a['frames'] or 'all'} frames per clip, one-way delay "
            f"{a['delay_ms']:g} ms both ways, deadline {a['deadline_ms']:g} ms; traces: "
            + ', '.join(f"{k} (mean {v['mean_mbps']:.2f}, median {v['median_mbps']:.2f} "
                        f"Mbit/s)" for k, v in res['traces'].items())
            + f"; {res['wall_s'] / 60:.1f} min on this 2-core machine.\n")
    parts = [head, targets(res)] if res['runs'] else []
    for p in res['profiles'] if res['runs'] else ():
        parts += [table(res, p), methods_table(res, p)]
    parts.append(robots_table(res))
    if res.get('live'):
        from fluxshard_eval import live as L
        lv = res['live']
        lk = sim.LinkSpec(lv['trace'], res['traces'][lv['trace']]['mean_mbps'], lv['delay_ms'])
        parts.append(f"Live: {lv['frames']} frames of {lv['sequence']} at {lv['rate_hz']:g} Hz "
                     f"through the real nodes, the link following the {lv['trace']} trace.\n")
        parts.append(re.sub(r'^### ', '#### ', L.table(lv['results'], lk), flags=re.M))
    return '\n'.join(x for x in parts if x)


def plots(res, out_dir) -> list:
    """Latency CDF per trace and method (paper profile, all clips pooled) and a timeline of
    one run per trace (link rate, where each frame was computed, its latency)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    files = []
    prof = 'paper' if 'paper' in res['profiles'] else next(iter(res['profiles']))
    trs = list(res['traces'])
    fig, axes = plt.subplots(1, len(trs), figsize=(4.2 * len(trs), 3.6), squeeze=False)
    for ax, tr in zip(axes[0], trs):
        for m in ALL_METHODS:
            lat = np.sort([x for r in res['runs'] if r['method'] == m and r['trace'] == tr
                           and r['profile'] == prof and r['robots'] == 1
                           for x in r['latencies_ms']])
            if len(lat):
                ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=report.name(m))
        ax.set_xscale('log')
        ax.set_title(tr, fontsize=9)
        ax.set_xlabel('latency (ms, modelled)')
        ax.axvline(res['args']['deadline_ms'], color='grey', lw=0.8, ls=':')
    axes[0][0].set_ylabel('fraction of served frames')
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    files.append(os.path.join(out_dir, 'cellular-cdf.png'))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    tl = [r for r in res['runs'] if 'timeline' in r and r['profile'] == prof
          and r['method'] == 'fluxshard']
    if tl:
        fig, axes = plt.subplots(len(tl), 1, figsize=(9, 2.4 * len(tl)), squeeze=False)
        for ax, r in zip(axes[:, 0], tl):
            t = [f['arrival'] for f in r['timeline']]
            rate = res['traces'][r['trace']]['rate_mbps_per_100ms']
            ax2 = ax.twinx()
            ax2.fill_between(np.arange(len(rate)) * 0.1, rate, color='#ddd', step='post')
            ax2.set_ylabel('uplink Mbit/s', fontsize=7)
            ax2.set_xlim(0, max(t) + 0.5 if t else 1)
            for who, col in (('edge', 'tab:red'), ('server', 'tab:blue'), ('cache', 'tab:green')):
                pts = [(f['arrival'], 1e3 * f['latency']) for f in r['timeline']
                       if f['computed_by'] == who]
                if pts:
                    ax.scatter(*zip(*pts), s=9, color=col, label=f'computed by {who}', zorder=3)
            ax.set_zorder(ax2.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax.set_ylabel('latency ms')
            ax.set_title(f"FluxShard, {r['sequence']}, {r['trace']} ({prof} profile)",
                         fontsize=9)
            ax.legend(fontsize=6, loc='upper left')
        axes[-1, 0].set_xlabel('camera time (s)')
        fig.tight_layout()
        files.append(os.path.join(out_dir, 'cellular-timeline.png'))
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files


def _args(argv):
    p = argparse.ArgumentParser(prog='python -m fluxshard_eval.cellular', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sequences', nargs='*', default=None, help='clips (default: all)')
    p.add_argument('--traces', nargs='*', default=None,
                   help='trace files (default: the data folder\'s traces/*.up)')
    p.add_argument('--frames', type=int, default=60, help='frames per clip (0 = all)')
    p.add_argument('--delay-ms', type=float, default=50.0, help='one-way delay, ms')
    p.add_argument('--deadline-ms', type=float, default=harness.DEADLINE_MS)
    p.add_argument('--profiles', nargs='+', choices=['paper', 'measured'],
                   default=['paper', 'measured'])
    p.add_argument('--profile-file', default='', help='a measured profile to use')
    p.add_argument('--robots', type=int, default=3, help='robots sharing one cell (1 = none)')
    p.add_argument('--robot-trace', default='Verizon')
    p.add_argument('--robot-sequences', nargs='*', default=['davis-parkour', 'pets09-s2l1'])
    p.add_argument('--timeline', default='davis-parkour', help='clip of the timeline plot')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='out/cellular', help='folder for the bags')
    p.add_argument('--json', default='', help='save the results here')
    p.add_argument('--plots', default='', help='write the plots into this folder')
    p.add_argument('--live', default='', metavar='CLIP',
                   help='also replay this clip through the real nodes (FluxShard, Video '
                        'Offload CRF 23, Edge-only) over the --robot-trace trace')
    p.add_argument('--live-frames', type=int, default=60)
    p.add_argument('--live-rate', type=float, default=2.0)
    p.add_argument('--live-link', choices=['auto', 'netns', 'transport'], default='auto')
    p.add_argument('--live-only', action='store_true',
                   help='only the live replay (needs --live), no modelled runs')
    p.add_argument('--roi-streams', action='store_true',
                   help='also stream with FluxShard\'s ROI map (video-offload-roi-crf23 / 28); '
                        'they join the comparator\'s pool')
    p.add_argument('--no-progress', action='store_true')
    a = p.parse_args(argv)
    a.argv = list(argv)
    if a.delay_ms < 0 or a.frames < 0 or a.robots < 1:
        p.error('--delay-ms and --frames must be >= 0, --robots >= 1')
    if a.live_only and not a.live:
        p.error('--live-only needs --live CLIP')
    return a


def main(argv=None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    try:
        res = run(a)
    except (ValueError, OSError) as e:
        print(f'cellular: {e}', file=sys.stderr)
        return 2
    print(render(res))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, 'w') as f:
            json.dump(res, f, indent=0, default=float)
    if a.plots and res['runs']:
        print('wrote ' + ', '.join(plots(res, a.plots)))
    bad = [r for r in res['runs'] if not accounted(r)]
    if bad:
        print('cellular: frames unaccounted in ' + ', '.join(
            f"{r['method']}/{r['sequence']}/{r['trace']}" for r in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
