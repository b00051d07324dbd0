"""Replay a bag through the real nodes over DDS (``fluxshard_run``: camera replay, edge and
server as separate processes) for FluxShard, Video Offload and Full Offload. The baselines are
the same nodes pinned to offload every frame, with no local model and a dense server: Video
Offload sends each frame as an H.264 unit at CRF 23 (inside a BlockBatch: the unit plus the
batch's few KB of block metadata, which the dense server ignores), plain or with FluxShard's
ROI map from the server's results (``video-offload-roi-crf23``), Full Offload a JPEG key batch
of every frame. The link is shaped either by ``tc tbf`` on a veth pair between two network
namespaces (mode ``netns``: DDS crosses it) or in the edge's transport (mode ``transport``:
``link.emulate_mbps``); the one-way delay is always emulated in the edge transport
(``link.delay_ms``; no sch_netem here). Latencies are *measured* on this machine (camera stamp
to result), CPU inference included."""

import json
import os
import subprocess
import sys

import numpy as np

from fluxshard_eval.sim import LinkSpec

_OFFLOAD = ['scheduler.force_strategy:=cloud', 'model.local_inference:=false']
#: method -> (edge parameters, server parameters)
LIVE_METHODS = {
    'fluxshard': ([], []),
    # the plain stream: no ROI map (the edge's default payload.roi_qoffset would code the
    # objects of the server's results finer, which is the next entry)
    'video-offload-crf23': (_OFFLOAD + ['payload.codec:=h264', 'payload.crf:=23',
                                        'payload.roi_qoffset:=0.0'],
                            ['model.backend:=onnxruntime']),
    # the same stream with FluxShard's ROI map from the server's results
    'video-offload-roi-crf23': (_OFFLOAD + ['payload.codec:=h264', 'payload.crf:=23'],
                                ['model.backend:=onnxruntime']),
    'full-offload': (_OFFLOAD + ['key_interval:=1', 'payload.codec:=jpeg'],
                     ['model.backend:=onnxruntime']),
    # onnxruntime dense on the robot for every frame it takes, nothing sent
    'edge-only': (['scheduler.force_strategy:=offline', 'model.backend:=onnxruntime'], []),
}


def default_mode() -> str:
    from fluxshard_eval import netns
    return 'transport' if netns.available() else 'netns'


def run(bag_path: str, link: LinkSpec, frames: int, out_dir: str, timeout: float = 300.0,
        mode: str = 'transport', rate: float = 0.0, methods=tuple(LIVE_METHODS),
        profile_file: str = ''):
    """{method: the runner's JSON summary}; a failed run is reported, not raised.
    ``profile_file``: a device profile measured on this machine, given to FluxShard's edge
    (``scheduler.profile_file``) and server (``model.profile_file``), so neither starts by
    probing."""
    if mode not in ('transport', 'netns'):
        raise ValueError(f"live link mode must be 'transport' or 'netns', got {mode!r}")
    unknown = set(methods) - set(LIVE_METHODS)
    if unknown:
        raise ValueError(f'no live replay for {sorted(unknown)}; one of {list(LIVE_METHODS)}')
    res = {}
    for name in methods:
        extra, server = LIVE_METHODS[name]
        js = os.path.join(out_dir, f'live_{name}.json')
        cmd = [sys.executable, '-m', 'fluxshard_eval.runner', '--source', bag_path,
               '--count', str(frames), '--rate', str(rate), '--quiet', '--json', js,
               '--timeout', str(timeout),
               '--edge-param', f'link.bandwidth_mbps:={link.mbps}',
               '--edge-param', f'link.delay_ms:={link.delay_ms}',
               '--edge-param', 'camera.depth:=10']
        for p in extra:
            cmd += ['--edge-param', p]
        for p in server:
            cmd += ['--server-param', p]
        if profile_file and name == 'fluxshard':
            cmd += ['--edge-param', f'scheduler.profile_file:={profile_file}',
                    '--server-param', f'model.profile_file:={profile_file}']
        if mode == 'netns':  # tc follows the trace over time
            cmd += ['--netns', str(link.mbps)]
            if link.trace is not None:
                cmd += ['--netns-trace', link.trace_path]
        elif link.trace is not None:  # integrated over each batch in the edge transport
            cmd += ['--edge-param', f'link.trace:={link.trace_path}']
        else:
            cmd += ['--edge-param', f'link.emulate_mbps:={link.mbps}']
        env = dict(os.environ, FLUXSHARD_LOG_DIR=os.path.join(out_dir, f'live_{name}_logs'))
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 120)
        if os.path.isfile(js):
            with open(js) as f:
                res[name] = json.load(f)
        else:
            res[name] = {'error': (p.stdout + p.stderr)[-2000:]}
        res[name]['mode'] = mode
    for r in res.values():
        for robot in r.get('robots', {}).values():
            robot['steady'] = steady_state(robot.get('result_records', []))
    if any('error' not in r for r in res.values()):
        score_sides(res, bag_path, frames)
    return res


