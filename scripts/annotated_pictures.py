#!/usr/bin/env python3
"""One annotated picture per task from a real run: a camera replay, a FluxShard edge and server
(separate processes over DDS) with ``annotated.enabled``; the edge computes every frame itself
and tints its block map (red: recomputed on the edge), the server draws the frames offloaded to
it. Saves ``docs/img/annotated-<task>.png`` (half size) from the last picture of each run.

Usage:  scripts/fluxshard run python scripts/annotated_pictures.py [--tasks detect segment pose]
"""

import argparse
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent


def run_task(task: str, source: str, frames: int, out: Path, keys: str, domain: int) -> Path:
    import cv2
    import rclpy
    from sensor_msgs.msg import CompressedImage
    from fluxshard_msgs_py import conversions
    from fluxshard_msgs_py.node import RESULT_QOS
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    py = [sys.executable, '-m']
    common = ['annotated.enabled:=true', 'annotated.max_rate_hz:=10.0', f'model.task:={task}',
              f'security.key_file:={keys}']
    cmds = [py + ['fluxshard_server.server_node', '--ros-args']
            + sum((['-p', p] for p in ["edges:=['robot1']"] + common), []),
            py + ['fluxshard_edge.edge_node', '--ros-args', '-r', '__ns:=/robot1']
            + sum((['-p', p] for p in ['scheduler.force_strategy:=edge',
                                       'annotated.block_map:=true'] + common), []),
            py + ['fluxshard_eval.image_publisher_node', '--ros-args', '-r', '__ns:=/robot1',
                  '-p', f'source:={source}', '-p', f'count:={frames}', '-p', 'rate_hz:=1.0',
                  '-p', 'wait_for_subscribers:=1']]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
             for c in cmds]
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node('annotated_pictures', context=ctx)
    pics = []
    node.create_subscription(CompressedImage, '/robot1/annotated', pics.append, RESULT_QOS)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    end = time.monotonic() + 60 + 3 * frames
    try:
        while time.monotonic() < end and procs[2].poll() is None:
            ex.spin_once(timeout_sec=0.1)
        for _ in range(30):
            ex.spin_once(timeout_sec=0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    if not pics:
        raise RuntimeError(f'{task}: no annotated picture arrived')
    img = conversions.compressed_to_array(pics[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2),
                                     interpolation=cv2.INTER_AREA))
    print(f'{task}: {len(pics)} pictures, saved the last as {out}', flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--tasks', nargs='+', default=['detect', 'segment', 'pose'])
    ap.add_argument('--source', default='davis-parkour')
    ap.add_argument('--frames', type=int, default=8)
    ap.add_argument('--out', default=str(ROOT / 'docs' / 'img'))
    a = ap.parse_args(argv)
    from fluxshard_msgs_py import auth, dds
    dds.apply_default()
    with tempfile.TemporaryDirectory() as tmp:
        keys = os.path.join(tmp, 'link.keys')
        auth.save_keys(keys, auth.generate(['robot1']))
        for i, task in enumerate(a.tasks):
            run_task(task, a.source, a.frames, Path(a.out) / f'annotated-{task}.png', keys,
                     60 + (os.getpid() + i) % 30)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
