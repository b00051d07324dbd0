"""Markdown tables shaped like the paper's Tables 2-4 and the PNG plots of an evaluation."""

import math
from typing import Dict, List

import numpy as np

NAMES = {'fluxshard': 'FluxShard', 'full-offload': 'Full Offload', 'spinn': 'SPINN-style',
         'coach': 'COACH-style', 'deltacnn': 'DeltaCNN-style', 'no-ata': 'No-ATA',
         'no-ms-comp': 'No-MS-Comp', 'full-offload-png': 'Full Offload (PNG)'}
NAMES.update({f'video-offload-crf{c}': f'Video Offload (H.264 CRF {c})' for c in range(52)})
NAMES.update({f'video-offload-roi-crf{c}': f'Video Offload ROI (H.264 CRF {c}, objects finer)'
              for c in range(52)})
NAMES.update({'video-offload-vbv': 'Video Offload (H.264, VBV at the median rate)',
              'edge-only': 'Edge-only (dense on the robot)'})
ORDER = ('full-offload', 'full-offload-png',
         *(f'video-offload-crf{c}' for c in range(52)), 'video-offload-vbv',
         *(f'video-offload-roi-crf{c}' for c in range(52)), 'edge-only',
         'spinn', 'coach', 'deltacnn', 'fluxshard', 'no-ata', 'no-ms-comp')


def plain_stream(m: str) -> bool:
    """A rung of the Video Offload ladder (a plain stream; not the ROI-coded one)."""
    return m.startswith('video-offload') and not m.startswith('video-offload-roi')


def name(m: str) -> str:
    """A method's or variant's display name."""
    return NAMES.get(m, m)


def _f(v, fmt='{:.1f}', scale=1.0):
    return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else \
        fmt.format(v * scale)


