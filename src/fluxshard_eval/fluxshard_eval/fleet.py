"""``python -m fluxshard_eval.fleet``: a fleet of robots over several GPU servers, modelled.

    python -m fluxshard_eval.fleet [--sequences S ...] [--frames 60] [--rate 5] [--duration 30]
        [--json docs/data/fleet.json] [--plot docs/img/fleet-failover.png]

Two stages. First each clip is replayed once through FluxShard on one robot (``harness``, the
paper's Table 1 profile, medium link): per processed frame, the robot's compute, the bytes it
sent and the server's compute (robots replaying the same clip share these, so the fleet runs
in minutes). Then a discrete-event model runs N robots (clips mixed, random camera phases) over
M servers, each with its own GPU (a speed factor) and its own ingress link (medium: 56 Mbit/s,
10 ms one way, FIFO): a server keeps one latest-wins job per robot and serves its robots round
robin, as ``fluxshard_server`` does. The assignment is either static round robin (robot i on
server i mod M; when its server dies the robot computes locally, dense, on its edge) or
load-aware: every robot runs ``fluxshard_edge.fleet.Chooser`` on the servers' 1 Hz
announcements, as the edge node does, and moves when its server stops acknowledging
(ACK timeout 0.5 s) with its last frame offered again to the new server as a key batch.

Scenarios: equal servers, 8 / 16 / 64 robots over 1 / 2 / 4 (latency growth); 64 over 4 with
one server half as fast (load-aware against static); the same with one full-speed server lost
mid-run (its robots' p90 before and after). A frame superseded at a server or lost with it has
no result: counted, and the served fraction is reported beside the latency. The robots'
offload decisions are those of the single-robot replay (they do not adapt to a loaded server).
"""

import argparse
from dataclasses import dataclass, field
import heapq
import itertools
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from fluxshard_edge import fleet as F
from fluxshard_eval import sim

#: ACK timeout of the robots (edge ``link.ack_timeout_ms``), s.
ACK_TIMEOUT_S = 0.5
#: Servers announce every this many seconds.
ANNOUNCE_S = 1.0
#: A failover counts as done when its robots' p90 is within this factor of before.
RECOVERY_FACTOR = 1.5
#: Bytes of a result coming back.
RESULT_BYTES = 2000


@dataclass
class Demand:
    """One processed frame of the single-robot replay of a clip (modelled seconds)."""

    offset: float        # arrival of the frame after the first one, s
    by: str              # 'server' or 'edge'
    edge_s: float        # the robot's critical-path compute
    nbytes: int          # bytes sent
    server_s: float      # the server's compute (0 when computed on the edge)
    latency: float       # its latency in the single-robot replay (nan: none)
    receive_s: float = 0.0  # the server's batch callback on its CPU before the GPU queue


@dataclass
class Clip:
    name: str
    frames: List[Demand]
    period: float        # the clip's length, s (it loops)
    key_bytes: int       # a key batch's bytes (the first batch)


def demands(sequences, frames: int, rate: float, progress=True) -> List[Clip]:
    """Replay each clip once through FluxShard (paper profile, medium link, one robot)."""
    from fluxshard_eval import cli, harness, methods as M
    from fluxshard_server.inference import load_model
    a = argparse.Namespace(sequences=list(sequences), bags=[], live=None, out=os.path.join(
        os.getcwd(), 'log', 'fleet'), frames=frames)
    model = load_model('detect')
    link = sim.LinkSpec.parse('medium')
    out = []
    for name, path in cli._bags(a):
        imgs, _ = cli._load(path, '', frames)
        ref = harness.Reference(model, imgs)
        r = harness.replay(lambda eid: M.make('fluxshard', model, eid, link, sim.PAPER,
                                              fps=rate), imgs, rate, link, ref)
        fr = []
        for f in r['per_frame']:
            ex = f['extra']
            fr.append(Demand(f['arrival'], f['computed_by'] or 'lost', ex.get('edge_s', 0.0),
                             f['uplink_bytes'], ex.get('server_s', 0.0), f['latency'],
                             ex.get('receive_s', 0.0)))
        sent = [d.nbytes for d in fr if d.nbytes]
        out.append(Clip(name, fr, len(imgs) / rate, sent[0] if sent else 0))
        if progress:
            print(f'fleet: {name}: {len(fr)} frames, {np.mean(sent or [0]) / 1e3:.1f} KB/batch, '
                  f'server {1e3 * np.mean([d.server_s for d in fr if d.server_s] or [0]):.1f} '
                  f'ms/job, {sum(d.by == "server" for d in fr)} offloaded', flush=True)
    return out


