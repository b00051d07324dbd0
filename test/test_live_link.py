"""The live edge <-> server link over real DDS, three separate processes: a camera replaying real
frames, the edge node and the server node (with the real YOLO11n detector)."""

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from fluxshard_msgs_py import conversions
from fluxshard_msgs_py.node import LATCHED_QOS, LINK_QOS, RESULT_QOS
from fluxshard_msgs.msg import BlockBatch, DetectionArray, LabelMap, ProxyDelta
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy

N = 10
IMAGE_QOS = QoSProfile(depth=N, reliability=ReliabilityPolicy.RELIABLE)


def _stamp(h):
    return h.stamp.sec * 10**9 + h.stamp.nanosec


def _collect(ros):
    got = {'image': {}, 'det': {}, 'proxy': {}, 'labels': [], 'diag': {}, 'feedback': []}
    n = ros.node
    n.create_subscription(Image, '/robot1/image',
                          lambda m: got['image'].__setitem__(_stamp(m.header), m), IMAGE_QOS)
    n.create_subscription(DetectionArray, '/robot1/detections',
                          lambda m: got['det'].__setitem__(_stamp(m.header), m), RESULT_QOS)
    n.create_subscription(Image, '/robot1/proxy_image',
                          lambda m: got['proxy'].__setitem__(_stamp(m.header), m), IMAGE_QOS)
    n.create_subscription(LabelMap, '/robot1/labels', got['labels'].append, LATCHED_QOS)
    # deep history: the test process must not lose feedback it is slow to take
    n.create_subscription(ProxyDelta, '/robot1/proxy_feedback', got['feedback'].append,
                          QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def on_diag(m):
        for st in m.status:
            got['diag'][st.name] = {kv.key: kv.value for kv in st.values}
    n.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 20)
    return got


def _ready(got):
    """Both nodes active (they publish diagnostics once configured)."""
    return {'fluxshard/server/robot1', 'fluxshard/edge/robot1'} <= set(got['diag'])


def _start(ros, codec='raw', tau='0.0', extra=('key_interval:=1',)):
    """Server + edge pinned to offloading (the link itself is under test); by default every
    batch is a key batch carrying the whole frame."""
    server = ros.spawn('fluxshard_server.server_node',
                       params=["edges:=['robot1']", 'publish_proxy_image:=true',
                               # the link is under test: the steady dense reference backend,
                               # so a cold incremental first pass cannot supersede a frame
                               'model.backend:=onnxruntime', 'model.threads:=1'])
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1',
                     params=[f'payload.codec:={codec}', f'motion.tau:={tau}',
                             'scheduler.force_strategy:=cloud', 'scheduler.lambda:=0.001',
                             'model.local_inference:=false', 'camera.depth:=10', *extra])
    return server, edge


def test_every_frame_gets_a_result_with_its_stamp_and_exact_reconstruction(ros):
    got = _collect(ros)
    server, edge = _start(ros)
    assert ros.wait_for(lambda: _ready(got), 60), (ros.log(server), ros.log(edge))
    cam = ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1',
                    params=['source:=davis-parkour', f'count:={N}', 'rate_hz:=1.5',
                            'wait_for_subscribers:=2', 'start_delay_s:=2.0'])
    ok = ros.wait_for(lambda: len(got['det']) >= N and len(got['proxy']) >= N, 60)
    if not ok:
        print('EDGE_DIAG', got['diag'].get('fluxshard/edge/robot1'))
        print('SERVER_DIAG', got['diag'].get('fluxshard/server/robot1'))
    assert ok, (len(got['image']), len(got['det']), len(got['proxy']), got['diag'],
                ros.log(edge), ros.log(server), ros.log(cam))
    assert len(got['image']) == N
    # every published frame: a result carrying its stamp and frame_id, and the server's proxy
    # reconstruction equal to the source bytes
    assert set(got['det']) == set(got['image'])
    # the edge runs no model here, so the labels come from the server, once
    assert ros.wait_for(lambda: got['labels'], 10) and len(got['labels']) == 1
    names = dict(zip(got['labels'][0].class_ids, got['labels'][0].class_names))
    persons = 0
    for stamp, img in got['image'].items():
        det = got['det'][stamp]
        assert det.header.frame_id == img.header.frame_id == 'camera'
        assert det.computed_by == 'server' and det.edge_id == 'robot1'
        src = conversions.image_to_array(img)
        rec = conversions.image_to_array(got['proxy'][stamp])
        assert np.array_equal(src, rec)
        persons += any(names[c] == 'person' and s > 0.5 for c, s in zip(det.class_ids,
                                                                        det.scores))
    assert persons >= N - 1  # the parkour runner is found in (nearly) every frame
    # the ACK of the last batch travels on its own topic: it may be taken after the result
    ros.wait_for(lambda: [f.kind for f in got['feedback']].count(ProxyDelta.KIND_ACK) >= N, 10)
    kinds = [f.kind for f in got['feedback']]
    assert ProxyDelta.KIND_RESYNC_REQUEST not in kinds
    assert kinds.count(ProxyDelta.KIND_ACK) == N and ProxyDelta.KIND_INFERENCE_DONE in kinds
    assert server.poll() is None and edge.poll() is None