def score_sides(res: dict, bag_path: str, frames: int, task: str = 'detect'):
    """Retention of each side's live results (edge, server) against dense inference on the
    same source frames (object-pooled AP@0.5, as the harness): results are mapped to source
    frames by the stamps the camera replay logged. Adds ``retention_by`` and ``scored_by``
    (results scored) per robot; frames without a logged stamp are not scored."""
    import torch
    from fluxshard_eval.bag import BagSource
    from fluxshard_kernels import metrics
    from fluxshard_server.inference import load_model
    from fluxshard_kernels.yolo.processing import letterbox
    model = load_model(task)
    with BagSource(bag_path, '') as b:
        imgs = [f for _, f in b.frames(frames or None)]
    refs = {}

    def ref(i):
        if i not in refs:
            x, lb = letterbox(imgs[i], 640)
            with torch.no_grad():
                refs[i] = model.decode(model(torch.from_numpy(x)), lb)
        return refs[i]
    for r in res.values():
        for robot in r.get('robots', {}).values():
            stamps = robot.get('source_stamps', {})
            acc, n = {}, {}
            for x in robot.get('result_records', []):
                i = stamps.get(str(x['stamp_ns']))
                if i is None or i >= len(imgs) or 'boxes' not in x:
                    continue
                d = ref(i)
                boxes = np.asarray(x['boxes'], np.float32).reshape(-1, 4)
                side = x['computed_by'] or '?'
                acc.setdefault(side, metrics.APAccumulator(0.5)).add_pooled(
                    metrics.box_iou(boxes, d.boxes), np.asarray(x['class_ids']),
                    np.asarray(x['scores']), d.class_ids)
                n[side] = n.get(side, 0) + 1
            robot['retention_by'] = {k: a.value() for k, a in acc.items()}
            robot['scored_by'] = n


def _sides(r) -> str:
    ret, n = r.get('retention_by', {}), r.get('scored_by', {})

    def one(k):
        return f"{100 * ret[k]:.1f} % ({n[k]})" if n.get(k) and ret[k] == ret[k] else '-'
    return f"{one('server')} / {one('edge')}" if n else 'n/a'


def steady_state(records, factor: float = 1.5, run: int = 3) -> dict:
    """Split a run's results (dicts with ``stamp_ns`` and ``latency_ms``) into warm-up and
    steady state: steady from the first of ``run`` consecutive results (in stamp order) whose
    latencies are all within ``factor`` x the median of the run's second half. Returns
    p50/p90 of each part, the warm-up count and when (s after the first frame) steady began."""
    recs = sorted(records, key=lambda x: x['stamp_ns'])
    lat = np.array([x['latency_ms'] for x in recs], float)
    out = {'results': len(recs), 'warmup_results': len(recs), 'p50_ms': None, 'p90_ms': None,
           'warmup_p50_ms': None, 'steady_from_s': None}
    if not len(recs):
        return out
    ref = float(np.median(lat[len(lat) // 2:]))
    ok = lat <= factor * ref
    start = next((i for i in range(len(lat) - run + 1) if ok[i:i + run].all()), None)
    if start is None:
        out['warmup_p50_ms'] = float(np.percentile(lat, 50))
        return out
    steady, warm = lat[start:], lat[:start]
    out.update(warmup_results=int(start), p50_ms=float(np.percentile(steady, 50)),
               p90_ms=float(np.percentile(steady, 90)),
               warmup_p50_ms=float(np.percentile(warm, 50)) if len(warm) else None,
               steady_from_s=(recs[start]['stamp_ns'] - recs[0]['stamp_ns']) / 1e9)
    return out


#: A result later than this (the scheduler's ``deadline_ms``) misses its deadline.
DEADLINE_MS = 100.0


def deadline_misses(r) -> str:
    """Camera frames published without a result within the deadline, of those published."""
    pub = r.get('published') or r.get('edge_frames_in') or 0
    if not pub:
        return '-'
    ok = sum(1 for x in r.get('result_records', []) if x['latency_ms'] <= DEADLINE_MS)
    return f'{100 * (1 - ok / pub):.0f} %'


def table(res: dict, link: LinkSpec) -> str:
    mode = next(iter(res.values()), {}).get('mode', 'transport')
    how = ('tc tbf on a veth pair between network namespaces' if mode == 'netns'
           else 'shaped in the edge transport')
    rate = next(iter(res.values()), {}).get('rate_hz', 0)
    lines = [f'### Live replay at {f"{rate:g} Hz" if rate else "the bag rate"} through the real '
             f'nodes over DDS, link {link.name} '
             f'({link.mbps:g} Mbit/s, {how}; {link.delay_ms:g} ms one-way delay in the edge '
             'transport); latency measured on this machine (CPU inference)', '',
             'Steady state starts at the first of three consecutive results within 1.5x of the '
             "median latency of the run's second half; the results before it are warm-up, "
             'reported apart.', '',
             '| method | frames published | results | dropped (latest wins) | unaccounted | '
             'uplink MB | edge bytes = server bytes | steady latency p50 / p90 ms | '
             f'deadline misses ({DEADLINE_MS:g} ms) | warm-up: results, p50 ms | '
             'retention: server / edge (results) | camera to edge p50 / p90 ms |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for name, s in res.items():
        if 'error' in s:
            lines.append(f'| {name} | failed: see live_{name}_logs | | | | | | | | | | |')
            continue
        r = next(iter(s['robots'].values()))
        st = r.get('steady') or (steady_state(r['result_records']) if r.get('result_records')
                                 else {'p50_ms': r['latency_ms_p50'],
                                       'p90_ms': r['latency_ms_p90']})

        def ms(v):
            return '-' if v is None else f'{v:.0f}'
        lines.append(f"| {name} | {r['published']} | {r['results']} | "
                     f"{r['edge_dropped_superseded'] + r['server_dropped_superseded']} | "
                     f"{r.get('unaccounted', '-')} | "
                     f"{r['bytes_sent'] / 1e6:.2f} | "
                     f"{'yes' if r['bytes_sent'] == r.get('server_bytes_in') else 'no'} | "
                     f"{ms(st.get('p50_ms'))} / {ms(st.get('p90_ms'))} | "
                     f"{deadline_misses(r)} | "
                     f"{st.get('warmup_results', '-')}, {ms(st.get('warmup_p50_ms'))} | "
                     f"{_sides(r)} | {ms(r.get('input_delay_ms_p50'))} / "
                     f"{ms(r.get('input_delay_ms_p90'))} |")
    return '\n'.join(lines) + '\n'
