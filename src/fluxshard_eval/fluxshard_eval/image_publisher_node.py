"""Publish real frames (a rosbag2 folder, a frame folder, a sequence name from the data folder, or
a video file) as sensor_msgs/Image at a fixed rate or the source's own: a camera stand-in for
demos, tests and rosbag replay evaluation."""

import time

import rclpy
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from fluxshard_msgs_py import conversions
from fluxshard_msgs_py.node import help_text, Param, Params, run_node


PARAMS = [
    Param('source', 'davis-parkour', 'rosbag2 folder (sqlite3/MCAP), sequence name in the data '
          'folder, a frame folder or a video file'),
    Param('bag_topic', '', "Image topic in a bag ('' = the only Image/CompressedImage topic)"),
    Param('rate_hz', 10.0, "Publishing rate, Hz (0 = the source's rate: bag stamps, video fps)",
          lo=0.0, hi=1000.0),
    Param('count', 0, 'Frames to publish (0 = all)', lo=0, hi=10**9),
    Param('frame_id', 'camera', 'frame_id of the images'),
    Param('loop', False, 'Start over at the end'),
    Param('start_delay_s', 1.0, 'Wait before the first frame (lets DDS discovery finish)',
          lo=0.0, hi=60.0),
    Param('wait_for_subscribers', 0, 'Wait (up to 30 s) for this many subscribers before '
          'starting', lo=0, hi=1000),
    Param('stamp_log', '', 'Append "<source index> <stamp ns>" per published frame to this '
          'file (the live evaluation maps results back to source frames); "" = off'),
    Param('reliable', True, 'Publish with reliable QoS (false: best effort, the sensor-data '
          'QoS of most camera drivers)'),
    Param('depth', 5, 'Publisher history depth (as camera drivers: a reliable reader that lags '
          'a frame still gets it)', lo=1, hi=100),
    Param('width', 0, 'Resize frames to this width (0 = as the source; with height)',
          lo=0, hi=8192),
    Param('height', 0, 'Resize frames to this height (0 = as the source; with width)',
          lo=0, hi=8192),
    Param('transport', 'raw', "raw (Image on 'image'), compressed (jpeg) or h264 (one access "
          "unit per CompressedImage) on 'image/compressed'",
          choices=['raw', 'compressed', 'h264']),
]
TOPICS = ["out  image (sensor_msgs/Image bgr8), or image/compressed (CompressedImage)"]


class ImagePublisher(Node):
    def __init__(self, **kwargs):
        super().__init__('fluxshard_image_publisher', **kwargs)
        p = Params(self, PARAMS)
        self.source, self.topic, self.rate = p['source'], p['bag_topic'], p['rate_hz']
        self.limit, self.frame_id, self.loop = p['count'], p['frame_id'], p['loop']
        self.stamp_log = p['stamp_log']
        self.start_delay, self.wait_subs = p['start_delay_s'], p['wait_for_subscribers']
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=p['depth'],
                         reliability=ReliabilityPolicy.RELIABLE if p['reliable']
                         else ReliabilityPolicy.BEST_EFFORT)
        self.transport = p['transport']
        self.size = (p['width'], p['height'])
        if (self.size[0] == 0) != (self.size[1] == 0):
            raise ValueError('width and height are set together (both 0 = source size)')
        if self.transport == 'raw':
            self.pub = self.create_publisher(Image, 'image', qos)
        else:
            self.pub = self.create_publisher(CompressedImage, 'image/compressed', qos)
        self._enc = None
        self.published = 0

    def _message(self, frame):
        if self.size[0] and frame.shape[1::-1] != self.size:
            import cv2
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR)
        if self.transport == 'raw':
            return conversions.array_to_image(frame, Image().header)
        if self.transport == 'h264' and self._enc is None:
            from fluxshard_kernels.codec_mv import H264Encoder
            self._enc = H264Encoder(frame.shape[1], frame.shape[0])
        return conversions.array_to_compressed(
            frame, Image().header, 'jpeg' if self.transport == 'compressed' else 'h264',
            encoder=self._enc)

    def run(self):
        deadline = time.monotonic() + 30.0
        while self.pub.get_subscription_count() < self.wait_subs and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(self.start_delay)
        from fluxshard_eval import bag
        rate = self.rate
        if rate <= 0:
            if bag.is_bag(self.source):
                with bag.BagSource(self.source, self.topic) as b:
                    rate = b.rate_hz()
            else:
                rate = bag.default_rate(self.source)
        period = 1.0 / rate
        nxt = time.monotonic()
        while rclpy.ok():
            for index, frame in enumerate(bag.iter_source(self.source, self.limit or None,
                                                          self.topic)):
                if not rclpy.ok() or (self.limit and self.published >= self.limit):
                    return
                msg = self._message(frame)
                msg.header.stamp = self.get_clock().now().to_msg()
                msg.header.frame_id = self.frame_id
                if self.stamp_log:
                    ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                    with open(self.stamp_log, 'a') as f:
                        f.write(f'{index} {ns}\n')
                self.pub.publish(msg)
                self.published += 1
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))
            if not self.loop:
                return


def _publish_all(node):
    try:
        node.run()
    except KeyboardInterrupt:
        pass
    finally:  # the runner reads this line to account for every published frame
        print(f'[fluxshard_image_publisher] published {node.published} frames from '
              f'{node.source}', flush=True)
    time.sleep(0.5)


def main(args=None):
    run_node(ImagePublisher, args, body=_publish_all,
             usage=help_text('fluxshard_eval image_publisher', __doc__, PARAMS, TOPICS))


if __name__ == '__main__':
    main()
