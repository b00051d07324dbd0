"""``fluxshard_run``: start the FluxShard graph (server, N edges, N camera replays) as separate
processes from the same config/*.yaml the launch files use, watch the result topics over DDS and
print what happened, frame by frame, then a summary. For machines without ``launch_ros``
(``ros2 launch fluxshard_bringup ...`` starts the same nodes on a robot)."""

import argparse
from collections import defaultdict
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from ament_index_python.packages import get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from fluxshard_msgs_py.node import LATCHED_QOS, RESULT_QOS
from fluxshard_msgs.msg import DetectionArray, KeypointArray, LabelMap
import rclpy
from rclpy.node import Node


def _args(argv):
    p = argparse.ArgumentParser(prog='fluxshard_run', description=__doc__)
    p.add_argument('--source', default='davis-parkour',
                   help='sequence name in the data folder, frame folder or video file')
    p.add_argument('--count', type=int, default=30, help='frames per robot (0 = all)')
    p.add_argument('--rate', type=float, default=5.0, help='camera rate, Hz')
    p.add_argument('--robots', type=int, default=1, help='number of edges (robot1..robotN)')
    p.add_argument('--task', default=None, choices=['detect', 'segment', 'pose'])
    p.add_argument('--edge-param', action='append', default=[], metavar='NAME:=VALUE',
                   help='override an edge parameter (repeatable)')
    p.add_argument('--server-param', action='append', default=[], metavar='NAME:=VALUE',
                   help='override a server parameter (repeatable)')
    p.add_argument('--config-dir', default=None, help='folder with edge.yaml and server.yaml')
    p.add_argument('--timeout', type=float, default=120.0, help='give up after this many s')
    p.add_argument('--duration', type=float, default=0.0,
                   help='soak: loop the source and stop after this many seconds')
    p.add_argument('--camera-topic', default='', metavar='TOPIC',
                   help='serve an existing camera topic (e.g. /camera/image_raw; every edge '
                        'subscribes it) instead of replaying --source; runs for --duration, '
                        'else --timeout seconds')
    p.add_argument('--quiet', action='store_true', help='no per-frame lines')
    p.add_argument('--json', default=None, help='write the summary as JSON here')
    p.add_argument('--netns', type=float, default=0.0, metavar='MBPS',
                   help='run the server and the robots in two network namespaces joined by a '
                        'veth pair shaped with tc tbf at this rate, so DDS crosses a shaped '
                        'link (root and iproute2 needed; 0 = off)')
    p.add_argument('--servers', type=int, default=1,
                   help='server processes (gpu1..gpuN, each may serve every robot); with more '
                        'than one the robots run fleet.mode auto: they choose by load and move '
                        'when a server is lost')
    p.add_argument('--kill-server-at', type=float, default=0.0, metavar='S',
                   help='SIGKILL server gpu1 this many seconds after the cameras start '
                        '(failover; 0 = never)')
    p.add_argument('--discovery-servers', default='', metavar='auto|HOST[:PORT],...',
                   help='discovery without multicast: every process is a client of these Fast '
                        'DDS Discovery Servers (one profile with the large-image transports); '
                        "'auto' starts two here (with --netns one in each namespace, and the "
                        'link carries no multicast)')
    p.add_argument('--stop-discovery-at', type=float, default=0.0, metavar='S',
                   help="with --discovery-servers auto: stop the first discovery server this "
                        'many seconds after the cameras start (the other one must carry on)')
    p.add_argument('--netns-trace', default='', metavar='FILE',
                   help='with --netns: re-shape the link every 100 ms to follow this capacity '
                        'trace (mahimahi *.up or seconds,mbps), looped')
    return p.parse_args(argv)


