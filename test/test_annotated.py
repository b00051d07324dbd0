"""The annotated picture (`annotated`, CompressedImage jpeg) on edge and server over real DDS:
drawn only while subscribed, stamped with the source image's stamp and frame_id, and the boxes
drawn where the results on `detections` say."""

import numpy as np

from fluxshard_msgs.msg import DetectionArray
from fluxshard_msgs_py import conversions
from fluxshard_msgs_py.node import RESULT_QOS

N = 10


def _stamp(h):
    return h.stamp.sec * 10**9 + h.stamp.nanosec


def _boxes_are_drawn(pic, src, boxes):
    """Each box's outline differs strongly from the source image; its inside does not."""
    diff = np.abs(pic.astype(np.int16) - src.astype(np.int16)).sum(axis=2)
    h, w = diff.shape
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(x2, w - 1), min(y2, h - 1)
        if x2 - x1 < 40 or y2 - y1 < 60:
            continue  # too small to tell outline from inside
        edge = np.concatenate([diff[y2, x1:x2], diff[y1:y2, x1], diff[y1:y2, x2]])
        inside = diff[y1 + 25:y2 - 8, x1 + 8:x2 - 8]
        assert np.mean(edge > 60) > 0.6, (x1, y1, x2, y2, np.mean(edge > 60))
        assert np.mean(inside > 60) < 0.25, (x1, y1, x2, y2, np.mean(inside > 60))
        return True
    return False


def test_annotated_pictures_on_edge_and_server(ros, tmp_path):
    from sensor_msgs.msg import CompressedImage
    from fluxshard_kernels import data
    src = list(data.iter_frames('davis-parkour', N))
    diag = ros.watch_diagnostics()
    dets = {'robot1': {}, 'robot2': {}}
    for r in dets:
        ros.node.create_subscription(
            DetectionArray, f'/{r}/detections',
            lambda m, r=r: dets[r].setdefault(_stamp(m.header), []).append(m), RESULT_QOS)
    server = ros.spawn('fluxshard_server.server_node', params=[
        "edges:=['robot1','robot2']", 'annotated.enabled:=true', 'annotated.max_rate_hz:=50.0',
        'model.threads:=1'])
    # robot1 computes every frame itself, robot2 offloads every frame: one picture per side
    edges = [ros.spawn('fluxshard_edge.edge_node', ns=r, params=[
        f'scheduler.force_strategy:={how}', 'annotated.enabled:=true',
        'annotated.max_rate_hz:=50.0', 'camera.depth:=10'])
        for r, how in (('robot1', 'edge'), ('robot2', 'cloud'))]
    # the cameras start once every node is active, so no frame waits out a warm-up (a burst
    # would leave no frame to draw once the test subscribes to the pictures)
    assert ros.wait_for(lambda: {'fluxshard/server/robot1', 'fluxshard/server/robot2',
                                 'fluxshard/edge/robot1', 'fluxshard/edge/robot2'} <= set(diag),
                        120), ros.log(server)
    logs = {r: tmp_path / f'{r}.stamps' for r in dets}
    cams = [ros.spawn('fluxshard_eval.image_publisher_node', ns=r, params=[
        'source:=davis-parkour', f'count:={N}', 'rate_hz:=1.0', 'wait_for_subscribers:=1',
        'frame_id:=front_cam', f'stamp_log:={logs[r]}']) for r in dets]

    def edge_diag(r):
        return diag.get(f'fluxshard/edge/{r}', {})
    # nobody subscribes yet: results flow, no picture is drawn
    assert ros.wait_for(lambda: int(edge_diag('robot1').get('results_local', 0)) >= 2
                        and len(dets['robot2']) >= 2, 120), ros.log(edges[0]) + ros.log(server)
    assert int(edge_diag('robot1').get('annotated_published', 0)) == 0
    pics = {r: [] for r in dets}
    for r in dets:
        ros.node.create_subscription(CompressedImage, f'/{r}/annotated', pics[r].append,
                                     RESULT_QOS)
    assert ros.wait_for(lambda: all(c.poll() is not None for c in cams)
                        and all(len(p) >= 2 for p in pics.values()), 60), (
        {r: len(p) for r, p in pics.items()}, ros.log(server))
    ros.wait_for(lambda: False, 2.0)  # let the last results arrive
    for r, side in (('robot1', 'edge'), ('robot2', 'server')):
        index = {int(ns): int(i) for i, ns in
                 (line.split() for line in logs[r].read_text().splitlines())}
        checked = 0
        for pic in pics[r]:
            stamp = _stamp(pic.header)
            assert pic.format == 'jpeg' and pic.header.frame_id == 'front_cam'
            assert stamp in index, 'the picture carries a source image stamp'
            ours = [m for m in dets[r].get(stamp, []) if m.computed_by == side]
            assert ours, f'{r}: a {side} picture without a {side} result of that frame'
            img = conversions.compressed_to_array(pic)
            assert img.shape == src[0].shape
            boxes, _, _ = conversions.boxes_from_msg(ours[0])
            checked += _boxes_are_drawn(img, src[index[stamp]], boxes)
        assert checked >= 1, f'{r}: no picture with a box big enough to check'
    assert int(edge_diag('robot1').get('annotated_published', 0)) >= 2