def test_bad_input_is_logged_counted_and_nodes_keep_running(ros):
    got = _collect(ros)
    server, edge = _start(ros, codec='jpeg', tau='3.0', extra=())
    assert ros.wait_for(lambda: _ready(got), 60), (ros.log(server), ros.log(edge))
    img_pub = ros.node.create_publisher(Image, '/robot1/image', IMAGE_QOS)
    batch_pub = ros.node.create_publisher(BlockBatch, '/robot1/block_batch', LINK_QOS)
    assert ros.wait_for(lambda: img_pub.get_subscription_count() >= 1
                        and batch_pub.get_subscription_count() >= 1, 20)
    frames = list(__import__('fluxshard_kernels.data', fromlist=['x']).iter_frames(
        'pets09-s2l1', limit=3))

    def send(arr, enc=None, **kw):
        m = conversions.array_to_image(arr, Header(frame_id='camera'), enc)
        m.header.stamp = ros.node.get_clock().now().to_msg()
        for k, v in kw.items():
            setattr(m, k, v)
        img_pub.publish(m)
        ros.wait_for(lambda: False, 0.4)
        return _stamp(m.header)

    # discovery can finish on one side first: repeat the first good frame until it is served
    for _ in range(20):
        good1 = send(frames[0])
        if ros.wait_for(lambda: good1 in got['det'], 1.5):
            break
    assert good1 in got['det'], ros.log(edge)

    def rejected(reason):
        return int(got['diag'].get('fluxshard/edge/robot1', {}).get(f'rejected.{reason}', 0))

    def send_bad(reason, **kw):
        # wait until the edge has counted it (a busy edge may replace a frame by a newer one:
        # that is counted as superseded, and the bad frame is sent again)
        for _ in range(5):
            send(frames[1], 'bgr8', **kw)
            if ros.wait_for(lambda: rejected(reason) >= 1, 4.0):
                return
        raise AssertionError(f'{reason} never counted: {got["diag"]}')
    send_bad('bad_encoding', encoding='yuv444')                    # wrong encoding
    send_bad('empty_image', height=0, width=0, step=0, data=b'')  # zero-size image
    send_bad('truncated', data=bytes(frames[1].tobytes()[:1000]))  # truncated data
    # a truncated BlockBatch straight at the server
    bad = BlockBatch(edge_id='robot1', seq=999, height=576, width=768, channels=3,
                     block_size=16, grid_rows=36, grid_cols=48, codec=BlockBatch.CODEC_RAW,
                     canvas_cols=1)
    bad.block_indices = [0]
    bad.dissimilarity = [1]
    bad.payload = b'\x01' * 100
    batch_pub.publish(ros.signer('robot1', 'block_batch').sign(bad))  # authentic but malformed
    ros.wait_for(lambda: False, 0.5)
    good2 = send(frames[2])
    # a frame size change mid-stream is served too (key batch)
    good3 = send(np.ascontiguousarray(frames[2][:400, :600]))
    assert ros.wait_for(lambda: good2 in got['det'] and good3 in got['det'], 30), (
        ros.log(edge), ros.log(server))
    assert min(rejected('bad_encoding'), rejected('empty_image'), rejected('truncated')) >= 1
    assert ros.wait_for(lambda: int(got['diag'].get('fluxshard/server', {}).get(
        'rejected.bad_batch', 0)) >= 1, 5)
    elog, slog = ros.log(edge), ros.log(server)
    assert "unsupported image encoding 'yuv444'" in elog
    assert 'zero size' in elog and 'expected' in elog
    assert 'raw payload has 100 bytes' in slog
    assert server.poll() is None and edge.poll() is None