def _run_in_netns(a, argv):
    """Set up the shaped namespaces, rerun this command inside the robots' namespace (the
    server is spawned in the server's), tear them down."""
    from fluxshard_eval import netns
    why = netns.available()
    if why:
        print(f'fluxshard_run: --netns needs root and iproute2 ({why})', file=sys.stderr)
        return 2
    name = f'fs{os.getpid() % 100000}'
    try:
        netns.up(name, a.netns, multicast=not a.discovery_servers)
    except subprocess.CalledProcessError as e:
        netns.down(name)
        print(f'fluxshard_run: cannot create the namespaces: {e.stderr.strip()}',
              file=sys.stderr)
        return 2
    env = dict(os.environ, FLUXSHARD_NETNS=name, **netns.dds_env())
    shaper = None
    try:
        if a.netns_trace:
            from fluxshard_edge.link import BandwidthTrace
            shaper = netns.TraceShaper(name, BandwidthTrace.load(a.netns_trace))
        return subprocess.call(netns.exec_prefix(name, 'edge')
                               + [sys.executable, '-m', 'fluxshard_eval.runner', *argv],
                               env=env)
    except (ValueError, OSError) as e:
        print(f'fluxshard_run: --netns-trace: {e}', file=sys.stderr)
        return 2
    finally:
        if shaper is not None:
            shaper.stop()
        netns.down(name)


class Monitor(Node):
    """Collects results and diagnostics of the robots."""

    def __init__(self, robots, task, quiet):
        super().__init__('fluxshard_run_monitor')
        self.results = defaultdict(list)
        self.diag = {}
        self.by_server = {}
        self.edge_server = defaultdict(list)  # robot -> [(wall s, server id it addresses)]
        self.names = {}
        self.quiet = quiet
        if task == 'pose':
            typ, topic = KeypointArray, 'keypoints'
        else:
            typ, topic = DetectionArray, 'detections'
        for r in robots:
            self.create_subscription(typ, f'/{r}/{topic}',
                                     lambda m, r=r: self._on_result(r, m), RESULT_QOS)
            self.create_subscription(LabelMap, f'/{r}/labels', self._on_labels, LATCHED_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)

    def _on_labels(self, m):
        self.names = dict(zip(m.class_ids, m.class_names))

    def _on_diag(self, m):
        for st in m.status:
            vals = {kv.key: kv.value for kv in st.values}
            sid = vals.get('server_id', '')
            if st.name.startswith('fluxshard/server') and sid:
                # several servers report on the same robots: kept apart, counters summed
                self.by_server[(st.name, sid)] = vals
                vals = _merge([v for (n, _), v in self.by_server.items() if n == st.name])
            elif st.name.startswith('fluxshard/edge/') and sid:
                robot = st.name.rsplit('/', 1)[1]
                hist = self.edge_server[robot]
                if not hist or hist[-1][1] != sid:
                    hist.append((time.time(), sid))
            self.diag[st.name] = vals

    def _on_result(self, robot, m):
        now = self.get_clock().now().nanoseconds
        stamp = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
        lat_ms = (now - stamp) / 1e6
        rec = {'frame_index': m.frame_index, 'stamp_ns': stamp, 'latency_ms': lat_ms,
               'n': len(m.scores), 'computed_by': m.computed_by}
        if hasattr(m, 'center_x'):  # boxes, to score against dense on the same frame
            cx, cy = np.asarray(m.center_x), np.asarray(m.center_y)
            w, h = np.asarray(m.size_x), np.asarray(m.size_y)
            rec.update(boxes=np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                                      1).reshape(-1, 4).round(1).tolist(),
                       class_ids=[int(c) for c in m.class_ids],
                       scores=[round(float(s), 4) for s in m.scores])
        self.results[robot].append(rec)
        if not self.quiet:
            cls = getattr(m, 'class_ids', ['0'] * len(m.scores))
            top = ', '.join(f'{self.names.get(c, c)} {s:.2f}'
                            for c, s in list(zip(cls, m.scores))[:4])
            how = 'local (edge)' if m.computed_by == 'edge' else 'offload (server)'
            print(f'{robot} frame {m.frame_index:4d} stamp {stamp / 1e9:.3f} {how:16s} '
                  f'{len(m.scores)} objects [{top}] latency {lat_ms:.0f} ms', flush=True)


