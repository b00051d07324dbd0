"""FluxShard edge node: camera in, BlockBatch out (glue only; logic in pipeline.py)."""

from collections import Counter, OrderedDict
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from fluxshard_msgs.msg import BlockBatch, ProxyDelta
import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from sensor_msgs.msg import Image

from fluxshard_edge import conversions
from fluxshard_edge.common_node import camera_qos, declare, LINK_QOS, ReasonLog
from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
from fluxshard_edge.slot import LatestSlot


class EdgeNode(Node):
    """Subscribes ``image``; publishes ``block_batch``, ``proxy_delta`` and ``/diagnostics``."""

    def __init__(self, **kwargs):
        super().__init__('fluxshard_edge', **kwargs)
        ns = self.get_namespace().strip('/').replace('/', '_')
        self.config = EdgeConfig(
            edge_id=declare(self, 'edge_id', ns or 'edge0',
                            'Unique id of this edge (default: the node namespace)',
                            read_only=True),
            block_size=declare(self, 'motion.block_size', 16, 'Block edge, pixels',
                               choices=[8, 16, 32], read_only=True),
            tau=declare(self, 'motion.tau', 0.0,
                        'Dissimilarity threshold D (mean abs diff, 0-255): blocks with '
                        'D >= tau are misses; 0 sends every block', lo=0.0, hi=255.0),
            codec=declare(self, 'payload.codec', 'jpeg', 'Payload codec of carried blocks',
                          choices=['raw', 'png', 'jpeg']),
            quality=declare(self, 'payload.quality', 90, 'JPEG quality', lo=1, hi=100),
            key_interval=declare(self, 'key_interval', 0,
                                 'Send a key batch every N frames (0 = only on demand)',
                                 lo=0, hi=100000),
        )
        self.pipeline = EdgePipeline(self.config)
        self.slot = LatestSlot()
        self.counters = Counter()
        self.rejects = Counter()
        self._digests = OrderedDict()
        self._lock = threading.Lock()
        self._last = {}
        self.errors = ReasonLog(self.get_logger())
        self.batch_pub = self.create_publisher(BlockBatch, 'block_batch', LINK_QOS)
        self.delta_pub = self.create_publisher(ProxyDelta, 'proxy_delta', LINK_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        reliability = declare(self, 'camera.reliability', 'reliable',
                              'QoS reliability of the camera subscription (depth 1). Must be '
                              'best_effort for best-effort cameras', read_only=True,
                              choices=['reliable', 'best_effort'])
        self.create_subscription(
            Image, 'image', self._on_image, camera_qos(reliability),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_bad_qos))
        self.create_subscription(ProxyDelta, 'proxy_feedback', self._on_feedback, LINK_QOS)
        self.create_timer(1.0, self._publish_diagnostics)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name='edge-critical', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'edge {self.config.edge_id!r}: block {self.config.block_size}px, '
            f'tau {self.config.tau}, codec {self.config.codec}; listening on '
            f'{self.resolve_topic_name("image")}')

    # -- callbacks: O(1) work ------------------------------------------------------------
    def _on_image(self, msg: Image):
        self.counters['frames_in'] += 1
        if self.slot.put(msg) is not None:
            self.counters['dropped_superseded'] += 1

    def _on_bad_qos(self, event):
        self.counters['incompatible_qos'] += 1
        self.get_logger().error(
            f'camera publisher on {self.resolve_topic_name("image")} has incompatible QoS '
            f'(policy id {event.last_policy_kind}): no frames will arrive. Set parameter '
            'camera.reliability to best_effort for a best-effort camera.')

    def _on_feedback(self, msg: ProxyDelta):
        if msg.edge_id != self.config.edge_id:
            return
        if msg.kind == ProxyDelta.KIND_RESYNC_REQUEST:
            self.counters['resync_requests'] += 1
            if self.pipeline.request_resync(f'server: {msg.reason}', msg.seq):
                self.get_logger().warn(f'server asked for resync after seq {msg.seq}: '
                                       f'{msg.reason}')
        elif msg.kind == ProxyDelta.KIND_ACK:
            with self._lock:
                mine = self._digests.get(msg.seq)
            if mine is not None and bytes(msg.state_digest) != mine:
                self.counters['digest_mismatch'] += 1
                self.pipeline.request_resync(f'digest mismatch at seq {msg.seq}', msg.seq)
                self.get_logger().error(f'server proxy digest differs at seq {msg.seq}; '
                                        'sending a key batch')
            else:
                self.counters['acks'] += 1

    # -- critical path ---------------------------------------------------------------------
    def _run(self):
        while not self._stop.is_set():
            msg = self.slot.take(timeout=0.2)
            if msg is None:
                continue
            try:
                self._process(msg)
            except conversions.InputError as e:
                self.rejects[e.reason] += 1
                self.errors.error(e.reason, f'rejected image ({e.reason}): {e}')
            except Exception as e:  # noqa: B902 - a bad frame must never kill the edge
                self.rejects['internal_error'] += 1
                self.errors.error('internal_error', f'frame failed: {type(e).__name__}: {e}')

    def _process(self, msg: Image):
        t0 = time.perf_counter()
        frame = conversions.image_to_array(msg)
        step = self.pipeline.step(frame)
        out = conversions.update_to_msg(
            step.update, step.payload, msg.header, self.config.edge_id, step.seq,
            self.counters['frames_in'], step.codec, step.quality, step.dissimilarity,
            True, step.digest)
        if step.key:
            self.get_logger().info(f'key batch seq {step.seq}: {step.key_reason}')
        with self._lock:
            self._digests[step.seq] = step.digest
            while len(self._digests) > 256:
                self._digests.popitem(last=False)
        self.batch_pub.publish(out)
        self.counters['batches_sent'] += 1
        self.counters['bytes_sent'] += len(step.payload)
        self.counters['blocks_sent'] += len(step.update.block_indices)
        self._last = dict(step.timings, total_s=time.perf_counter() - t0,
                          blocks=len(step.update.block_indices),
                          grid=step.update.grid.count)

    def _publish_diagnostics(self):
        st = DiagnosticStatus(name=f'fluxshard/edge/{self.config.edge_id}',
                              hardware_id=self.config.edge_id)
        bad = sum(self.rejects.values())
        st.level = DiagnosticStatus.OK if not bad else DiagnosticStatus.WARN
        st.message = f'{self.counters["batches_sent"]} batches, {bad} rejected inputs'
        vals = dict(self.counters)
        vals.update({f'rejected.{k}': v for k, v in self.rejects.items()})
        vals.update({f'last.{k}': v for k, v in self._last.items()})
        st.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(vals.items())]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.diag_pub.publish(arr)

    def destroy_node(self):
        self._stop.set()
        self.slot.close()
        self._worker.join(timeout=2.0)
        return super().destroy_node()


def main(args=None):
    rclpy.init(args=args)
    node = None
    try:
        node = EdgeNode()
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == '__main__':
    main()