@dataclass
class _Server:
    sid: str
    speed: float
    link: sim.Link
    alive: bool = True
    pending: Dict[int, tuple] = field(default_factory=dict)  # robot -> job
    busy_until: float = 0.0
    running: Optional[tuple] = None
    rr: int = 0
    infer_ms: float = 0.0
    last_seen: Dict[int, float] = field(default_factory=dict)  # robot -> last arrival


@dataclass
class _Robot:
    rid: int
    name: str
    clip: Clip
    phase: float
    server: Optional[int] = None
    chooser: Optional[F.Chooser] = None
    key_due: bool = True
    edge_free: float = 0.0
    awaiting: Dict[int, tuple] = field(default_factory=dict)  # frame id -> (t, demand, srv)
    local: bool = False  # static robot whose server died: dense on the edge


def simulate(clips: List[Clip], robots: int, speeds: List[float], policy: str,
             duration: float, kill: Optional[int] = None, kill_at: float = math.inf,
             seed: int = 0, link: str = 'medium') -> dict:
    """One fleet run; returns per-frame records and the summary."""
    rng = np.random.default_rng(seed)
    spec = sim.LinkSpec.parse(link)
    edge_dense_s = sim.PAPER.edge.dense_s
    names = [f'robot{i + 1}' for i in range(robots)]
    srvs = [_Server(f'gpu{j + 1}', s, sim.Link(spec, seed + j)) for j, s in enumerate(speeds)]
    bots = []
    for i in range(robots):
        r = _Robot(i, names[i], clips[i % len(clips)], float(rng.uniform(0, 1.0)))
        if policy == 'static':
            r.server = i % len(srvs)
        else:
            r.chooser = F.Chooser(names[i], 'detect')
        bots.append(r)
    q, ctr = [], itertools.count()

    def push(t, kind, *data):
        heapq.heappush(q, (t, next(ctr), kind, data))

    recs = []  # (robot, arrival t, latency or nan, who)
    on_server = []  # robots of the killed server at the kill
    for r in bots:
        push(r.phase, 'frame', r.rid, 0)
    for k in range(int(duration / ANNOUNCE_S) + 1):
        push(k * ANNOUNCE_S + 1e-6, 'announce')
    if kill is not None:
        push(kill_at, 'kill', kill)

    def announce(t):
        for s in srvs:
            if not s.alive:
                continue
            serving = tuple(names[i] for i, ts in s.last_seen.items() if t - ts < 3.0)
            a = F.Announcement(s.sid, 'detect', tuple(names), serving, len(s.pending),
                               s.infer_ms, 0.0, True, t)
            for r in bots:
                if r.chooser is not None:
                    r.chooser.observe(a)

    def choose(r, t):
        if r.chooser is None:
            return
        sid, _ = r.chooser.choose(t)
        new = next((j for j, s in enumerate(srvs) if s.sid == sid), None)
        if new != r.server:
            r.server, r.key_due = new, True

    def start(s, t):
        if s.running is not None or not s.pending or not s.alive:
            return
        order = sorted(s.pending)
        nxt = next((i for i in order if i >= s.rr), order[0])
        s.rr = nxt + 1
        job = s.pending.pop(nxt)
        took = job[3] / s.speed
        s.infer_ms = 1e3 * took if not s.infer_ms else 0.8 * s.infer_ms + 200 * took
        s.running = job
        push(t + took, 'done', srvs.index(s), job)

    def send(r, t, fid, d, t_frame):
        s = srvs[r.server]
        nbytes, server_s = d.nbytes, d.server_s
        if r.key_due:
            nbytes = max(nbytes, r.clip.key_bytes)
            server_s = max(server_s, sim.PAPER.server.dense_s)
            r.key_due = False
        _, arrive, _ = s.link.transmit(t, nbytes)
        r.awaiting[fid] = (t_frame, d, r.server)
        # the batch callback (decode, block matching) runs on the server's CPU before the job
        # reaches its GPU queue: a delay, not GPU time
        push(arrive + d.receive_s, 'arrive', r.server, (r.rid, fid, t_frame, server_s))
        push(t + ACK_TIMEOUT_S + spec.delay_ms / 1e3, 'ack_check', r.rid, fid, r.server)

    def local(r, t, t_frame):
        if r.edge_free > t:  # latest wins on a busy edge
            recs.append((r.rid, t_frame, math.nan, 'dropped_edge_busy'))
            return
        r.edge_free = t + edge_dense_s
        recs.append((r.rid, t_frame, r.edge_free - t_frame, 'edge'))

    while q:
        t, _, kind, data = heapq.heappop(q)
        if t > duration and kind in ('frame', 'announce'):
            continue
        if kind == 'announce':
            announce(t)
        elif kind == 'kill':
            s = srvs[data[0]]
            s.alive, s.pending, s.running = False, {}, None
            on_server = [r.rid for r in bots if r.server == data[0] and not r.local]
        elif kind == 'frame':
            rid, k = data
            r = bots[rid]
            n = len(r.clip.frames)
            d = r.clip.frames[k % n]
            t_frame = r.phase + (k // n) * r.clip.period + d.offset
            push(r.phase + ((k + 1) // n) * r.clip.period + r.clip.frames[(k + 1) % n].offset,
                 'frame', rid, k + 1)
            choose(r, t_frame)
            if r.server is None or r.local:
                local(r, t_frame, t_frame)
            elif d.by == 'server' or r.key_due:
                send(r, t_frame + d.edge_s, k, d, t_frame)
            elif d.by == 'edge':
                recs.append((rid, t_frame, d.edge_s, 'edge'))
            else:
                recs.append((rid, t_frame, math.nan, 'lost'))
        elif kind == 'arrive':
            j, job = data
            s = srvs[j]
            if not s.alive:
                continue  # no ACK: the robot's ack_check notices
            s.last_seen[job[0]] = t
            if job[0] in s.pending:
                old = s.pending[job[0]]
                bots[job[0]].awaiting.pop(old[1], None)
                recs.append((job[0], old[2], math.nan, 'superseded'))
            s.pending[job[0]] = job
            start(s, t)
        elif kind == 'done':
            j, job = data
            s = srvs[j]
            if not s.alive or s.running is not job:
                continue
            s.running = None
            r = bots[job[0]]
            if r.awaiting.pop(job[1], None) is not None:
                recs.append((job[0], job[2], t + s.link.back(RESULT_BYTES) - job[2], 'server'))
            start(s, t)
        elif kind == 'ack_check':
            rid, fid, j = data
            r = bots[rid]
            if srvs[j].alive or fid not in r.awaiting:
                continue
            t_frame, d, _ = r.awaiting.pop(fid)
            if r.chooser is None:  # static: compute locally from now on
                r.local = True
                recs.append((rid, t_frame, math.nan, 'lost_with_server'))
                continue
            r.chooser.ban(srvs[j].sid, t)
            choose(r, t)
            if r.server is None or r.server == j:
                recs.append((rid, t_frame, math.nan, 'lost_with_server'))
                continue
            send(r, t, fid, d, t_frame)  # the new server serves the frame (key batch)
        # anything else: nothing
    # a frame still awaiting at the end: counted
    for r in bots:
        for fid, (t_frame, _, _) in r.awaiting.items():
            recs.append((r.rid, t_frame, math.nan, 'unfinished'))
    return {'records': recs, 'victims': on_server, 'moves': sum(
        r.chooser.moves for r in bots if r.chooser is not None)}


def _p(lat, q):
    return float(np.percentile(lat, q)) if len(lat) else math.nan


def summarise(run: dict, robots: int, warm_s: float = 3.0) -> dict:
    """Latency p50 / p90 (ms) of served frames after the start-up, served fraction."""
    recs = [x for x in run['records'] if x[1] >= warm_s]
    lat = np.array([x[2] for x in recs if not math.isnan(x[2])])
    why = {}
    for x in recs:
        if math.isnan(x[2]):
            why[x[3]] = why.get(x[3], 0) + 1
    return {'latency_ms_p50': 1e3 * _p(lat, 50), 'latency_ms_p90': 1e3 * _p(lat, 90),
            'served_fraction': len(lat) / max(len(recs), 1), 'frames': len(recs),
            'unserved': why, 'moves': run['moves'],
            'by_server': sum(x[3] == 'server' for x in recs) / max(len(recs), 1)}


def failover(run: dict, victims: List[int], kill_at: float, window: float = 5.0) -> dict:
    """The killed server's robots: p90 before the kill, and after it per 0.5 s step (p90 of
    their frames in the following second), and when it came back within 1.5x for good."""
    vs = set(victims)
    recs = [x for x in run['records'] if x[0] in vs]

    def p90(lo, hi):
        lat = [x[2] for x in recs if lo <= x[1] < hi and not math.isnan(x[2])]
        return 1e3 * _p(np.array(lat), 90), len(lat)
    before, _ = p90(kill_at - window, kill_at)
    steps = []
    for k in range(int(2 * window)):
        lo = kill_at + 0.5 * k
        v, n = p90(lo, lo + 1.0)
        steps.append({'t': 0.5 * k, 'p90_ms': v, 'served': n})
    back = next((s['t'] for i, s in enumerate(steps)
                 if all(x['p90_ms'] <= RECOVERY_FACTOR * before for x in steps[i:]
                        if not math.isnan(x['p90_ms']))), math.inf)
    after, _ = p90(kill_at + 2.0, kill_at + 2.0 + window)
    lost = [x for x in recs if x[1] >= kill_at - 1 and math.isnan(x[2])]
    return {'robots': len(vs), 'p90_before_ms': before, 'p90_after_2s_ms': after,
            'ratio_after_2s': after / before if before else math.nan,
            'back_within_s': back, 'timeline': steps, 'unserved_after_kill': len(lost)}


def run(a) -> dict:
    clips = demands(a.sequences, a.frames, a.rate)
    job_s = float(np.mean([d.server_s for c in clips for d in c.frames if d.server_s]))
    out = {'command': 'python -m fluxshard_eval.fleet ' + ' '.join(a.argv),
           'server_ms_per_job': 1e3 * job_s, 'rate_hz': a.rate, 'duration_s': a.duration,
           'frames': a.frames,
           'sequences': [c.name for c in clips], 'profile': 'paper (Table 1, modelled)',
           'link': 'medium (56 Mbit/s, 10 ms one way) per server', 'growth': [],
           'ack_timeout_s': ACK_TIMEOUT_S}
    for n, m in ((8, 1), (16, 2), (64, 4)):
        for pol in ('static', 'load-aware'):
            r = simulate(clips, n, [1.0] * m, pol, a.duration, seed=a.seed)
            out['growth'].append(dict(robots=n, servers=m, policy=pol, **summarise(r, n)))
    speeds = [1.0, 1.0, 1.0, 0.5]
    het = {}
    for pol in ('static', 'load-aware'):
        het[pol] = summarise(simulate(clips, 64, speeds, pol, a.duration, seed=a.seed), 64)
    out['heterogeneous'] = {'speeds': speeds, **het,
                            'offered_load': 64 * a.rate * job_s / sum(speeds),
                            'offered_load_after_loss': 64 * a.rate * job_s / sum(speeds[1:]),
                            'p90_ratio': het['load-aware']['latency_ms_p90']
                            / het['static']['latency_ms_p90']}
    kill_at = a.duration / 2
    fo = {}
    for pol in ('static', 'load-aware'):
        r = simulate(clips, 64, speeds, pol, a.duration, kill=0, kill_at=kill_at, seed=a.seed)
        fo[pol] = dict(summarise(r, 64), **failover(r, r['victims'], kill_at))
    out['failover'] = {'killed': 'gpu1', 'kill_at_s': kill_at, **fo}
    out['targets'] = {
        'load_aware_p90_vs_static (<= 0.8)': out['heterogeneous']['p90_ratio'],
        'failover_p90_ratio_after_2s (<= 1.5)': fo['load-aware']['ratio_after_2s'],
        'failover_back_within_s (<= 2)': fo['load-aware']['back_within_s'],
    }
    return out


def render(d: dict) -> str:
    lines = [f"Modelled ({d['profile']}; {d['link']}; cameras at {d['rate_hz']:g} Hz, "
             f"{d['duration_s']:g} s; clips {', '.join(d['sequences'])}).", '',
             '| robots | servers | assignment | p50 ms | p90 ms | served | moves |',
             '|---|---|---|---|---|---|---|']
    for g in d['growth']:
        lines.append(f"| {g['robots']} | {g['servers']} | {g['policy']} | "
                     f"{g['latency_ms_p50']:.0f} | {g['latency_ms_p90']:.0f} | "
                     f"{100 * g['served_fraction']:.1f} % | {g['moves']} |")
    h = d['heterogeneous']
    lines += ['', f"64 robots over 4 servers, speeds {h['speeds']} (offered load "
              f"{h['offered_load']:.2f} of their capacity, {h['offered_load_after_loss']:.2f} "
              f"once gpu1 is lost; {d['server_ms_per_job']:.1f} ms per job at full speed):", '',
              '| assignment | p50 ms | p90 ms | served | moves |', '|---|---|---|---|---|']
    for pol in ('static', 'load-aware'):
        x = h[pol]
        lines.append(f"| {pol} | {x['latency_ms_p50']:.0f} | {x['latency_ms_p90']:.0f} | "
                     f"{100 * x['served_fraction']:.1f} % | {x['moves']} |")
    f = d['failover']
    lines += ['', f"Server {f['killed']} lost at {f['kill_at_s']:g} s (same fleet): its "
              'robots\' p90', '', '| assignment | robots | p90 before ms | p90 from 2 s after '
              'ms | ratio | back within 1.5x after | frames without result |',
              '|---|---|---|---|---|---|---|']
    for pol in ('static', 'load-aware'):
        x = f[pol]
        back = ('never' if not math.isfinite(x['back_within_s'])
                else f"{x['back_within_s']:.1f} s")
        lines.append(f"| {pol} | {x['robots']} | {x['p90_before_ms']:.0f} | "
                     f"{x['p90_after_2s_ms']:.0f} | {x['ratio_after_2s']:.2f}x | {back} | "
                     f"{x['unserved_after_kill']} |")
    lines += ['', 'Targets: ' + '; '.join(f'{k}: {v:.2f}' for k, v in d['targets'].items())]
    return '\n'.join(lines)


def render_live(s: dict) -> str:
    """A saved ``fluxshard_run --servers N [--kill-server-at S] [--discovery-servers ...]``
    summary: the split, the failover and every robot's frame accounting."""
    lines = [f"Live ({s.get('command', 'fluxshard_run')}): {len(s['robots'])} robots, "
             f"{s['servers']} servers, {s['source']} at {s['rate_hz']:g} Hz, "
             f"{s['wall_s']:.0f} s; link: {s['link_mode']}.", '',
             'Robots per server with all up: ' + ', '.join(
                 f'{k or "(none)"} {v}' for k, v in sorted(s['split'].items())) + '.']
    f = s.get('failover')
    if f:
        lines += ['', f"Server {f['killed']} killed (SIGKILL): its robots' first server "
                  'result for a frame taken after the kill, seconds after it: ' + ', '.join(
                      f"{r} {x['first_result_s']:.2f} s ({x['moved_to']})"
                      for r, x in sorted(f['robots'].items()))
                  + f" (worst {f['worst_s']:.2f} s)."]
    d = s.get('discovery')
    if d:
        lines += ['', f"Discovery through {', '.join(d['servers'])} (no multicast)" + (
            f"; {d['stopped']} stopped mid-run, then server results per robot: " + ', '.join(
                f'{r} {n}' for r, n in sorted(d['served_after_stop'].items()))
            if d.get('stopped') else '') + '.']
    lines += ['', '| robot | frames in | results | dropped (latest wins, edge + servers) | '
              'not served twice (already served) | unaccounted | stamps unique | p50 / p90 ms '
              '|', '|---|---|---|---|---|---|---|---|']
    for r, v in sorted(s['robots'].items(), key=lambda kv: int(kv[0][5:] or 0)):
        lines.append(f"| {r} | {v['edge_frames_in']} | {v['results']} | "
                     f"{v['edge_dropped_superseded'] + v['server_dropped_superseded']} | "
                     f"{v.get('dropped_already_served', 0)} | {v['unaccounted']} | "
                     f"{'yes' if v['stamps_unique'] else 'NO'} | {v['latency_ms_p50']:.0f} / "
                     f"{v['latency_ms_p90']:.0f} |")
    return '\n'.join(lines)


def plot(d: dict, path: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    f = d['failover']
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for pol, style in (('static', '--'), ('load-aware', '-')):
        tl = f[pol]['timeline']
        ax.plot([x['t'] for x in tl], [x['p90_ms'] for x in tl], style, label=pol)
        ax.axhline(f[pol]['p90_before_ms'], ls=':', lw=0.8)
    ax.set_xlabel(f"seconds after {f['killed']} is lost")
    ax.set_ylabel("its robots' p90 latency, ms")
    ax.set_title('Fleet failover (modelled, paper profile)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m fluxshard_eval.fleet', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sequences', nargs='+', default=['davis-parkour', 'pets09-s2l1',
                                                      'bgs-highway', 'davis-blackswan'])
    p.add_argument('--frames', type=int, default=60)
    p.add_argument('--rate', type=float, default=3.0, help='camera rate of every robot, Hz '
                   '(3: the fleet sized to survive losing a server, see offered load)')
    p.add_argument('--duration', type=float, default=30.0, help='modelled seconds per run')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None)
    p.add_argument('--plot', default=None)
    p.add_argument('--render', default=None, metavar='JSON', help='print the tables of a '
                   'saved run and exit')
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    a.argv = argv
    if a.render:
        with open(a.render) as f:
            print(render(json.load(f)))
        return 0
    t0 = time.monotonic()
    d = run(a)
    d['wall_s'] = time.monotonic() - t0
    print(render(d))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(d, f, indent=1)
    if a.plot:
        plot(d, a.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