def _find_config(name, config_dir):
    if config_dir:
        return os.path.join(config_dir, name)
    return os.path.join(get_package_share_directory('fluxshard_bringup'), 'config', name)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = _args(argv)
    if a.netns and not os.environ.get('FLUXSHARD_NETNS'):
        return _run_in_netns(a, argv)
    ns_name = os.environ.get('FLUXSHARD_NETNS', '')
    from fluxshard_msgs_py import dds
    dds.apply_default()  # the shipped large-image profile unless the user chose transports
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env = dict(os.environ)
    robots = [f'robot{i + 1}' for i in range(a.robots)]
    py = sys.executable
    srv_params = list(a.server_param)
    if not any(p.startswith('model.threads:=') for p in srv_params):
        # the robots and the server share this machine's cores: the server takes half of
        # them (torch's default, every core, oversubscribes them; measured on 2 cores, the
        # incremental engine suffers more from it than onnxruntime)
        srv_params.append(f'model.threads:={max(1, (os.cpu_count() or 2) // 2)}')
    if a.task:
        srv_params.append(f'model.task:={a.task}')
    procs = []

    def spawn(module, ns, params_file, params, name, remaps=()):
        cmd = [py, '-m', module, '--ros-args']
        for r in remaps:
            cmd += ['-r', r]
        if ns_name and name.startswith('server'):
            from fluxshard_eval import netns
            cmd = netns.exec_prefix(ns_name, 'srv') + cmd
        if ns:
            cmd += ['-r', f'__ns:=/{ns}']
        if params_file:
            cmd += ['--params-file', params_file]
        for p in params:
            cmd += ['-p', p]
        log = open(os.path.join(logdir, f'{name}.log'), 'w')
        penv = env if name.startswith('server') else robot_env
        procs.append((name, subprocess.Popen(cmd, env=penv, stdout=log,
                                             stderr=subprocess.STDOUT)))

    logdir = os.environ.get('FLUXSHARD_LOG_DIR', os.path.join(os.getcwd(), 'log', 'run'))
    os.makedirs(logdir, exist_ok=True)
    if not any(p.startswith('security.') for p in list(a.server_param) + list(a.edge_param)):
        # a fresh key per robot for this run, shared by its edge and the server
        from fluxshard_msgs_py import auth
        key_file = os.path.join(logdir, 'run.keys')
        auth.save_keys(key_file, auth.generate(robots), overwrite=True)
        srv_params.append(f'security.key_file:={key_file}')
        a.edge_param = list(a.edge_param) + [f'security.key_file:={key_file}']
    try:
        ds = _discovery(a, ns_name, logdir, env, procs)
    except (ValueError, OSError) as e:
        print(f'fluxshard_run: {e}', file=sys.stderr)
        _stop(procs)
        return 2
    robot_env = _robot_env(env, ns_name, ds, logdir)
    rclpy.init()
    mon = Monitor(robots, a.task or 'detect', a.quiet)
    t_start = time.monotonic()
    summary = {}
    try:
        edges_param = 'edges:=[' + ','.join(f"'{r}'" for r in robots) + ']'
        fleet = a.servers > 1
        for k in range(a.servers):
            spawn('fluxshard_server.server_node', '', _find_config('server.yaml', a.config_dir),
                  srv_params + [edges_param] + ([f'server_id:=gpu{k + 1}'] if fleet else []),
                  'server' if k == 0 else f'server{k + 1}')
        edge_params = list(a.edge_param)
        if fleet:  # choose among the servers (user parameters after these win)
            edge_params = ['fleet.mode:=auto', 'link.ack_timeout_ms:=500.0'] + edge_params
        for r in robots:
            spawn('fluxshard_edge.edge_node', r, _find_config('edge.yaml', a.config_dir),
                  edge_params, f'edge_{r}',
                  remaps=[f'image:={a.camera_topic}'] if a.camera_topic else ())
        # wait until the server and every edge are configured (their diagnostics arrive)
        want = {'fluxshard/server'} | {f'fluxshard/edge/{r}' for r in robots}
        deadline = time.monotonic() + 90
        while not want <= set(mon.diag) and time.monotonic() < deadline and all(
                p.poll() is None for _, p in procs):
            rclpy.spin_once(mon, timeout_sec=0.2)
        cam_extra = ['loop:=true', 'count:=0'] if a.duration else [f'count:={a.count}']
        for r in ([] if a.camera_topic else robots):
            spawn('fluxshard_eval.image_publisher_node', r, None,
                  [f'source:={a.source}', *cam_extra, f'rate_hz:={a.rate}',
                   'start_delay_s:=0.5', 'wait_for_subscribers:=1',
                   f'frame_id:={r}_camera',
                   f'stamp_log:={os.path.join(logdir, f"stamps_{r}.txt")}'], f'camera_{r}')
        if a.camera_topic:
            print(f'fluxshard_run: {len(robots)} robot(s) on camera {a.camera_topic} for '
                  f'{a.duration or a.timeout:g} s; logs in {logdir}', flush=True)
        else:
            print(f'fluxshard_run: {len(robots)} robot(s), source {a.source}, '
                  f'{a.count or "all"} frames at {a.rate} Hz; logs in {logdir}', flush=True)
        cams = [p for n, p in procs if n.startswith('camera_')]
        t_end = time.monotonic() + (a.duration if a.duration else a.timeout)
        idle_since = None
        t_cams, kill = time.monotonic(), None
        while time.monotonic() < t_end:
            rclpy.spin_once(mon, timeout_sec=0.1)
            if a.kill_server_at and kill is None and \
                    time.monotonic() - t_cams >= a.kill_server_at:
                kill = {'wall_s': time.time(), 'server': 'gpu1' if fleet else 'server',
                        'split': _split(mon, robots)}
                next(p for n, p in procs if n == 'server').send_signal(signal.SIGKILL)
                print(f"fluxshard_run: killed server {kill['server']} (SIGKILL); robots per "
                      f"server before: {kill['split']}", flush=True)
            if a.stop_discovery_at and ds.get('auto') and 'stopped' not in ds and \
                    time.monotonic() - t_cams >= a.stop_discovery_at:
                ds['stopped'] = {'server': ds['servers'][0], 'wall_s': time.time()}
                next(p for n, p in procs if n == 'discovery1').send_signal(signal.SIGINT)
                print(f"fluxshard_run: stopped discovery server {ds['servers'][0]}",
                      flush=True)
            dead = [n for n, p in procs if not n.startswith('camera_') and p.poll() is not None
                    and not (kill and n == 'server')
                    and not ('stopped' in ds and n == 'discovery1')]
            if dead:
                print(f'fluxshard_run: process(es) exited early: {dead}', flush=True)
                break
            if cams and all(p.poll() is not None for p in cams):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 3.0:
                    break
        for n, p in procs:  # stop the cameras, let the pipeline drain
            if n.startswith('camera_') and p.poll() is None:
                p.send_signal(signal.SIGINT)
        end = time.monotonic() + 4.0
        while time.monotonic() < end:  # last results and diagnostics
            rclpy.spin_once(mon, timeout_sec=0.1)
        end = time.monotonic() + 15.0
        while time.monotonic() < end and not _server_results_in(mon, robots):
            rclpy.spin_once(mon, timeout_sec=0.1)  # a slow machine: results still on the way
        _stop(procs)
        summary = _summary(mon, robots, a, time.monotonic() - t_start, logdir)
        summary['link_mode'] = (f'netns veth tc tbf {a.netns:g} Mbit/s' if ns_name else
                                'transport emulation (edge parameters) or none')
        summary['netns'] = ns_name
        summary['servers'] = a.servers
        summary['split'] = _split(mon, robots) if kill is None else kill['split']
        if kill is not None:
            summary['failover'] = _failover(mon, robots, kill)
        if ds:
            summary['discovery'] = _discovery_summary(mon, robots, ds)
    finally:
        _stop(procs)
        mon.destroy_node()
        rclpy.shutdown()
    _print_summary(summary)
    if a.json:
        if summary:
            summary['command'] = shlex.join(['fluxshard_run', *argv])
        with open(a.json, 'w') as f:
            json.dump(summary, f, indent=2)
    return 0 if summary and all(r['results'] > 0 for r in summary['robots'].values()) else 1


