#!/usr/bin/env python3
"""Render the measured tables of docs/*.md from the JSON their commands saved, so a page and
its numbers cannot drift apart.

A rendered region of a page looks like

    <!-- render: eval docs/data/eval.json -->
    ... (replaced on every run) ...
    <!-- end render -->

``eval`` regions take a ``summary.json`` of ``fluxshard-eval`` (copied to ``docs/data/``) and
hold the command that made it plus every table of that run (``fluxshard_eval.cli.render``);
``bench`` and ``engine-eval`` the ``--json`` of ``python -m fluxshard_kernels.bench`` and
``python -m fluxshard_kernels.evaluate`` (their ``render``); ``profile`` a device profile of
``python -m fluxshard_kernels.profile`` (``describe``); ``cellular`` the ``--json`` of
``python -m fluxshard_eval.cellular``.

Usage:  scripts/fluxshard run python scripts/render_docs.py          # rewrite the pages
        scripts/fluxshard run python scripts/render_docs.py --check  # exit 1 if one is stale
(test/test_docs.py runs the check.)
"""

import json
from pathlib import Path
import re
import sys

ROOT = Path(__file__).resolve().parent.parent
REGION = re.compile(r'(<!-- render: ([\w-]+) (\S+) -->\n)(.*?)(<!-- end render -->)', re.S)
# every opening marker, however spelled: a marker REGION cannot read is an error, not a skip
MARKER = re.compile(r'<!-- render:(.*?)-->')


PAPER_LABEL = "the paper's Table 1 (Jetson Xavier NX edge, RTX 3080 server)"


def render_eval(path: Path) -> str:
    from fluxshard_eval import cli
    res = json.loads(path.read_text())
    wall = res.get('wall_s', 0.0)
    runs = [r for r in res['runs'] if r['edges'] == 1]
    head = (f"`{res['command']}` (saved as `{path.relative_to(ROOT)}`; harness "
            f"{len(res['runs'])} runs, {sum(r['frames'] * r['edges'] for r in res['runs'])} "
            f"frames, {wall / 60:.1f} min on this 2-core machine; sequences: "
            f"{', '.join(sorted({r['sequence'] for r in runs}))}). Modelled device times: "
            f"{res.get('profile', {}).get('label', PAPER_LABEL)}.\n")
    # one level down: the page's own headings are ## and ###
    body = re.sub(r'^### ', '#### ', cli.render(res), flags=re.M)
    return head + '\n' + body


def render_live(path: Path) -> str:
    """The live replay of a ``fluxshard-eval`` summary.json (e.g. the README's quick run)."""
    from fluxshard_eval import live
    from fluxshard_eval.sim import LinkSpec
    res = json.loads(path.read_text())
    link = LinkSpec.parse(res['args']['links'][0], res['args']['delay_ms'], res['args']['loss'])
    body = re.sub(r'^### ', '#### ', live.table(res['live'], link), flags=re.M)
    return (f"`{res['command']}`, its live replay (saved as `{path.relative_to(ROOT)}`; "
            f"{res['args']['live_frames']} frames of {res['runs'][0]['sequence']}):\n\n"
            + body)


def render_bench(path: Path) -> str:
    from fluxshard_kernels import bench
    res = json.loads(path.read_text())
    body = re.sub(r'^#+ ', '#### ', bench.render(res), flags=re.M)
    return (f"`{res['command']}` (saved as `{path.relative_to(ROOT)}`, commit "
            f"{res['meta']['commit'] or '?'}; medians of interleaved runs):\n\n" + body)


def render_engine_eval(path: Path) -> str:
    from fluxshard_kernels import evaluate
    res = json.loads(path.read_text())
    body = re.sub(r'^#+ ', '#### ', evaluate.render(res), flags=re.M)
    return f"`{res['command']}` (saved as `{path.relative_to(ROOT)}`):\n\n" + body


def render_profile(path: Path) -> str:
    from fluxshard_kernels import profile
    p = profile.DeviceProfile.load(str(path))
    body = re.sub(r'^#+ ', '#### ', profile.describe(p), flags=re.M)
    return (f"`python -m fluxshard_kernels.profile --out {path.relative_to(ROOT)}` "
            f"({p.meta.get('measured_at', '?')}, {p.meta.get('frames', '?')} frames of "
            f"{p.meta.get('sequence', '?')}):\n\n" + body)


