"""Reliability over real DDS (reduced for CI): lossy link -> gaps detected and healed by resync;
server killed and restarted mid-stream -> the edge falls back to local results and resyncs;
random and mutated messages -> rejected with counted reasons, nothing escapes a callback."""

import os
import random
import signal

from diagnostic_msgs.msg import DiagnosticArray
from fluxshard_msgs_py.node import RESULT_QOS
from fluxshard_msgs.msg import BlockBatch, DetectionArray, ProxyDelta
from rclpy.qos import QoSProfile, ReliabilityPolicy

#: the test's own monitors keep a deep history: a slow test process must not lose messages
MONITOR_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)


def _stamp(h):
    return h.stamp.sec * 10**9 + h.stamp.nanosec


def _watch(ros):
    got = {'det': {}, 'fb': [], 'diag': {}}
    ros.node.create_subscription(
        DetectionArray, '/robot1/detections',
        lambda m: got['det'].setdefault(_stamp(m.header), []).append(m), RESULT_QOS)
    ros.node.create_subscription(ProxyDelta, '/robot1/proxy_feedback', got['fb'].append,
                                 MONITOR_QOS)

    def on_diag(m):
        for st in m.status:
            got['diag'][st.name] = {kv.key: kv.value for kv in st.values}
    ros.node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
    return got


def _server(ros, *extra):
    return ros.spawn('fluxshard_server.server_node', params=["edges:=['robot1']",
                                                             'model.threads:=1', *extra])


def test_lossy_link_gaps_are_healed_by_resync(ros):
    got = _watch(ros)
    server = _server(ros)
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['scheduler.force_strategy:=cloud', 'link.drop_rate:=0.3',
                             'model.local_inference:=false', 'camera.depth:=10'])
    assert ros.wait_for(lambda: 'fluxshard/server' in got['diag'], 60), ros.log(server)
    n = 16
    cam = ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
                    params=['source:=davis-blackswan', f'count:={n}', 'rate_hz:=3.0',
                            'wait_for_subscribers:=1', 'start_delay_s:=2.0'])
    assert ros.wait_for(lambda: cam.poll() is not None, 60)

    def healed():  # the last frame reached the edge and its resync cycle is visible
        e = got['diag'].get('fluxshard/edge/robot1', {})
        srv = got['diag'].get('fluxshard/server', {})
        return (int(e.get('frames_in', 0)) == n and int(srv.get('rejected.seq_gap', 0)) >= 1
                and int(e.get('key_batches', 0)) >= 2)
    assert ros.wait_for(healed, 30), got['diag']
    e, s = got['diag']['fluxshard/edge/robot1'], got['diag']['fluxshard/server']
    assert int(e.get('injected_drops', 0)) >= 1, e
    # every loss was detected (gap or not-in-sync) and answered with a resync
    assert int(s.get('rejected.seq_gap', 0)) >= 1, s
    assert int(e.get('resync_requests', 0)) >= 1 and int(e.get('key_batches', 0)) >= 2, e
    # healed: the last batch the server applied carries the edge's digest, and most frames
    # were served
    acks = [f for f in got['fb'] if f.kind == ProxyDelta.KIND_ACK]
    assert acks and int(e.get('digest_mismatch', 0)) == 0
    # served despite 30 % loss (the rest: lost, rejected after a gap, or superseded - counted)
    assert len(got['det']) >= n // 4, (len(got['det']), e, s)
    assert int(e['frames_in']) == n, e
    assert edge.poll() is None and server.poll() is None


def test_server_restart_falls_back_to_local_then_resyncs(ros):
    got = _watch(ros)
    server = _server(ros)
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['scheduler.force_strategy:=cloud', 'link.ack_timeout_ms:=600.0'])
    assert ros.wait_for(lambda: 'fluxshard/server' in got['diag'], 60), ros.log(server)
    cam = ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
                    params=['source:=davis-parkour', 'count:=0', 'loop:=true', 'rate_hz:=2.0',
                            'wait_for_subscribers:=1', 'start_delay_s:=2.0'])

    def by(who):
        return [m for ms in got['det'].values() for m in ms if m.computed_by == who]
    assert ros.wait_for(lambda: len(by('server')) >= 2, 60), ros.log(edge)
    server.send_signal(signal.SIGINT)
    server.wait(10)
    n_local = len(by('edge'))
    assert ros.wait_for(lambda: len(by('edge')) >= n_local + 3, 40), ros.log(edge)
    assert 'no server answers on /robot1/block_batch' in ros.log(edge)

    # the frame offloaded when the server went away was computed locally (or counted)
    def recovered():
        d = got['diag'].get('fluxshard/edge/robot1', {})
        return int(d.get('recovered_locally', 0)) + int(d.get('lost_offloaded', 0))
    assert ros.wait_for(lambda: recovered() >= 1, 5), got['diag']
    n_server = len(by('server'))
    server2 = _server(ros)  # a fresh server with no state: it must ask for a key batch
    assert ros.wait_for(lambda: len(by('server')) >= n_server + 2, 90), (
        ros.log(server2), ros.log(edge))
    assert ros.wait_for(lambda: 'server answers again on' in ros.log(edge), 10)
    # results always carry the stamp of the frame they describe: no stamp is reported twice
    # by the same side
    for ms in got['det'].values():
        assert len({m.computed_by for m in ms}) == len(ms)
    cam.send_signal(signal.SIGINT)
    assert edge.poll() is None and server2.poll() is None