def _robot_env(env: dict, ns_name: str, ds: dict, logdir: str) -> dict:
    """The robots' processes (camera replay, edge) in the shaped namespaces: the shipped
    profile, shared memory between the camera and the edge as on a robot, and UDP to the
    server, whose UDP-only profile keeps the link between them on the shaped veth (a
    participant without shared memory is reached over UDP). Without namespaces: ``env``."""
    if not ns_name:
        return env
    from fluxshard_msgs_py import dds
    out = {k: v for k, v in env.items() if k not in dds.CHOSEN_BY}
    out['FASTDDS_DEFAULT_PROFILES_FILE'] = (
        dds.write_discovery_profile(','.join(ds['servers']),
                                    os.path.join(logdir, 'fastdds-discovery-robot.xml'))
        if ds else dds.profile_path('default'))
    return out


def _discovery(a, ns_name, logdir, env, procs) -> dict:
    """With ``--discovery-servers``: start the discovery servers ('auto'), write the client
    profile (the shipped transports + the servers) and point ``env`` and this process at it.
    Returns {'servers': ['host:port', ...], 'auto': bool, 'profile': path} ({} when off)."""
    if a.stop_discovery_at and a.discovery_servers != 'auto':
        raise ValueError('--stop-discovery-at stops a discovery server this run started: it '
                         'needs --discovery-servers auto')
    if not a.discovery_servers:
        return {}
    from fluxshard_msgs_py import dds
    auto = a.discovery_servers == 'auto'
    if auto:
        if ns_name:  # one in each namespace: a host's loss takes one of them
            from fluxshard_eval import netns
            places = [(netns.SRV_ADDR, dds.DISCOVERY_PORT, netns.exec_prefix(ns_name, 'srv')),
                      (netns.EDGE_ADDR, dds.DISCOVERY_PORT, [])]
        else:
            port = dds.DISCOVERY_PORT + 2 * (os.getpid() % 400)
            places = [('127.0.0.1', port, []), ('127.0.0.1', port + 1, [])]
        servers = [(h, p) for h, p, _ in places]
    else:
        servers, places = dds.parse_servers(a.discovery_servers), []
    for k, (host, port, prefix) in enumerate(places):
        argv, denv = dds.discovery_server_command(host, port, env)
        log = open(os.path.join(logdir, f'discovery{k + 1}.log'), 'w')
        procs.append((f'discovery{k + 1}', subprocess.Popen(
            prefix + argv, env=denv, stdout=log, stderr=subprocess.STDOUT)))
    profile = dds.write_discovery_profile(servers, os.path.join(logdir, 'fastdds-discovery.xml'),
                                          'udp' if ns_name else 'default')
    for e in (env, os.environ):
        for k in dds.CHOSEN_BY:
            e.pop(k, None)
        e['FASTDDS_DEFAULT_PROFILES_FILE'] = profile
    names = [f'{h}:{p}' for h, p in servers]
    print(f'fluxshard_run: discovery through {", ".join(names)} (multicast discovery off; '
          f'profile {profile})', flush=True)
    return {'servers': names, 'auto': auto, 'profile': profile}


