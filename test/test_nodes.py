"""The nodes as a robotics team meets them: ``--help`` on every executable, every allowed value
of every read-only parameter constructed, lifecycle transitions over the real lifecycle
services, live parameters validated and applied on a running edge, and every block size from
edge to server over DDS."""

import subprocess
import sys

from fluxshard_msgs.msg import DetectionArray
from fluxshard_msgs_py.node import RESULT_QOS
import pytest

N = 5


@pytest.mark.parametrize('module, expect', [
    ('fluxshard_edge.edge_node', ['motion.tau = 10.0', 'block_batch', '(live)']),
    ('fluxshard_server.server_node', ['edges = ', 'model.backend', 'proxy_feedback']),
    ('fluxshard_eval.image_publisher_node', ['rate_hz = 10.0', 'source']),
    ('fluxshard_eval.runner', ['--robots']),
    ('fluxshard_eval.cli', ['--frames']),
    ('fluxshard_eval.bag', ['make']),
])
def test_help_prints_usage_and_exits_without_starting_ros(module, expect):
    r = subprocess.run([sys.executable, '-m', module, '--help'], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for e in expect:
        assert e in r.stdout, (e, r.stdout)


@pytest.fixture(scope='module')
def context():
    """One rclpy context for the in-process constructions (many init/shutdown cycles in one
    process can hang inside rclpy)."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=231)
    yield ctx
    rclpy.shutdown(context=ctx)


def _construct(ctx, cls, overrides):
    from rclpy.parameter import Parameter
    params = [Parameter('autostart', value=False)] + [
        Parameter(k, value=v) for k, v in overrides.items()]
    node = cls(context=ctx, parameter_overrides=params, enable_rosout=False)
    node.destroy_node()


def _choices():
    from fluxshard_edge import edge_node
    from fluxshard_server import server_node
    for cls, table in ((edge_node.EdgeNode, edge_node.PARAMS),
                       (server_node.ServerNode, server_node.PARAMS)):
        for p in table:
            for v in p.choices or ():
                yield pytest.param(cls, p.name, v, id=f'{cls.__name__}-{p.name}={v!r}')


@pytest.mark.parametrize('cls, name, value', list(_choices()))
def test_every_allowed_value_is_accepted(context, cls, name, value):
    _construct(context, cls, {name: value})


def test_model_device_cuda_without_a_gpu_fails_configure_with_the_reason(context):
    """model.device is honoured end to end: 'cuda' where torch sees no GPU makes configure
    fail and say why (the node stays up, unconfigured); 'auto' falls back to the CPU."""
    import torch
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from fluxshard_edge.edge_node import EdgeNode
    from fluxshard_server.server_node import ServerNode
    if torch.cuda.is_available():
        pytest.skip('a GPU is present here (scripts/gpu-check.sh runs the CUDA path)')
    for cls, extra in ((EdgeNode, []), (ServerNode, [Parameter('edges', value=['robot1'])])):
        for dev, ok in (('cuda', False), ('auto', True)):
            node = cls(context=context, enable_rosout=False, parameter_overrides=[
                Parameter('autostart', value=False), Parameter('model.device', value=dev),
                Parameter('security.mode', value='none'), *extra])
            try:
                res = node.trigger_configure()
                assert (res == TransitionCallbackReturn.SUCCESS) == ok, (cls, dev, node.failure)
                if not ok:
                    assert 'no CUDA device' in node.failure, node.failure
            finally:
                node.destroy_node()


@pytest.mark.parametrize('name, value', [('payload.codec', 'webp'), ('motion.block_size', 12),
                                         ('motion.tau', -1), ('camera.transport', 'ffmpeg')])
def test_a_value_outside_the_declared_ones_stops_the_start(context, name, value):
    from fluxshard_edge.edge_node import EdgeNode
    with pytest.raises(Exception, match=name.replace('.', r'\.')):
        _construct(context, EdgeNode, {name: value})


def _call(ros, client, req, timeout=20.0, retry_every=0.0):
    """Call a service and wait for the answer. ``retry_every`` > 0 (idempotent requests only)
    sends the request again that often: a service can be discovered before its response
    writer is matched to us, and the first answer is then lost (seen once in a loaded CI run,
    on the very first GetState of a freshly started node)."""
    assert client.wait_for_service(timeout_sec=timeout)
    end = ros.node.get_clock().now().nanoseconds + int(timeout * 1e9)
    while True:
        fut = client.call_async(req)
        if ros.wait_for(fut.done, retry_every or timeout):
            return fut.result()
        client.remove_pending_request(fut)
        assert retry_every and ros.node.get_clock().now().nanoseconds < end, 'no answer'


def test_lifecycle_transitions_over_the_lifecycle_services(ros):
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    diag = ros.watch_diagnostics()
    results = []
    ros.node.create_subscription(DetectionArray, '/robot1/detections', results.append,
                                 RESULT_QOS)
    ros.spawn('fluxshard_server.server_node',
              params=["edges:=['robot1']", 'model.backend:=onnxruntime', 'model.threads:=1'])
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['autostart:=false', 'model.local_inference:=false'])
    get = ros.node.create_client(GetState, '/robot1/fluxshard_edge/get_state')
    change = ros.node.create_client(ChangeState, '/robot1/fluxshard_edge/change_state')

    def state():
        return _call(ros, get, GetState.Request(), retry_every=2.0).current_state.id

    def go(tid):
        assert _call(ros, change, ChangeState.Request(transition=Transition(id=tid))).success

    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    go(Transition.TRANSITION_CONFIGURE)
    assert state() == State.PRIMARY_STATE_INACTIVE
    cam = ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
                    params=['source:=davis-parkour', 'rate_hz:=2.0', 'loop:=true',
                            'start_delay_s:=0.0'])
    # inactive: configured (diagnostics flow) but not subscribed, so no frame is taken
    assert ros.wait_for(lambda: 'fluxshard/edge/robot1' in diag, 30), ros.log(edge)
    assert ros.wait_for(lambda: ros.node.count_publishers('/robot1/image') == 1, 30)
    assert 'frames_in' not in diag['fluxshard/edge/robot1'] and not results
    go(Transition.TRANSITION_ACTIVATE)
    assert state() == State.PRIMARY_STATE_ACTIVE
    assert ros.wait_for(lambda: len(results) >= 2, 90), (ros.log(edge), ros.log(cam))
    go(Transition.TRANSITION_DEACTIVATE)
    assert state() == State.PRIMARY_STATE_INACTIVE
    assert ros.wait_for(lambda: int(diag['fluxshard/edge/robot1'].get('frames_in', 0)) >= 2, 10)
    go(Transition.TRANSITION_CLEANUP)
    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    go(Transition.TRANSITION_CONFIGURE)  # and back up again
    go(Transition.TRANSITION_ACTIVATE)
    n = len(results)
    assert ros.wait_for(lambda: len(results) > n + 1, 90), ros.log(edge)
    assert edge.poll() is None
    assert 'configure failed' not in ros.log(edge)


def test_live_parameters_are_validated_and_applied_on_the_next_frame(ros):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    diag = ros.watch_diagnostics()
    ros.spawn('fluxshard_server.server_node',
              params=["edges:=['robot1']", 'model.backend:=none'])
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['model.local_inference:=false', 'motion.tau:=255.0',
                             'scheduler.force_strategy:=cloud'])
    ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
              params=['source:=davis-parkour', 'rate_hz:=3.0', 'loop:=true',
                      'start_delay_s:=0.0'])
    cli = ros.node.create_client(SetParameters, '/robot1/fluxshard_edge/set_parameters')

    def cobs():
        return int(diag.get('fluxshard/edge/robot1', {}).get('last.n_cobs', -1))

    def set_(name, ptype, **value):
        req = SetParameters.Request(parameters=[Parameter(
            name=name, value=ParameterValue(type=ptype, **value))])
        return _call(ros, cli, req).results[0]

    # tau 255: nothing is a miss after the first key batch
    assert ros.wait_for(lambda: cobs() == 0, 60), ros.log(edge)
    r = set_('motion.tau', ParameterType.PARAMETER_DOUBLE, double_value=0.0)
    assert r.successful, r.reason
    assert ros.wait_for(lambda: cobs() > 1000, 30), ros.log(edge)  # 0: every block misses
    refused = [('payload.codec', ParameterType.PARAMETER_STRING, dict(string_value='webp')),
               ('scheduler.force_strategy', ParameterType.PARAMETER_STRING,
                dict(string_value='gpu')),
               ('motion.tau', ParameterType.PARAMETER_INTEGER, dict(integer_value=-1)),
               ('motion.block_size', ParameterType.PARAMETER_INTEGER, dict(integer_value=8))]
    for name, ptype, value in refused:
        r = set_(name, ptype, **value)
        assert not r.successful and r.reason, name
    assert edge.poll() is None


@pytest.mark.parametrize('block,codec', [(8, 'jpeg'), (32, 'jpeg'), (16, 'h264')])
def test_every_block_size_from_edge_to_incremental_server(ros, block, codec):
    """Block sizes 8 and 32 (16, the default, runs in every other DDS test), and the
    inter-coded H.264 payload, from edge to the incremental server: every batch applied with
    equal digests (no rejection, no resync), results served."""
    results, diag, server, edge = offloading_robot(
        ros, 'incremental', [f'motion.block_size:={block}', f'payload.codec:={codec}'])
    ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
              params=['source:=davis-parkour', f'count:={N}', 'rate_hz:=1.0',
                      'wait_for_subscribers:=1', 'start_delay_s:=1.0'])

    def accounted():  # served, or superseded in the server's latest-wins job table (counted)
        return len(results) + int(diag.get('fluxshard/server', {}).get(
            'dropped_superseded', 0)) >= N
    assert ros.wait_for(accounted, 120), (diag, ros.log(edge), ros.log(server))
    assert len(results) >= 2 and all(r.computed_by == 'server' for r in results)
    srv = diag['fluxshard/server']
    assert not [k for k in srv if k.startswith('rejected.')], srv
    assert 'inference_error' not in ros.log(server) and 'failed' not in ros.log(server)
    e = diag['fluxshard/edge/robot1']
    assert int(e.get('key_batches', 0)) == 1 and 'resync' not in ros.log(edge), e
    # latency.*: image stamp -> result on the robot's topic (edge), -> published (server),
    # over the same results once both diagnostics count them all (within their 10 s)
    n = len(results)

    def latencies():
        e, s = diag['fluxshard/edge/robot1'], diag['fluxshard/server/robot1']
        return int(e.get('latency.results_count', 0)) == n == int(
            s.get('latency.served_count', 0)) and (e, s)
    assert ros.wait_for(latencies, 15), diag
    e, s = latencies()
    served, seen = float(s['latency.served_p50_ms']), float(e['latency.results_p50_ms'])
    assert 0 < served <= seen and float(e['latency.input_p50_ms']) < seen, (e, s)


def test_results_reach_a_topic_in_stamp_order(ros):
    """A result older than one already on the topic (the other side served a newer frame) is
    dropped and counted."""
    from collections import Counter
    from builtin_interfaces.msg import Time
    from fluxshard_kernels.yolo.processing import Detections
    from fluxshard_msgs_py.results import ResultPublisher
    from std_msgs.msg import Header
    other = ros.rclpy.create_node('other_side', context=ros.ctx)
    ros.executor.add_node(other)
    got, ca, cb = [], Counter(), Counter()
    ros.node.create_subscription(DetectionArray, '/robot1/detections', got.append, RESULT_QOS)
    edge = ResultPublisher(other, '/robot1/', 'detect', 'robot1', 'edge', ca)
    server = ResultPublisher(ros.node, '/robot1/', 'detect', 'robot1', 'server', cb)
    assert ros.wait_for(lambda: server.pub.get_subscription_count() >= 3, 10)

    def header(sec):
        return Header(stamp=Time(sec=sec), frame_id='camera')
    assert edge.publish(Detections(), header(2), 2, (4, 4, 3))
    assert ros.wait_for(lambda: server.newest == 2 * 10**9, 10)
    assert not server.publish(Detections(), header(1), 1, (4, 4, 3))  # late, older
    assert cb['dropped_out_of_order'] == 1
    # the same frame again (served already, e.g. by the robot's previous server): not twice
    assert not server.publish(Detections(), header(2), 2, (4, 4, 3))
    assert cb['dropped_already_served'] == 1
    assert server.publish(Detections(), header(3), 3, (4, 4, 3))
    assert ros.wait_for(lambda: len(got) == 2, 10)
    assert [m.header.stamp.sec for m in got] == [2, 3]
    ros.executor.remove_node(other)
    other.destroy_node()


def test_diagnostics_keep_coming_with_sim_time_and_no_clock(ros):
    diag = ros.watch_diagnostics()
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['use_sim_time:=true', 'model.local_inference:=false'])
    assert ros.wait_for(lambda: 'fluxshard/edge/robot1' in diag, 60), ros.log(edge)


def offline_overlapped_robot(ros, source, n, bridge_target):
    """robot1's edge computing every frame on its 'edge-local' thread (overlap_local always,
    offline, onnxruntime: a CPU stands in for the robot's GPU) while ``n`` frames of
    ``source`` arrive at 30 Hz; returns (results, its diagnostics once every frame is a local
    result or counted superseded)."""
    results = []
    diag = ros.watch_diagnostics()
    ros.node.create_subscription(DetectionArray, '/robot1/detections', results.append,
                                 RESULT_QOS)
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['scheduler.overlap_local:=always',
                             'scheduler.force_strategy:=offline', 'model.backend:=onnxruntime',
                             'camera.depth:=10', f'scheduler.bridge_target:={bridge_target}'])
    assert ros.wait_for(lambda: 'fluxshard/edge/robot1' in diag, 60), ros.log(edge)
    ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
              params=[f'source:={source}', f'count:={n}', 'rate_hz:=30.0',
                      'wait_for_subscribers:=1', 'start_delay_s:=1.0'])

    def accounted():
        e = diag.get('fluxshard/edge/robot1', {})
        return int(e.get('frames_in', 0)) == n and int(e.get('results_local', 0)) + int(
            e.get('dropped_superseded', 0)) + int(e.get('dropped_deferred_superseded', 0)) == n
    assert ros.wait_for(accounted, 120), (diag.get('fluxshard/edge/robot1'), ros.log(edge))
    e = diag['fluxshard/edge/robot1']
    assert ros.wait_for(lambda: len(results) == int(e['results_local']), 10)
    stamps = [(r.header.stamp.sec, r.header.stamp.nanosec) for r in results]
    assert stamps == sorted(stamps) and 'failed' not in ros.log(edge), ros.log(edge)
    return results, e


def test_overlapped_local_inference_accounts_for_every_frame(ros):
    """scheduler.overlap_local always (a CPU stands in for the robot's GPU): local inference runs
    on the edge's 'edge-local' thread; frames that arrive while it computes wait for it (an
    offline robot cannot offload them: deferred_device_busy; bridges off), the newest one
    wins. Every camera frame is a local result, superseded in the latest-wins slot, or
    superseded while deferred; results reach the topic in stamp order."""
    results, e = offline_overlapped_robot(ros, 'davis-parkour', 16, 0.0)
    assert int(e.get('deferred_device_busy', 0)) >= 1, e
    assert all(r.computed_by == 'edge' for r in results)


@pytest.mark.serial  # frames reach a busy device only while inference outlasts a frame interval
def test_frames_during_local_inference_are_bridged_and_published_in_order(ros):
    """scheduler.bridge_target: once moved local results were measured against the computed
    ones, a frame that arrives while the device computes an earlier one gets that frame's
    result moved by the block field, published right after it (computed_by 'motion'), in
    stamp order; every camera frame is a result or counted superseded."""
    results, e = offline_overlapped_robot(ros, 'pets09-s2l1', 60, 0.5)
    by = [r.computed_by for r in results]
    assert set(by) == {'edge', 'motion'}, (by, e)
    assert int(e['frames_bridged']) == int(e['results_motion']) == by.count('motion'), e
    assert int(e.get('bridged_lost', 0)) == 0


@pytest.mark.serial  # how many frames the latest-wins slot supersedes follows the machine's load
def test_frames_not_sent_are_published_with_their_stamp_and_side(ros, tmp_path):
    """payload.skip_target: once moved results measured against the server's agree, frames of
    a near-static camera are not sent; each still gets a result, published by the edge with
    its own stamp and computed_by 'motion', in stamp order with the server's, every frame
    accounted for and the counters saying how many. (A frame the edge's latest-wins slot
    replaced before it was taken is not processed at all: counted ``dropped_superseded``.)"""
    results, diag, server, edge = offloading_robot(
        ros, 'onnxruntime', ['payload.skip_target:=0.5', 'payload.skip_max:=2'])
    n, log = 14, tmp_path / 'stamps.txt'
    ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
              params=['source:=sam2-bedroom', f'count:={n}', 'rate_hz:=3.0',
                      'wait_for_subscribers:=1', 'start_delay_s:=1.0', f'stamp_log:={log}'])

    def superseded():
        return int(diag.get('fluxshard/edge/robot1', {}).get('dropped_superseded', 0))

    def served():
        e = diag.get('fluxshard/edge/robot1', {})
        return int(e.get('frames_in', 0)) == n and len({
            (r.header.stamp.sec, r.header.stamp.nanosec) for r in results}) + superseded() == n
    assert ros.wait_for(served, 120), (diag.get('fluxshard/edge/robot1'), ros.log(edge),
                                       ros.log(server))
    stamps = [r.header.stamp.sec * 10**9 + r.header.stamp.nanosec for r in results]
    published = {int(line.split()[1]) for line in log.read_text().split('\n') if line}
    assert stamps == sorted(stamps) and set(stamps) <= published
    # every frame accounted for; how many the latest-wins slot replaces before the edge takes
    # them follows the machine (0-5 of 14 seen on these 2 cores), most are taken
    assert len(published) - len(set(stamps)) == superseded() < n // 2
    by = [r.computed_by for r in results]
    assert set(by) <= {'server', 'motion'} and 'motion' in by, by

    def counted():  # the 1 Hz diagnostics may still lag behind the last frame's batch
        e = diag['fluxshard/edge/robot1']
        return int(e.get('results_motion', 0)) == int(e.get('frames_skipped', 0)) == \
            by.count('motion') == n - superseded() - int(e.get('batches_sent', 0))
    assert ros.wait_for(counted, 10), diag['fluxshard/edge/robot1']
    assert 'failed' not in ros.log(edge), ros.log(edge)


def offloading_robot(ros, backend, edge_params):
    """A server (``model.backend``) and robot1's edge offloading every frame (no local model),
    both up; returns (results on /robot1/detections, diagnostics, server, edge)."""
    results = []
    diag = ros.watch_diagnostics()
    ros.node.create_subscription(DetectionArray, '/robot1/detections', results.append,
                                 RESULT_QOS)
    server = ros.spawn('fluxshard_server.server_node',
                       params=["edges:=['robot1']", f'model.backend:={backend}'])
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['model.local_inference:=false', 'scheduler.force_strategy:=cloud',
                             'camera.depth:=10', *edge_params])
    assert ros.wait_for(lambda: {'fluxshard/server/robot1', 'fluxshard/edge/robot1'} <= set(diag),
                        60), (ros.log(edge), ros.log(server))
    return results, diag, server, edge
