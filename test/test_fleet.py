"""A fleet over real DDS: two server processes announce themselves, two robots in fleet.mode
auto split between them, the server of one is killed (SIGKILL) and its robot is served by the
other; a malformed announcement is refused with a reason and changes nothing."""

import signal
import time

from diagnostic_msgs.msg import DiagnosticArray
from fluxshard_msgs.msg import DetectionArray, ServerStatus
from fluxshard_msgs_py.node import FLEET_QOS, RESULT_QOS

ROBOTS = ['robot1', 'robot2']


def _stamp(h):
    return h.stamp.sec * 10**9 + h.stamp.nanosec


def _watch(ros):
    got = {'det': {r: [] for r in ROBOTS}, 'diag': {}, 'ann': {}}
    for r in ROBOTS:
        ros.node.create_subscription(
            DetectionArray, f'/{r}/detections',
            lambda m, r=r: got['det'][r].append((time.monotonic(), m)), RESULT_QOS)

    def on_diag(m):
        for st in m.status:
            vals = {kv.key: kv.value for kv in st.values}
            key = st.name if st.name.startswith('fluxshard/edge/') else (
                st.name, vals.get('server_id', ''))
            got['diag'][key] = vals
    ros.node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
    ros.node.create_subscription(ServerStatus, '/fluxshard/servers',
                                 lambda m: got['ann'].__setitem__(m.server_id, m), FLEET_QOS)
    return got


def _edge_server(got, robot):
    return got['diag'].get(f'fluxshard/edge/{robot}', {}).get('server_id', '')


def test_robots_split_over_two_servers_and_move_when_one_is_killed(ros):
    got = _watch(ros)
    servers = {sid: ros.spawn('fluxshard_server.server_node', name=f'server_{sid}', params=[
        f'server_id:={sid}', "edges:=['robot1','robot2']", 'model.backend:=onnxruntime',
        'model.threads:=1']) for sid in ('gpu-a', 'gpu-b')}
    edges = {r: ros.spawn('fluxshard_edge.edge_node', ns=r, params=[
        'fleet.mode:=auto', 'model.backend:=onnxruntime', 'scheduler.force_strategy:=cloud',
        'link.ack_timeout_ms:=500.0']) for r in ROBOTS}
    assert ros.wait_for(lambda: len(got['ann']) == 2 and all(
        a.accepting for a in got['ann'].values()), 90), [ros.log(p) for p in servers.values()]
    a = got['ann']['gpu-a']
    assert (a.task, a.backend, list(a.edges)) == ('detect', 'onnxruntime', ROBOTS)

    # a malformed announcement: refused with its reason, nobody moves to it
    bad = ros.node.create_publisher(ServerStatus, '/fluxshard/servers', FLEET_QOS)
    bad.publish(ServerStatus(server_id='evil host', task='detect', edges=ROBOTS,
                             accepting=True))
    cams = [ros.spawn('fluxshard_eval.image_publisher_node', ns=r, params=[
        'source:=davis-parkour', 'count:=0', 'loop:=true', 'rate_hz:=2.0',
        'wait_for_subscribers:=1', 'start_delay_s:=1.0']) for r in ROBOTS]

    def served(robot, since=0.0):
        return [m for t, m in got['det'][robot] if m.computed_by == 'server' and t > since]
    # both robots served, one by each server (rebalanced after the 5 s hold if they met)
    assert ros.wait_for(lambda: all(len(served(r)) >= 3 for r in ROBOTS) and {
        _edge_server(got, r) for r in ROBOTS} == {'gpu-a', 'gpu-b'}, 90), (
        got['diag'], got['ann'], ros.log(edges['robot1']))
    for r in ROBOTS:
        assert 'ignored a server announcement' in ros.log(edges[r])
        assert int(got['diag'][f'fluxshard/edge/{r}'].get('rejected.bad_announcement',
                                                          0)) >= 1

    # kill the server of robot1 the hard way: no goodbye on DDS
    victim = _edge_server(got, 'robot1')
    other = 'gpu-b' if victim == 'gpu-a' else 'gpu-a'
    servers[victim].send_signal(signal.SIGKILL)
    servers[victim].wait(10)
    t_kill = time.monotonic()
    assert ros.wait_for(lambda: len(served('robot1', t_kill)) >= 2
                        and _edge_server(got, 'robot1') == other, 30), ros.log(edges['robot1'])
    first = min(t for t, m in got['det']['robot1'] if m.computed_by == 'server' and t > t_kill)
    log = ros.log(edges['robot1'])
    assert f'served by {other}' in log and f'server {victim} stopped acknowledging' in log, log
    # the surviving server serves both; no frame of either robot was served twice
    for r in ROBOTS:
        stamps = [_stamp(m.header) for m in served(r)]
        assert len(stamps) == len(set(stamps)), r
    for c in cams:
        c.send_signal(signal.SIGINT)
    assert all(p.poll() is None for p in edges.values()) and servers[other].poll() is None
    print(f'failover: first result from {other} {first - t_kill:.2f} s after the kill')