def _discovery_summary(mon, robots, ds) -> dict:
    """The discovery servers, which one was stopped, and the server results each robot got
    after that."""
    out = {'servers': ds['servers'], 'profile': os.path.basename(ds['profile'])}
    stop = ds.get('stopped')
    if stop:
        t0 = stop['wall_s']
        out['stopped'] = stop['server']
        out['served_after_stop'] = {r: sum(1 for x in mon.results[r] if x['computed_by'] ==
                                           'server' and x['stamp_ns'] / 1e9 > t0)
                                    for r in robots}
    return out


def _stop(procs):
    """SIGINT every child still running, wait, kill what does not exit in 5 s."""
    for _, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for _, p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def _merge(tables):
    """Diagnostic value tables of several servers for one name: numbers summed."""
    out = {}
    for t in tables:
        for k, v in t.items():
            try:
                out[k] = out.get(k, 0) + int(v)
            except ValueError:
                out[k] = v
    return out


def _split(mon, robots):
    """Robots per server, from the edges' diagnostics (server_id they address)."""
    out = {}
    for r in robots:
        hist = mon.edge_server.get(r)
        sid = hist[-1][1] if hist else ''
        out[sid] = out.get(sid, 0) + 1
    return out


def _failover(mon, robots, kill):
    """The killed server's robots: when each first got a server result for a frame taken
    after the kill (necessarily from another server), seconds after the kill."""
    t0 = kill['wall_s']
    out = {'killed': kill['server'], 'robots': {}}
    for r in robots:
        before = [sid for t, sid in mon.edge_server.get(r, []) if t <= t0]
        if not before or before[-1] != kill['server']:
            continue
        after = [(x['stamp_ns'] / 1e9 + x['latency_ms'] / 1e3) for x in mon.results[r]
                 if x['computed_by'] == 'server' and x['stamp_ns'] / 1e9 > t0]
        hist = [sid for t, sid in mon.edge_server.get(r, []) if t > t0]
        out['robots'][r] = {'first_result_s': (min(after) - t0) if after else None,
                            'moved_to': hist[-1] if hist else ''}
    got = [v['first_result_s'] for v in out['robots'].values()]
    out['worst_s'] = max((g for g in got if g is not None), default=None)
    out['all_served_again'] = bool(got) and all(g is not None for g in got)
    return out