def test_random_and_mutated_messages_are_rejected_and_counted(ros):
    import numpy as np
    from sensor_msgs.msg import Image
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    got = _watch(ros)
    # the dense reference backend: a second-long cold incremental pass on a frame the edge
    # sends would stall the server's callbacks past its depth-8 history
    server = _server(ros, 'model.backend:=onnxruntime')
    # camera.depth 50: every random image reaches the edge's own counters, even when a busy
    # edge takes them late (depth 1 would let DDS replace them unseen)
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=['model.local_inference:=false', 'camera.depth:=50'])
    # deep writer histories: a sample is kept until the server's reader has acknowledged it
    bpub = ros.node.create_publisher(BlockBatch, '/robot1/block_batch', MONITOR_QOS)
    dpub = ros.node.create_publisher(ProxyDelta, '/robot1/proxy_delta', MONITOR_QOS)
    ipub = ros.node.create_publisher(Image, '/robot1/image',
                                     QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    assert ros.wait_for(lambda: bpub.get_subscription_count() and ipub.get_subscription_count()
                        and 'fluxshard/server' in got['diag'], 60), ros.log(server)
    bsign, dsign = ros.signer('robot1', 'block_batch'), ros.signer('robot1', 'proxy_delta')

    def srv_rejected():
        return sum(int(v) for k, v in got['diag'].get('fluxshard/server', {}).items()
                   if k.startswith('rejected.'))
    rng = random.Random(int(os.environ.get('FLUXSHARD_FUZZ_SEED', '7')))
    n_batches = 60
    for i in range(n_batches):
        m = BlockBatch(edge_id='robot1', seq=rng.randrange(0, 2**40),
                       height=rng.choice([0, 1, 17, 480, 9000, 2**31]),
                       width=rng.choice([0, 3, 64, 854, 100000]),
                       channels=rng.choice([0, 1, 3, 4, 255]),
                       block_size=rng.choice([0, 7, 8, 16, 32, 64]),
                       grid_rows=rng.randrange(0, 2000), grid_cols=rng.randrange(0, 2000),
                       codec=rng.choice([0, 1, 2, 3, 200]), canvas_cols=rng.randrange(0, 5000),
                       key=rng.random() < 0.5, sparse_inference_requested=True)
        k = rng.randrange(0, 40)
        m.block_indices = [rng.randrange(0, 2**32) for _ in range(k)]
        m.dissimilarity = [rng.randrange(256) for _ in range(rng.choice([k, k + 1]))]
        nmv = rng.choice([0, 5, 60])
        m.mv_x = [rng.randrange(-30000, 30000) for _ in range(nmv)]
        m.mv_y = [rng.randrange(-30000, 30000) for _ in range(nmv)]
        m.mv_packing = rng.choice([0, 0, 1, 9])
        if m.mv_packing:
            m.mv_packed = bytes(rng.randrange(256) for _ in range(rng.choice([0, 7, 200])))
        m.payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 10, 3000])))
        if rng.random() < 0.5:
            m.state_digest = bytes(rng.randrange(256) for _ in range(16))
        # signed with robot1's key: the fuzz reaches the decoder (forgeries: test_security.py)
        bpub.publish(bsign.sign(m))
        dpub.publish(dsign.sign(ProxyDelta(edge_id='robot1', kind=rng.randrange(0, 256),
                                           seq=rng.randrange(0, 2**40),
                                           reason='x' * rng.randrange(300))))
        if i == 0:  # the server has warmed up on the first one before the rest come
            assert ros.wait_for(lambda: srv_rejected() >= 1, 20), got['diag']
        ros.wait_for(lambda: False, 0.03)  # keep within the depth-8 reliable history
    for i in range(30):
        h, w = rng.choice([(0, 0), (1, 1), (7, 5), (480, 854)])
        enc = rng.choice(['bgr8', 'rgb8', 'mono8', '16UC1', 'bayer_rggb8', ''])
        img = Image(height=h, width=w, encoding=enc, step=rng.choice([0, w * 3, w]))
        img.data = np.random.default_rng(i).integers(0, 256, rng.choice([0, 10, h * w * 3]),
                                                     dtype=np.uint8).tobytes()
        ipub.publish(img)
        ros.wait_for(lambda: False, 0.02)

    # under load some paced batches are lost inside DDS (the server's reader keeps 8; seen:
    # up to 10 of 60 on a loaded 2-core machine): what must hold is that every random batch
    # the server received was rejected and counted - received = edge's batches + rejected
    def accounted():
        s = got['diag'].get('fluxshard/server', {})
        edge_batches = int(got['diag'].get('fluxshard/edge/robot1', {}).get('batches_sent', 0))
        return (srv_rejected() >= n_batches // 2
                and int(s.get('batches_in', 0)) - edge_batches == srv_rejected())
    assert ros.wait_for(accounted, 30), (got['diag'], ros.log(server)[-3000:])
    ros.wait_for(lambda: False, 2.5)  # diagnostics (1 Hz) settle: still accounted
    assert accounted(), got['diag']
    s = got['diag']['fluxshard/server']
    assert int(s.get('rejected.inference_error', 0)) == 0
    assert ros.wait_for(lambda: int(got['diag'].get('fluxshard/edge/robot1', {}).get(
        'frames_in', 0)) >= 20, 30), (got['diag'].get('fluxshard/edge/robot1'), edge.poll())
    e = got['diag']['fluxshard/edge/robot1']
    rejected = sum(int(v) for k, v in e.items() if k.startswith('rejected.'))
    assert rejected >= 1 and int(e.get('rejected.internal_error', 0)) == 0, e
    assert 'Traceback' not in ros.log(server) and 'Traceback' not in ros.log(edge)
    assert server.poll() is None and edge.poll() is None
