"""FluxShard edge node: camera in; BlockBatch, local results and diagnostics out (glue only;
the logic is pipeline.py, paper Algorithm 1)."""

from collections import Counter
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from fluxshard_msgs.msg import (BlockBatch, DetectionArray, KeypointArray, LabelMap,
                                ProxyDelta)
from fluxshard_msgs_py import auth
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from fluxshard_edge import conversions
from fluxshard_edge.common_node import (camera_qos, declare, LATCHED_QOS, LINK_QOS, ReasonLog,
                                        RESULT_QOS, run_node)
from fluxshard_edge.feedback import ResyncGuard, ServerLink
from fluxshard_edge.link import BandwidthTrace, EmulatedLink
from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
from fluxshard_edge.scheduler import PROFILES
from fluxshard_edge.slot import LatestSlot


class EdgeNode(Node):
    """Subscribes ``image``; publishes ``block_batch``, local results on ``detections`` /
    ``keypoints`` / ``masks``, and ``/diagnostics``."""

    def __init__(self, **kwargs):
        super().__init__('fluxshard_edge', **kwargs)
        ns = self.get_namespace().strip('/').replace('/', '_')
        d = self._declare
        self.config = EdgeConfig(
            edge_id=d('edge_id', ns or 'edge0', 'Unique id of this edge (default: namespace)',
                      read_only=True),
            block_size=d('motion.block_size', 16, 'Block edge, pixels', choices=[8, 16, 32],
                         read_only=True),
            tau=d('motion.tau', 10.0, 'Miss threshold on the dissimilarity D (mean abs diff, '
                  '0-255); 0 makes every block a miss', lo=0.0, hi=255.0),
            motion=d('motion.enabled', True, 'Block matching (false: zero MVs, pixel deltas)'),
            independent_px=d('motion.independent_px', 0.0,
                             'Also recompute blocks moving >= this many px against their '
                             'neighbourhood (static cameras with small movers; 0 = off)',
                             lo=0.0, hi=1000.0),
            codec=d('payload.codec', 'jpeg', 'Payload codec of carried blocks',
                    choices=['raw', 'png', 'jpeg']),
            quality=d('payload.quality', 90, 'JPEG quality', lo=1, hi=100),
            key_interval=d('key_interval', 0, 'Key batch every N frames (0 = on demand)',
                           lo=0, hi=100000),
            local_inference=d('model.local_inference', True,
                              'Run incremental YOLO11 on the edge', read_only=True),
            task=d('model.task', 'detect', 'Vision task', choices=['detect', 'segment', 'pose'],
                   read_only=True),
            model_path=d('model.path', '', 'Model file ("" = YOLO11n for the task)',
                         read_only=True),
            conf=d('model.conf', 0.25, 'Score threshold', lo=0.0, hi=1.0),
            lam=d('scheduler.lambda', 10.0, 'EA time decay lambda, 1/s', lo=1e-6, hi=1e6),
            deadline_ms=d('scheduler.deadline_ms', 100.0,
                          'Frame deadline for opportunistic COB upload, ms', lo=1.0, hi=1e5),
            bandwidth_mbps=d('link.bandwidth_mbps', 56.0,
                             'Initial uplink bandwidth estimate, Mbit/s', lo=0.01, hi=1e5),
            edge_profile=d('scheduler.edge_profile', 'xavier_nx',
                           'Seed of the edge latency model', choices=sorted(PROFILES)),
            cloud_profile=d('scheduler.cloud_profile', 'rtx3080',
                            'Seed of the cloud latency model', choices=sorted(PROFILES)),
            fit_latency=d('scheduler.fit_latency', True,
                          'Refit the latency models from measured times (edge: local '
                          'inference; cloud: server-reported compute); false keeps both '
                          'profiles, e.g. to emulate devices'),
            task_allocation=d('scheduler.task_allocation', True,
                              'Adaptive task allocation (k*); false = every missed block '
                              "(the paper's No-ATA ablation)"),
            accuracy_edge=d('scheduler.accuracy_edge', 1.0, 'Per-block accuracy A_e', lo=0.0,
                            hi=1.0),
            accuracy_cloud=d('scheduler.accuracy_cloud', 1.0, 'Per-block accuracy A_c',
                             lo=0.0, hi=1.0),
            refresh_interval=d('refresh.interval', 10,
                               'Frames between background dense refreshes', lo=1, hi=100000),
            use_salience=d('scheduler.salience', True, 'Weight misses by projected results'),
            force_strategy=d('scheduler.force_strategy', '',
                             "'' = EA decides; 'edge' or 'cloud' to pin",
                             choices=['', 'edge', 'cloud']),
        )
        self.pack_motion = d('payload.pack_motion', True,
                             'zlib-pack the motion field of each BlockBatch (false: plain '
                             'mv_x / mv_y arrays, readable with ros2 topic echo)')
        emulate_mbps = d('link.emulate_mbps', 0.0,
                         'Emulate an uplink of this many Mbit/s in the transport (0 = off)',
                         lo=0.0, hi=1e5)
        drop_rate = d('link.drop_rate', 0.0,
                      'Drop this fraction of outgoing batches (loss injection for tests and '
                      'evaluation; 0 = off)', lo=0.0, hi=1.0)
        delay_ms = d('link.delay_ms', 0.0,
                     'Emulated one-way delay of outgoing batches, ms (0 = off)',
                     lo=0.0, hi=10000.0)
        trace = d('link.trace', '', 'Bandwidth trace file (seconds,mbps per line) replacing '
                  'link.emulate_mbps over time', read_only=True)
        self.link = EmulatedLink(emulate_mbps, BandwidthTrace.load(trace) if trace else None,
                                 delay_ms / 1e3, drop_rate)
        self.server = ServerLink(d('link.ack_timeout_ms', 1000.0,
                                   'No ACK for this long: the server counts as unavailable',
                                   lo=10.0, hi=1e6) / 1e3)
        reliability = d('camera.reliability', 'reliable',
                        'QoS reliability of the camera subscription (depth 1); best_effort for '
                        'best-effort cameras', choices=['reliable', 'best_effort'],
                        read_only=True)
        self.transport = d('camera.transport', 'raw',
                           "raw: sensor_msgs/Image on 'image'; compressed: jpeg/png "
                           "CompressedImage on 'image/compressed'; h264: one H.264 access unit "
                           "per CompressedImage (format 'h264') on 'image/compressed', whose "
                           'codec motion vectors replace block matching',
                           choices=['raw', 'compressed', 'h264'], read_only=True)
        self.camera_depth = d('camera.depth', 1,
                              'Camera QoS history depth. 1 = latest frame wins inside DDS '
                              '(replaced frames are not seen, so not counted); >1 lets the '
                              "edge's own latest-wins slot count every replaced frame",
                              lo=1, hi=100, read_only=True)
        security = d('security.mode', 'mac',
                     'mac: sign every BlockBatch / ProxyDelta with this edge\'s key and accept '
                     'server feedback only with it; none: no authentication (lab only)',
                     choices=list(auth.MODES), read_only=True)
        key_file = d('security.key_file', '',
                     'Key file holding a "<edge_id> <hex secret>" line for this edge (mode '
                     '0600; python -m fluxshard_msgs_py.auth generate / extract)',
                     read_only=True)
        max_age_s = d('security.max_age_s', 30.0,
                      "Reject feedback whose nonce is further than this from the edge's "
                      'clock, s (replays after a restart; 0 = off)', lo=0.0, hi=1e6,
                      read_only=True)
        self.batch_signer = self.delta_signer = self.feedback_check = None
        if security == 'mac':
            keys = auth.load_keys(key_file)
            if self.config.edge_id not in keys:
                raise ValueError(f'security.key_file {key_file} has no key for edge_id '
                                 f'{self.config.edge_id!r}')
            key = keys[self.config.edge_id]
            self.batch_signer = auth.Signer(key, 'block_batch')
            self.delta_signer = auth.Signer(key, 'proxy_delta')
            self.feedback_check = auth.Verifier(key, 'proxy_feedback', max_age_s)
        else:
            self.get_logger().warn('security.mode none: link messages are not authenticated; '
                                   'any participant on this DDS domain can forge feedback '
                                   '(lab use only)')
        self.resync = ResyncGuard(
            d('resync.max_rate_hz', 0.5, 'Key batches per second the edge sends in answer to '
              'resync requests (sustained); requests beyond it are refused and counted '
              '(resync_limited), so resync cannot be used as a bandwidth amplifier',
              lo=0.001, hi=1000.0, read_only=True),
            d('resync.burst', 2, 'Key batches answered back to back above resync.max_rate_hz',
              lo=1, hi=1000, read_only=True))
        self._h264 = conversions.H264Input()
        self.pipeline = EdgePipeline(self.config)
        self.slot = LatestSlot()
        self.counters = Counter()
        self.rejects = Counter()
        self.errors = ReasonLog(self.get_logger())
        self._last_item = None
        self._last = {}
        self.batch_pub = self.create_publisher(BlockBatch, 'block_batch', LINK_QOS)
        self.delta_pub = self.create_publisher(ProxyDelta, 'proxy_delta', LINK_QOS)
        self.det_pub = self.create_publisher(DetectionArray, 'detections', RESULT_QOS)
        self.kpt_pub = self.create_publisher(KeypointArray, 'keypoints', RESULT_QOS)
        self.mask_pub = self.create_publisher(Image, 'masks', RESULT_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        if self.pipeline.model is not None:
            self.create_publisher(LabelMap, 'labels', LATCHED_QOS).publish(
                conversions.label_map_msg(self.pipeline.model.names, LabelMap().header))
        fb = MutuallyExclusiveCallbackGroup()
        if self.transport == 'raw':
            typ, topic = Image, 'image'
        else:
            typ, topic = CompressedImage, 'image/compressed'
        self.create_subscription(
            typ, topic, self._on_image, camera_qos(reliability, self.camera_depth),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_bad_qos))
        self.create_subscription(ProxyDelta, 'proxy_feedback', self._on_feedback, LINK_QOS,
                                 callback_group=fb)
        self.create_subscription(DetectionArray, 'detections', self._on_server_result,
                                 RESULT_QOS, callback_group=fb)
        self.create_timer(1.0, self._publish_diagnostics)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name='edge-critical', daemon=True)
        self._worker.start()
        c = self.config
        self.get_logger().info(
            f'edge {c.edge_id!r}: block {c.block_size}px, tau {c.tau}, codec {c.codec}, '
            f'local inference {c.local_inference} ({c.task}); listening on '
            f'{self.resolve_topic_name(topic)} ({self.transport})')

    def _declare(self, name, default, description, **kw):
        return declare(self, name, default, description, **kw)

    # -- callbacks: O(1) work ------------------------------------------------------------------
    def _on_image(self, msg: Image):
        self.counters['frames_in'] += 1
        if self.slot.put((self.counters['frames_in'], msg)) is not None:
            self.counters['dropped_superseded'] += 1

    def _on_bad_qos(self, event):
        self.counters['incompatible_qos'] += 1
        self.get_logger().error(
            f'camera publisher on {self.resolve_topic_name("image")} has incompatible QoS '
            f'(policy id {event.last_policy_kind}): no frames will arrive. Set parameter '
            'camera.reliability to best_effort for a best-effort camera.')

    def _on_server_result(self, msg: DetectionArray):
        if msg.computed_by == 'server':
            from fluxshard_kernels.yolo.processing import Detections
            boxes, scores, cls = conversions.boxes_from_msg(msg)
            self.pipeline.last_result = Detections(boxes, scores, cls)
            self.counters['server_results'] += 1

    def _on_feedback(self, msg: ProxyDelta):
        self.counters['feedback_in'] += 1
        if msg.edge_id != self.config.edge_id:
            self.counters['feedback_other_edge'] += 1
            return
        if self.feedback_check is not None:
            bad = self.feedback_check.check(msg)
            if bad:  # forged or replayed: never acted upon
                counter, why = bad
                self.rejects[f'feedback.{counter}'] += 1
                self.errors.error(f'feedback.{counter}',
                                  f'dropped proxy_feedback kind {msg.kind} ({counter}): {why}')
                return
        self.counters['feedback_ok'] += 1
        now = time.monotonic()
        if msg.kind == ProxyDelta.KIND_RESYNC_REQUEST:
            self.counters['resync_requests'] += 1
            if msg.seq < self.pipeline.last_key_seq:
                return  # a key batch after the failed one is already on its way
            if not self.resync.allow(now):
                self.counters['resync_limited'] += 1
                self.errors.error('resync_limited', 'resync request refused: more than '
                                  'resync.max_rate_hz key batches requested (resync storm?)')
                return
            if self.pipeline.request_resync(f'server: {msg.reason}', msg.seq):
                self.get_logger().warn(f'server asked for resync after seq {msg.seq}: '
                                       f'{msg.reason}')
                # bounded resync: unless a newer frame is waiting, send the last one again
                # at once as a key batch
                if self._last_item is not None and self.slot.put_if_empty(self._last_item):
                    self.counters['resync_resends'] += 1
        elif msg.kind == ProxyDelta.KIND_ACK:
            ack = self.server.ack(msg.seq, bytes(msg.state_digest),
                                  float(msg.server_receive_ms) / 1e3, now)
            if ack is None:
                return
            self.pipeline.scheduler.bw.observe(ack.nbytes, ack.seconds)
            if not ack.digest_ok:
                self.counters['digest_mismatch'] += 1
                if not self.resync.allow(now):
                    self.counters['resync_limited'] += 1
                    return
                self.pipeline.request_resync(f'digest mismatch at seq {msg.seq}', msg.seq)
                self.get_logger().error(f'server proxy digest differs at seq {msg.seq}; '
                                        'sending a key batch')
            else:
                self.counters['acks'] += 1
        elif msg.kind == ProxyDelta.KIND_INFERENCE_DONE and self.config.fit_latency:
            self.pipeline.scheduler.cloud.observe(int(msg.server_blocks),
                                                  float(msg.server_compute_ms) / 1e3)

    # -- critical path ---------------------------------------------------------------------------
    def _run(self):
        while not self._stop.is_set():
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            self._last_item = item
            try:
                self._process(*item)
            except conversions.InputError as e:
                self.rejects[e.reason] += 1
                self.errors.error(e.reason, f'rejected image ({e.reason}): {e}')
            except Exception as e:  # noqa: B902 - a bad frame must never kill the edge
                self.rejects['internal_error'] += 1
                self.errors.error('internal_error', f'frame failed: {type(e).__name__}: {e}')

    def _process(self, idx: int, msg: Image):
        t0 = time.perf_counter()
        codec_mvs = None
        if self.transport == 'raw':
            frame = conversions.image_to_array(msg)
        elif self.transport == 'compressed':
            frame = conversions.compressed_to_array(msg)
        else:
            frame, codec_mvs = self._decode_h264(msg)
        link = self.server.poll(time.monotonic())
        if link == 'lost':
            self.get_logger().warn('no ACK from the server: computing locally')
        elif link == 'probe':
            # a key batch (also served locally) that a returning server can apply
            self.pipeline.request_resync('probing the server')
            self.counters['probes'] += 1
        self.pipeline.cloud_available = self.server.available
        step = self.pipeline.step(frame, codec_mvs)
        dec = step.decision
        self.counters[f'decision_{dec.strategy}'] += 1
        if step.local_result is not None:
            self._publish_local(step.local_result, msg.header, idx, frame.shape)
        if step.sends:
            out = conversions.update_to_msg(
                step.update, step.payload, msg.header, self.config.edge_id, step.seq, idx,
                step.codec, step.quality, step.dissimilarity, step.sparse_inference_requested,
                step.digest, self.pack_motion)
            if self.batch_signer is not None:
                self.batch_signer.sign(out)
            if step.key:
                self.get_logger().info(f'key batch seq {step.seq}: {step.key_reason}')
            self.server.sent(step.seq, step.digest, len(step.payload), time.monotonic())
            if not self.link.send(len(step.payload), lambda m=out: self.batch_pub.publish(m)):
                self.counters['injected_drops'] += 1  # lost on the emulated link
            if step.key:
                self.counters['key_batches'] += 1
                self.counters['key_bytes'] += len(step.payload)
            self.counters['batches_sent'] += 1
            self.counters['bytes_sent'] += len(step.payload)
            self.counters['blocks_sent'] += len(step.update.block_indices)
        elif step.local_result is None:
            self.counters['no_result_no_batch'] += 1
        self._last = dict(step.timings, total_ms=1e3 * (time.perf_counter() - t0),
                          decision=dec.strategy, k_edge=dec.k_edge, k_cloud=dec.k_cloud,
                          n_labs=dec.n_edge, n_cobs=dec.n_cloud,
                          ea_edge=round(dec.ea_edge, 4), ea_cloud=round(dec.ea_cloud, 4),
                          bandwidth_mbps=round(dec.bandwidth_bps * 8 / 1e6, 2),
                          link_latency_ms=round(
                              1e3 * self.pipeline.scheduler.bw.latency_s, 1),
                          hit_ratio=round(step.hit_ratio, 3),
                          frames_since_refresh=self.pipeline._since_refresh)
        if self.config.local_inference and getattr(self.pipeline, 'last_stats', None):
            self._last['mac_ratio'] = round(self.pipeline.last_stats.mac_ratio, 3)

    def _decode_h264(self, msg):
        frame, mvs = self._h264(msg)
        if mvs is not None:
            self.counters['codec_mv_frames'] += 1
        return frame, mvs

    def _publish_local(self, det, header, idx, shape):
        eid, task = self.config.edge_id, self.config.task
        if task == 'pose':
            self.kpt_pub.publish(conversions.keypoints_to_msg(det, header, eid, 'edge', idx))
        else:
            self.det_pub.publish(conversions.detections_to_msg(det, header, eid, 'edge', idx,
                                                               task == 'segment'))
            if task == 'segment':
                from fluxshard_kernels.yolo.processing import label_image
                self.mask_pub.publish(conversions.array_to_image(
                    label_image(det.masks, det.scores, shape[:2]), header))
        self.counters['results_local'] += 1

    def _publish_diagnostics(self):
        st = DiagnosticStatus(name=f'fluxshard/edge/{self.config.edge_id}',
                              hardware_id=self.config.edge_id)
        bad = sum(self.rejects.values())
        st.level = DiagnosticStatus.OK if not bad else DiagnosticStatus.WARN
        st.message = (f'{self.counters["batches_sent"]} batches, '
                      f'{self.counters["results_local"]} local results, {bad} rejected inputs')
        storm = self.resync.refused_recently(time.monotonic(), 10.0)
        if storm:
            st.level = DiagnosticStatus.WARN
            st.message += f'; resync storm: {storm} requests refused in the last 10 s'
        vals = dict(self.counters)
        vals.update({f'rejected.{k}': v for k, v in self.rejects.items()})
        vals.update({f'last.{k}': v for k, v in self._last.items()})
        vals['cloud_available'] = self.pipeline.cloud_available
        st.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(vals.items())]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.diag_pub.publish(arr)

    def destroy_node(self):
        if hasattr(self, '_worker'):
            self._stop.set()
            self.slot.close()
            self._worker.join(timeout=5.0)
            self.pipeline.close()
        if getattr(self, 'link', None) is not None:
            self.link.close()
        return super().destroy_node()


def main(args=None):
    run_node(EdgeNode, args, threads=3)


if __name__ == '__main__':
    main()