def render_gpu_check(path: Path) -> str:
    """A saved ``scripts/gpu-check.sh`` JSON (with ``meta`` added: the card, versions, date)."""
    from fluxshard_kernels import bench, profile
    res = json.loads(path.read_text())
    m = res.get('meta', {})
    t = res['tests']
    lines = [f"`{m.get('command', 'scripts/gpu-check.sh')}` on **{m.get('card', res['card'])}** "
             f"({m.get('date', '?')}; torch {m.get('torch', '?')}, cupy {m.get('cupy', '?')}, "
             f"onnxruntime {m.get('onnxruntime', '?')}; saved as `{path.relative_to(ROOT)}`).",
             '', f"CUDA tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} "
             'skipped.', '']
    if 'engine' in res:
        lines.append(re.sub(r'^#+ ', '#### ', bench.render_engine(res['engine']), flags=re.M))
    if 'profile' in res:
        prof = profile.DeviceProfile(**{**res['profile'], 'edge': profile.RoleProfile(
            **res['profile']['edge']), 'server': profile.RoleProfile(**res['profile']['server']),
            'frame': tuple(res['profile']['frame'])})
        lines += ['', re.sub(r'^#+ ', '#### ', profile.describe(prof), flags=re.M)]
    return '\n'.join(lines)


def render_cellular(path: Path) -> str:
    """A saved ``python -m fluxshard_eval.cellular --json`` (modelled runs over the cellular
    traces, and/or its live replay)."""
    from fluxshard_eval import cellular
    res = json.loads(path.read_text())
    return (f"`{res['command']}` (saved as `{path.relative_to(ROOT)}`):\n\n"
            + re.sub(r'^#+ ', '#### ', cellular.render(res), flags=re.M))


def render_fleet(path: Path) -> str:
    """A saved ``python -m fluxshard_eval.fleet --json`` (modelled), or a saved
    ``fluxshard_run --servers N --json`` (live: it has per-robot records)."""
    from fluxshard_eval import fleet
    res = json.loads(path.read_text())
    if 'robots' in res:
        return fleet.render_live(res) + f'\n\n(saved as `{path.relative_to(ROOT)}`)'
    return (f"`{res['command']}` (saved as `{path.relative_to(ROOT)}`):\n\n"
            + fleet.render(res))


def render_payload(path: Path) -> str:
    """A saved ``fluxshard-eval`` summary.json: issue 21's per-clip payload comparison."""
    from fluxshard_eval import report
    res = json.loads(path.read_text())
    return (f"`{res['command']}` (saved as `{path.relative_to(ROOT)}`):\n\n"
            + report.payload_table(res))


RENDERERS = {'eval': render_eval, 'bench': render_bench, 'engine-eval': render_engine_eval,
             'profile': render_profile, 'gpu-check': render_gpu_check, 'live': render_live,
             'cellular': render_cellular, 'fleet': render_fleet,
             'payload': render_payload}


def check_markers(text: str, allow_empty: bool = False) -> None:
    """Every ``<!-- render:`` marker of a page opens a region REGION reads, each with its end."""
    opened = len(MARKER.findall(text))
    regions = REGION.findall(text)
    if opened != len(regions) or text.count('<!-- end render -->') != opened:
        raise ValueError(f'{opened} render markers but {len(regions)} readable regions '
                         f'(kinds are [\\w-]+, one source path, each region closed by '
                         f'<!-- end render -->)')
    for m in regions:
        if not allow_empty and not m[3].strip():
            raise ValueError(f'render region {m[1]} {m[2]} is empty')


def render_page(text: str) -> str:
    """The page with every region re-rendered; raises on an unreadable marker or an empty
    region (checked on both the page and its rendering)."""
    check_markers(text, allow_empty=True)

    def one(m):
        kind, src = m.group(2), ROOT / m.group(3)
        if kind not in RENDERERS:
            raise ValueError(f'unknown render kind {kind!r} (one of {", ".join(RENDERERS)})')
        body = RENDERERS[kind](src).rstrip('\n')
        if not body.strip():
            raise ValueError(f'{kind} {src}: rendered nothing from its JSON')
        return m.group(1) + body + '\n' + m.group(5)
    out = REGION.sub(one, text)
    check_markers(out)
    return out


def main(argv) -> int:
    check = '--check' in argv
    stale = []
    for page in sorted((ROOT / 'docs').glob('*.md')):
        text = page.read_text()
        new = render_page(text)
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if not check:
                page.write_text(new)
    if stale:
        print(('stale: ' if check else 'rendered: ') + ', '.join(stale))
    return 1 if check and stale else 0


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1:]))
