"""Best-effort raw cameras (the sensor-data QoS of most drivers) arrive at the edge through the
shipped Fast DDS profile: a camera in another process at 1280x720 / 15 Hz and 1920x1080 / 5 Hz,
real frames resized, >= 95 % of them reach the edge's subscription callback (`frames_in`;
frames its latest-wins slot then supersedes are counted apart, `dropped_superseded`)."""

import re

import pytest


@pytest.mark.parametrize('width,height,hz,count', [(1280, 720, 15.0, 60), (1920, 1080, 5.0, 25)])
def test_a_best_effort_camera_in_another_process_arrives(ros, width, height, hz, count):
    diag = ros.watch_diagnostics()
    cam = ros.spawn('fluxshard_eval.image_publisher_node', ns='robot1', params=[
        'source:=davis-parkour', f'rate_hz:={hz}', f'count:={count}', 'reliable:=false',
        f'width:={width}', f'height:={height}', 'wait_for_subscribers:=1',
        'start_delay_s:=1.0'])
    edge = ros.spawn('fluxshard_edge.edge_node', ns='robot1', params=[
        'camera.reliability:=auto'])
    assert ros.wait_for(lambda: cam.poll() is not None, 120), ros.log(cam)
    published = int(re.search(r'published (\d+) frames', ros.log(cam)).group(1))
    assert published == count, ros.log(cam)

    def edge_diag():
        return diag.get('fluxshard/edge/robot1', {})
    # the count settles once the last frames are in (diagnostics are 1 Hz)
    ros.wait_for(lambda: int(edge_diag().get('frames_in', 0)) >= count, 15)
    d = edge_diag()
    assert edge.poll() is None, ros.log(edge)
    frames_in = int(d.get('frames_in', 0))
    assert frames_in >= 0.95 * count, (
        f'{frames_in} of {count} {width}x{height} best-effort frames reached the edge '
        f'(superseded after arrival: {d.get("dropped_superseded")})\n' + ros.log(edge))
    assert 'best_effort' in ros.log(edge)  # it followed the camera's QoS