def _stamps(logdir, robot):
    """{stamp ns: source frame index} the camera replay logged (empty without it)."""
    out = {}
    try:
        with open(os.path.join(logdir, f'stamps_{robot}.txt')) as f:
            for line in f:
                i, s = line.split()
                out[str(int(s))] = int(i)
    except (OSError, ValueError):
        pass
    return out


def _published(logdir, robot):
    """Frames the camera replay says it published (its last log line), or None."""
    import re
    try:
        with open(os.path.join(logdir, f'camera_{robot}.log')) as f:
            m = re.findall(r'published (\d+) frames', f.read())
        return int(m[-1]) if m else None
    except OSError:
        return None


def _server_results_in(mon, robots) -> bool:
    """Every result the server reports as published (diagnostics) has reached the monitor."""
    for r in robots:
        published = int(mon.diag.get(f'fluxshard/server/{r}', {}).get('results_published', 0))
        got = sum(1 for x in mon.results[r] if x['computed_by'] == 'server')
        if got < published:
            return False
    return True


def _num(v) -> Optional[float]:
    """A diagnostics value as a number (None when absent)."""
    return None if v is None else float(v)


def _summary(mon, robots, a, wall_s, logdir):
    out = {'source': a.source, 'rate_hz': a.rate, 'wall_s': wall_s, 'robots': {}}
    for r in robots:
        res = mon.results[r]
        edge = mon.diag.get(f'fluxshard/edge/{r}', {})
        srv = mon.diag.get(f'fluxshard/server/{r}', {})
        lat = sorted(x['latency_ms'] for x in res)
        pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: None)
        out['robots'][r] = {
            'published': _published(logdir, r), 'results': len(res),
            'edge_frames_in': int(edge.get('frames_in', 0)),
            'edge_dropped_superseded': int(edge.get('dropped_superseded', 0)),
            'edge_rejected': sum(int(v) for k, v in edge.items() if k.startswith('rejected.')),
            'batches_sent': int(edge.get('batches_sent', 0)),
            'decisions_edge': int(edge.get('decision_edge', 0)),
            'decisions_cloud': int(edge.get('decision_cloud', 0)),
            'results_local': int(edge.get('results_local', 0)),
            'mb_per_s': int(edge.get('bytes_sent', 0)) / 1e6 / max(wall_s, 1e-9),
            'bytes_sent': int(edge.get('bytes_sent', 0)),
            'server_bytes_in': int(srv.get('bytes_in', 0)),
            'latency_ms_p50': pct(0.5), 'latency_ms_p90': pct(0.9),
            'stamps_unique': len({x['stamp_ns'] for x in res}) == len(res),
            'server_dropped_superseded': int(srv.get('dropped_superseded', 0)),
            'server_rejected': sum(int(v) for k, v in srv.items() if k.startswith('rejected.')),
            'no_result_no_batch': int(edge.get('no_result_no_batch', 0)),
            **{k: int(edge.get(k, 0)) for k in ('injected_drops', 'resync_requests',
                                                'key_batches', 'key_bytes', 'probes',
                                                'digest_mismatch', 'resync_resends')},
            'latency_ms_p99': pct(0.99),
            # camera stamp -> the edge's worker takes the frame (DDS delivery and the
            # latest-wins slot), since the edge started (its diagnostics)
            'input_delay_ms_p50': _num(edge.get('latency.input_run_p50_ms')),
            'input_delay_ms_p90': _num(edge.get('latency.input_run_p90_ms')),
            # model.backend auto: frames the server served on each path (incremental engine
            # or onnxruntime dense), from its diagnostics
            'server_paths': {k[len('path.'):]: int(v) for k, v in srv.items()
                             if k.startswith('path.')},
            'result_records': res,
            'source_stamps': _stamps(logdir, r),
            'throughput_fps': len(res) / max(wall_s, 1e-9),
        }
        v = out['robots'][r]
        # a result older than one already on the topic is dropped by either side (counted)
        v['dropped_out_of_order'] = (int(edge.get('dropped_out_of_order', 0))
                                     + int(srv.get('dropped_out_of_order', 0)))
        # a result for a stamp already on the topic (a robot's previous server served it):
        # not published again
        v['dropped_already_served'] = (int(edge.get('dropped_already_served', 0))
                                       + int(srv.get('dropped_already_served', 0)))
        v['lost_offloaded'] = int(edge.get('lost_offloaded', 0))
        # frames not sent (payload.skip_target): served by motion, or lost with their proxy
        v['frames_skipped'] = int(edge.get('frames_skipped', 0))
        v['results_motion'] = int(edge.get('results_motion', 0))
        v['skipped_lost'] = int(edge.get('skipped_lost', 0))
        v['dds_dropped'] = (v['published'] - v['edge_frames_in']
                            if v['published'] is not None else None)
        # a frame whose batch was rejected can still be served by its resync key batch, so
        # the reasons may count a frame twice: unaccounted is a lower bound, clamped at 0
        v['unaccounted'] = max(0, v['edge_frames_in'] - (
            len({x['stamp_ns'] for x in res}) + v['edge_dropped_superseded'] +
            v['edge_rejected'] + v['server_dropped_superseded'] + v['server_rejected'] +
            v['no_result_no_batch'] + v['injected_drops'] + v['dropped_out_of_order'] +
            v['lost_offloaded'] + v['skipped_lost']))
    out['server'] = mon.diag.get('fluxshard/server', {})
    return out


