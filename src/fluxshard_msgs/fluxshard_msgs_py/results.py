"""One result publisher for edge and server: ``detections`` (+ ``masks`` for segment,
``detections_vision`` where vision_msgs exists) or ``keypoints``, in stamp order per topic.

Edge and server both publish on a robot's result topics (``computed_by`` tells which). A result
older than one already on the topic (a server result arriving after the edge served a newer
frame) is dropped and counted (``dropped_out_of_order``): consumers see stamps only increase.
A result for a stamp already on the topic (the edge served it meanwhile, or the robot's previous
server of a fleet did before the robot moved) is dropped and counted (``dropped_already_served``):
no frame is served twice. Each publisher watches its topic to know the newest stamp anyone
published there.
"""

from sensor_msgs.msg import Image

from fluxshard_msgs.msg import DetectionArray, KeypointArray
from fluxshard_msgs_py import conversions
from fluxshard_msgs_py.node import LatencyWindow, RESULT_QOS

try:  # a ROS 2 install with vision_msgs: publish the standard type too
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - depends on the install
    Detection2DArray = None


def _ns(stamp) -> int:
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


class ResultPublisher:
    """Publishes one side's results for one robot (topic ``prefix`` + name)."""

    def __init__(self, node, prefix: str, task: str, edge_id: str, computed_by: str,
                 counters, callback_group=None, annotated=None):
        self.node, self.task, self.edge_id, self.by = node, task, edge_id, computed_by
        self.counters = counters
        self.annotated = annotated  # an annotate.AnnotatedPublisher, or None
        self.names = {}  # class names for the picture (the model's)
        self.newest = -1  # newest stamp seen on the topic (ours or the other side's)
        #: image stamp -> a result of either side arriving on the topic here (on the robot:
        #: what its consumers see) / -> this side publishing its own
        self.seen_latency, self.own_latency = LatencyWindow(), LatencyWindow()
        typ, name = ((KeypointArray, 'keypoints') if task == 'pose'
                     else (DetectionArray, 'detections'))
        self.topic = node.resolve_topic_name(prefix + name)
        self.pub = node.create_publisher(typ, prefix + name, RESULT_QOS)
        self.masks = (node.create_publisher(Image, prefix + 'masks', RESULT_QOS)
                      if task == 'segment' else None)
        self.vision = (node.create_publisher(Detection2DArray, prefix + 'detections_vision',
                                             RESULT_QOS)
                       if Detection2DArray is not None and task != 'pose' else None)
        self.sub = node.create_subscription(typ, prefix + name, self._seen, RESULT_QOS,
                                            callback_group=callback_group)

    def _seen(self, msg):
        self.newest = max(self.newest, _ns(msg.header.stamp))
        self.seen_latency.add_stamp(self.node.get_clock(), msg.header.stamp)

    def publish(self, det, header, frame_index: int, shape, image=None, block_map=None,
                block_size: int = 16, computed_by: str = '') -> bool:
        """Publish ``det`` (fluxshard_kernels Detections) for the frame with ``header``; False
        (counted) when a result for this frame or a newer one is already on the topic.
        ``image`` (the pixels the result was computed from) and ``block_map`` feed the
        annotated picture; ``computed_by`` overrides this publisher's side (the edge's frames
        not sent: ``motion``)."""
        stamp = _ns(header.stamp)
        if stamp <= self.newest:
            self.counters['dropped_out_of_order' if stamp < self.newest
                          else 'dropped_already_served'] += 1
            return False
        self.newest = stamp
        self._publish(det, header, frame_index, shape, computed_by or self.by)
        self.own_latency.add_stamp(self.node.get_clock(), header.stamp)
        if self.annotated is not None and self.annotated.publish(
                image, det, header, self.names, block_map, block_size):
            self.counters['annotated_published'] += 1
        return True

    def _publish(self, det, header, frame_index, shape, by):
        if self.task == 'pose':
            self.pub.publish(conversions.keypoints_to_msg(det, header, self.edge_id, by,
                                                          frame_index))
            return
        seg = self.task == 'segment'
        self.pub.publish(conversions.detections_to_msg(det, header, self.edge_id, by,
                                                       frame_index, seg))
        if seg:
            from fluxshard_kernels.yolo.processing import label_image
            self.masks.publish(conversions.array_to_image(
                label_image(det.masks, det.scores, shape[:2]), header))
        if self.vision is not None:
            self.vision.publish(to_vision(det, header))

    def destroy(self):
        if self.annotated is not None:
            self.annotated.destroy()
        for p in (self.pub, self.masks, self.vision):
            if p is not None:
                self.node.destroy_publisher(p)
        self.node.destroy_subscription(self.sub)


def to_vision(det, header):
    """Detections -> vision_msgs/Detection2DArray."""
    out = Detection2DArray()
    out.header = header
    for b, s, c in zip(det.boxes, det.scores, det.class_ids):
        d = Detection2D()
        d.header = header
        d.bbox.center.position.x = float((b[0] + b[2]) / 2)
        d.bbox.center.position.y = float((b[1] + b[3]) / 2)
        d.bbox.size_x, d.bbox.size_y = float(b[2] - b[0]), float(b[3] - b[1])
        h = ObjectHypothesisWithPose()
        h.hypothesis.class_id, h.hypothesis.score = str(int(c)), float(s)
        d.results.append(h)
        out.detections.append(d)
    return out