def aggregate(runs: List[dict]) -> Dict[tuple, dict]:
    """(method, link, edges) -> means over sequences of the per-run numbers."""
    groups = {}
    for r in runs:
        groups.setdefault((r['method'], r['link'], r['edges']), []).append(r)
    out = {}
    for key, rs in groups.items():
        agg = {'sequences': [r['sequence'] for r in rs]}
        for k, v in rs[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                vals = [x for x in (r.get(k, math.nan) for r in rs) if x == x]
                agg[k] = float(np.mean(vals)) if vals else math.nan
        agg['bytes_on_link_total'] = float(sum(r['bytes_on_link'] for r in rs))
        out[key] = agg
    return out


def _methods(agg, edges=1):
    present = {m for (m, _, e) in agg if e == edges}
    return [m for m in ORDER if m in present]


def tables(agg: Dict[tuple, dict], links: List[str], runs: List[dict],
           profile_label: str = '') -> str:
    """All tables as one markdown string; modelled times are labelled with ``profile_label``
    (the device profile's label; default the paper's Table 1)."""
    from fluxshard_kernels.profile import PAPER
    profile_label = profile_label or PAPER.label
    main = [m for m in _methods(agg) if m not in ('no-ata', 'no-ms-comp')]

    def per_link(title, cell, extra_cols=(), extra=None):
        cols = [name(m) for m in main] + list(extra_cols)
        out = ['', title, '', '| link | ' + ' | '.join(cols) + ' |', '|---|' + '---|' * len(cols)]
        for link in links:
            a = {m: agg.get((m, link, 1), {}) for m in main}
            cells = [cell(a[m]) for m in main] + (extra(a) if extra else [])
            out.append(f'| {link} | ' + ' | '.join(cells) + ' |')
        return out

    def speedups(a):
        lat = {m: a[m].get('latency_ms_mean', math.nan) for m in main}
        fx = lat.get('fluxshard', math.nan)
        out = []
        for skip in (('fluxshard',), ('fluxshard', 'full-offload')):
            base = [v for m, v in lat.items() if m not in skip and not math.isnan(v)]
            out.append(f'{min(base) / fx:.2f}x' if base and fx == fx else 'n/a')
        return out

    lines = per_link('### Accuracy retention vs dense inference on the true frame (%, AP@0.5; '
                     'paper Table 2)', lambda a: _f(a.get('retention'), scale=100))
    lines += per_link('### Cache hit ratio (%) and uplink bandwidth (MB/s) (paper Table 3)',
                      lambda a: f"{_f(a.get('hit_ratio'), scale=100)} "
                                f"({_f(a.get('bandwidth_MBps'), '{:.2f}')})")
    lines += per_link(f'### End-to-end latency, modelled (ms, mean; device times: '
                      f'{profile_label}; paper Figure 2)',
                      lambda a: _f(a.get('latency_ms_mean', math.nan)),
                      ('FluxShard speedup vs best baseline', 'vs best non-offload baseline'),
                      speedups)
    lines += per_link('### Compute on the edge (% of all MACs) and frames served / dropped',
                      lambda a: f"{_f(a.get('edge_compute_share'), scale=100)} % / "
                                f"{_f(a.get('processed'), '{:.0f}')} of "
                                f"{_f(a.get('frames'), '{:.0f}')}")
    abl = [m for m in ('fluxshard', 'no-ata', 'no-ms-comp') if (m, 'medium', 1) in agg]
    if len(abl) > 1:
        lines += ['', '### Ablation at the medium link (paper Table 4)', '',
                  '| method | latency (ms) | cache hit (%) | retention (%) | MB/s |',
                  '|---|---|---|---|---|']
        for m in abl:
            a = agg[(m, 'medium', 1)]
            lines.append(f"| {name(m)} | {_f(a['latency_ms_mean'])} | "
                         f"{_f(a['hit_ratio'], scale=100)} | {_f(a['retention'], scale=100)} | "
                         f"{_f(a['bandwidth_MBps'], '{:.2f}')} |")
    seq_rows = [r for r in runs
                if r['edges'] == 1 and r['method'] in ('fluxshard', 'full-offload')]
    seqs = sorted({r['sequence'] for r in seq_rows})
    link0 = 'medium' if 'medium' in links else links[0]
    if seqs:
        lines += ['', f'### Per sequence at the {link0} link: FluxShard against Full Offload',
                  '', '| sequence | FluxShard bytes / Full Offload | retention (%) | '
                  'retention, refs >= 0.5 (%) | GT AP FluxShard / dense | hit (%) | '
                  'latency ms FluxShard / Full Offload |', '|---|---|---|---|---|---|---|']
        for sq in seqs:
            f = next((r for r in seq_rows if r['sequence'] == sq and r['link'] == link0
                      and r['method'] == 'fluxshard'), None)
            o = next((r for r in seq_rows if r['sequence'] == sq and r['link'] == link0
                      and r['method'] == 'full-offload'), None)
            if not f or not o:
                continue
            gt = (f"{_f(f.get('gt_ap'), '{:.3f}')} / {_f(f.get('gt_ap_dense'), '{:.3f}')}"
                  if 'gt_ap' in f else 'no GT')
            lines.append(f"| {sq} | {_f(f['bytes_on_link'] / o['bytes_on_link'], scale=100)} %"
                         f" | {_f(f['retention'], scale=100)} | "
                         f"{_f(f['retention_confident'], scale=100)} | {gt} | "
                         f"{_f(f['hit_ratio'], scale=100)} | {_f(f['latency_ms_mean'])} / "
                         f"{_f(o['latency_ms_mean'])} |")
        by_rows = [r for r in seq_rows if r['method'] == 'fluxshard' and r['link'] == link0
                   and 'retention_by' in r]
        if by_rows:
            lines += ['', f"### Who computed FluxShard's results at the {link0} link: results "
                      '(retention %)', '', '| sequence | server | edge | cache (reused) | '
                      'lost / not served |', '|---|---|---|---|---|']
            for r in sorted(by_rows, key=lambda r: r['sequence']):
                n, ret = r['computed_by'], r['retention_by']
                cell = [f"{n.get(k, 0)} ({_f(ret.get(k), scale=100)})" if n.get(k) else '0'
                        for k in ('server', 'edge', 'cache')]
                lost = n.get('lost', 0) + r.get('dropped_edge_busy', 0)
                lines.append(f"| {r['sequence']} | " + ' | '.join(cell) + f' | {lost} |')
    scal = sorted({e for (_, _, e) in agg if e > 1})
    if scal:
        edges = [1] + scal
        sl = next(iter({lk for (m, lk, e) in agg if e > 1}))
        ms = [m for m in ORDER if (m, sl, 2) in agg or (m, sl, max(scal)) in agg]
        lines += ['', f'### Scalability at the {sl} link (modelled latency ms; growth vs one '
                  'edge; paper Figure 4)', '',
                  '| method | ' + ' | '.join(f'{e} edge{"s" if e > 1 else ""}' for e in edges)
                  + ' |', '|---|' + '---|' * len(edges)]
        for m in ms:
            one = agg.get((m, sl, 1), {}).get('latency_ms_mean', math.nan)
            cells = []
            for e in edges:
                v = agg.get((m, sl, e), {}).get('latency_ms_mean', math.nan)
                cells.append(f'{_f(v)} ({v / one:.2f}x)' if e > 1 and one == one and v == v
                             else _f(v))
            lines.append(f'| {name(m)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plots(agg: Dict[tuple, dict], links: List[str], out_dir: str) -> List[str]:
    """PNG bar/line charts; returns the files written."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    files = []
    main = [m for m in _methods(agg)]
    for key, label, fname, scale in (
            ('latency_ms_mean', 'modelled end-to-end latency (ms)', 'latency.png', 1),
            ('bandwidth_MBps', 'uplink bandwidth (MB/s)', 'bandwidth.png', 1),
            ('hit_ratio', 'cache hit ratio (%)', 'hit_ratio.png', 100),
            ('retention', 'accuracy retention (%)', 'retention.png', 100)):
        ms = [m for m in main if any((m, lk, 1) in agg for lk in links)]
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(len(ms), 1)
        for i, m in enumerate(ms):
            vals = [agg.get((m, lk, 1), {}).get(key, math.nan) * scale for lk in links]
            ax.bar(np.arange(len(links)) + i * width, vals, width, label=name(m))
        ax.set_xticks(np.arange(len(links)) + width * (len(ms) - 1) / 2)
        ax.set_xticklabels(links)
        ax.set_ylabel(label)
        ax.set_xlabel('link class')
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = f'{out_dir}/{fname}'
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    scal = sorted({e for (_, _, e) in agg if e > 1})
    if scal:
        sl = next(iter({lk for (m, lk, e) in agg if e > 1}))
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in ORDER:
            es = [e for e in [1] + scal if (m, sl, e) in agg]
            if len(es) > 1:
                ax.plot(es, [agg[(m, sl, e)]['latency_ms_mean'] for e in es], marker='o',
                        label=name(m))
        ax.set_xlabel('edges sharing one server')
        ax.set_ylabel('modelled latency (ms)')
        ax.set_xticks([1] + scal)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = f'{out_dir}/scalability.png'
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def frontier(runs: List[dict], link: str, sequences=None) -> List[dict]:
    """Bytes against retention at ``link`` (one edge): one point per method or variant, the
    means over the sequences every point has (``sequences`` to restrict them further)."""
    rs = [r for r in runs if r['link'] == link and r['edges'] == 1]
    seqs = set(sequences) if sequences is not None else {r['sequence'] for r in rs}
    for m in {r['method'] for r in rs}:
        seqs &= {r['sequence'] for r in rs if r['method'] == m}
    pts = []
    for m in sorted({r['method'] for r in rs}, key=lambda m: (ORDER + (m,)).index(m)):
        mine = [r for r in rs if r['method'] == m and r['sequence'] in seqs]
        if not mine:
            continue
        psnr = [v for v in (r.get('proxy_psnr_db', math.nan) for r in mine) if v == v]
        pts.append({'method': m, 'sequences': sorted(seqs),
                    'kb_per_frame': float(np.mean([r['bytes_on_link'] / r['frames']
                                                   for r in mine])) / 1e3,
                    'retention': float(np.mean([r['retention'] for r in mine])),
                    'hit_ratio': float(np.mean([r['hit_ratio'] for r in mine])),
                    'not_recomputed': 1.0 - float(np.mean(
                        [r['server_dense_equiv_per_frame'] for r in mine])),
                    'proxy_psnr_db': float(np.mean(psnr)) if psnr else math.nan})
    return pts


def video_bytes_at(pts: List[dict], retention: float):
    """KB per frame the Video Offload ladder needs for ``retention`` and how it was read:
    'interpolated' (log bytes between the cheapest rung that reaches it and the next cheaper
    one), "the ladder's cheapest reaches it" (an upper bound: the ratio flatters FluxShard),
    "beyond the ladder's best" (its best rung: the ratio flatters Video Offload), or None."""
    ladder = sorted(((p['kb_per_frame'], p['retention']) for p in pts
                     if plain_stream(p['method'])))
    if not ladder:
        return None, None
    reach = [i for i, (_, r) in enumerate(ladder) if r >= retention]
    if not reach:
        return max(ladder, key=lambda x: x[1])[0], "beyond the ladder's best"
    j = reach[0]
    if j == 0:
        return ladder[0][0], "the ladder's cheapest reaches it"
    (b0, r0), (b1, r1) = ladder[j - 1], ladder[j]
    t = (retention - r0) / (r1 - r0)
    return float(math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))), 'interpolated'


def _frames_only(m: str) -> bool:  # methods that send whole frames: no cache, no hit ratio
    return m.startswith('video-offload') or m.startswith('full-offload')


def frontier_table(pts: List[dict], link: str) -> str:
    """The frontier as markdown; beside each method, Video Offload's bytes at its retention."""
    if not pts:
        return ''
    lines = [f'### Bytes against accuracy at the {link} link (one edge; sequences: '
             f"{', '.join(pts[0]['sequences'])})", '',
             '| method | KB / frame | retention (%) | server blocks not recomputed (%) | '
             'server image PSNR (dB) | Video Offload KB / frame at this retention | '
             'bytes vs Video Offload |',
             '|---|---|---|---|---|---|---|']
    for p in pts:
        vb, how = video_bytes_at(pts, p['retention'])
        video = plain_stream(p['method'])
        rel = '-' if vb is None or video else f'{vb:.1f} ({how})'
        ratio = '-' if vb is None or video else f"{p['kb_per_frame'] / vb:.2f}x"
        hit = '-' if _frames_only(p['method']) else _f(p.get('not_recomputed'), scale=100)
        lines.append(f"| {name(p['method'])} | {p['kb_per_frame']:.1f} | "
                     f"{100 * p['retention']:.1f} | {hit} | "
                     f"{_f(p.get('proxy_psnr_db', math.nan))} | {rel} | {ratio} |")
    return '\n'.join(lines) + '\n'


def frontier_plot(pts: List[dict], link: str, path: str) -> str:
    """KB per frame (log) against retention, one marker per method, the Video Offload ladder
    as a line; returns ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    video = [p for p in pts if plain_stream(p['method'])]
    if video:
        v = sorted(video, key=lambda p: p['kb_per_frame'])
        ax.plot([p['kb_per_frame'] for p in v], [100 * p['retention'] for p in v], '-o',
                color='grey', label='Video Offload (H.264 CRF ladder)')
        for p in v:
            ax.annotate(p['method'].split('-')[-1].upper(),
                        (p['kb_per_frame'], 100 * p['retention']), fontsize=7,
                        textcoords='offset points', xytext=(4, -10))
    for p in pts:
        if plain_stream(p['method']):
            continue
        ax.plot(p['kb_per_frame'], 100 * p['retention'], 's' if 'fluxshard' in p['method']
                else 'o', label=name(p['method']))
    ax.set_xscale('log')
    ax.set_xlabel('uplink KB per frame (log)')
    ax.set_ylabel('accuracy retention vs dense on the true frame (%)')
    ax.set_title(f'bytes against accuracy, {link} link', fontsize=9)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=6, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def payload_table(res: dict, link: str = 'medium') -> str:
    """Issue 21's comparison per clip: FluxShard and its payload variants against the Video
    Offload ladder (the comparator: the cheapest rung at least as accurate as the method on
    that clip, else the most accurate rung), bytes per frame and retention."""
    runs = [r for r in res['runs'] if r['link'] == link and r['edges'] == 1]
    seqs = list(dict.fromkeys(r['sequence'] for r in runs))
    by = {(r['method'], r['sequence']): r for r in runs}
    ladder = sorted({r['method'] for r in runs if r['method'].startswith('video-offload-crf')},
                    key=lambda m: int(m[17:]))
    ours = ['fluxshard'] + sorted({r['method'] for r in runs
                                   if r['method'].startswith('fluxshard ')})
    # the ROI-coded stream: what ROI coding alone gives any stream, against the same ladder
    rated = ours + sorted(
        {r['method'] for r in runs if r['method'].startswith('video-offload-roi-crf')},
        key=lambda m: int(m[21:]))

    def kb(r):
        return r['bytes_counted'] / max(r['frames'], 1) / 1e3

    head = ['clip'] + [f'{m[14:].replace("-crf", "CRF ")}' for m in ladder] + [
        name(m) for m in rated]
    lines = [f'Per clip at the {link} link: KB per frame / retention (%); for FluxShard and its '
             'variants, and the ROI-coded stream, also bytes over the comparator (the cheapest '
             'plain Video Offload rung at least as accurate on that clip, else the most '
             'accurate one).', '',
             '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    ratios = {m: [] for m in rated}
    for s in seqs:
        cells = [s]
        for m in ladder:
            r = by.get((m, s))
            cells.append(f'{kb(r):.1f} / {100 * r["retention"]:.1f}' if r else '-')
        rungs = [by[(m, s)] for m in ladder if (m, s) in by]
        for m in rated:
            r = by.get((m, s))
            if r is None or not rungs:
                cells.append('-')
                continue
            ok = [v for v in rungs if v['retention'] >= r['retention']]
            comp = min(ok, key=kb) if ok else max(rungs, key=lambda v: v['retention'])
            ratio = kb(r) / max(kb(comp), 1e-9)
            ratios[m].append(ratio)
            cells.append(f'{kb(r):.1f} / {100 * r["retention"]:.1f} ({ratio:.2f}x)')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'Median bytes over the comparator: ' + '; '.join(
        f'{name(m)} {sorted(v)[len(v) // 2]:.2f}x' for m, v in ratios.items() if v)]
    lines += ['', 'Blocks the server recomputes, per frame (%; a frame run dense counts whole):',
              '', '| clip | ' + ' | '.join(name(m) for m in ours) + ' |',
              '|' + '---|' * (len(ours) + 1)]
    for s in seqs:
        lines.append(f'| {s} | ' + ' | '.join(
            f"{100 * by[(m, s)]['server_dense_equiv_per_frame']:.1f}" if (m, s) in by else '-'
            for m in ours) + ' |')
    return '\n'.join(lines)