def _print_summary(s):
    if not s:
        return
    print('\nsummary')
    print('| robot | frames in (edge) | results (local) | dropped (latest wins) | rejected | '
          'decisions edge / offload | batches | MB sent | latency p50 / p90 ms |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r, v in s['robots'].items():
        p50 = '-' if v['latency_ms_p50'] is None else f"{v['latency_ms_p50']:.0f}"
        p90 = '-' if v['latency_ms_p90'] is None else f"{v['latency_ms_p90']:.0f}"
        print(f"| {r} | {v['edge_frames_in']} | {v['results']} ({v['results_local']}) | "
              f"{v['edge_dropped_superseded']} | {v['edge_rejected']} | "
              f"{v['decisions_edge']} / {v['decisions_cloud']} | {v['batches_sent']} | "
              f"{v['bytes_sent'] / 1e6:.2f} | {p50} / {p90} |")
    print('\n| robot | published | not delivered (DDS depth 1) | throughput fps | '
          'latency p99 ms | server drops (latest wins) | server rejects | unaccounted frames |')
    print('|---|---|---|---|---|---|---|---|')
    for r, v in s['robots'].items():
        p99 = '-' if v['latency_ms_p99'] is None else f"{v['latency_ms_p99']:.0f}"
        print(f"| {r} | {v['published']} | {v['dds_dropped']} | {v['throughput_fps']:.1f} | "
              f"{p99} | {v['server_dropped_superseded']} | "
              f"{v['server_rejected']} | {v['unaccounted']} |")
    for r, v in s['robots'].items():
        if v.get('server_paths'):
            print(f"{r}: server paths " + ', '.join(
                f'{k} {n}' for k, n in sorted(v['server_paths'].items())))
        if v['injected_drops'] or v['resync_requests']:
            print(f"{r}: {v['injected_drops']} batches lost on the link, "
                  f"{v['resync_requests']} resync requests, {v['key_batches']} key batches "
                  f"({v['key_bytes'] / 1e6:.2f} MB of {v['bytes_sent'] / 1e6:.2f} MB sent), "
                  f"{v['digest_mismatch']} digest mismatches")
    if s.get('servers', 1) > 1:
        print(f"robots per server: {s['split']}")
    fo = s.get('failover')
    if fo:
        for r, v in fo['robots'].items():
            when = ('never' if v['first_result_s'] is None
                    else f"{v['first_result_s']:.2f} s after the kill")
            print(f"{r}: its server {fo['killed']} killed; moved to {v['moved_to'] or '-'}, "
                  f'first server result for a newer frame {when}')
    srv = s.get('server', {})
    if srv:
        print('server: ' + ', '.join(f'{k}={v}' for k, v in sorted(srv.items())))


if __name__ == '__main__':
    sys.exit(main())
