"""FluxShard edge node (lifecycle): camera in; BlockBatch, local results and diagnostics out.
Glue only: the logic is ``runtime.py`` (link protocol) over ``pipeline.py`` (paper
Algorithm 1)."""

from concurrent.futures import ThreadPoolExecutor
import threading
import time

from fluxshard_msgs.msg import (BlockBatch, DetectionArray, KeypointArray, LabelMap,
                                ProxyDelta, ServerStatus)
from fluxshard_msgs_py import annotate, auth, conversions
from fluxshard_msgs_py.node import (camera_qos, diagnostic_status, DiagnosticsPublisher,
                                    FLEET_QOS, help_text, LATCHED_QOS, LINK_QOS, Param,
                                    LatencyWindow, latency_report, Params,
                                    ReasonLog, RecentCount, RESULT_QOS, run_node,
                                    WorkerLifecycle)
from fluxshard_msgs_py.results import ResultPublisher
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from fluxshard_edge import fleet
from fluxshard_edge.camera_watch import CameraWatch
from fluxshard_edge.link import BandwidthTrace, EmulatedLink
from fluxshard_edge.pipeline import EdgeConfig
from fluxshard_edge.runtime import EdgeRuntime, Frame
from fluxshard_edge.scheduler import PROFILES
from fluxshard_edge.slot import LatestSlot

PURPOSE = """fluxshard_edge edge_node: the robot side of FluxShard. Subscribes the camera,
extracts motion blocks against its local cache and the proxy of the server's, schedules
(edge or offload, paper Algorithm 1), publishes BlockBatch messages to the server and the
results it computes itself. A lifecycle node: with autostart (default) it configures (loads
the model) and activates (subscribes, starts the worker) by itself; with autostart:=false a
lifecycle manager drives it (ros2 lifecycle set <node> configure|activate|deactivate|cleanup)."""

TOPICS = [
    'in   image (sensor_msgs/Image; bgr8, rgb8, bgra8, rgba8, mono8, yuv422/uyvy, yuyv), or',
    '     image/compressed (CompressedImage jpeg/png, or h264 access units) with',
    '     camera.transport compressed|h264 (follows remaps of image, like image_transport)',
    'in   proxy_feedback (fluxshard_msgs/ProxyDelta: ACKs, resync requests) from the server',
    'out  block_batch (fluxshard_msgs/BlockBatch), proxy_delta (fluxshard_msgs/ProxyDelta)',
    'out  detections (fluxshard_msgs/DetectionArray; masks: sensor_msgs/Image mono16 labels for',
    '     segment) or keypoints (fluxshard_msgs/KeypointArray): results computed_by edge',
    'out  labels (fluxshard_msgs/LabelMap, latched, when the edge runs a model)',
    'out  annotated (sensor_msgs/CompressedImage jpeg: local results drawn on their frame, with',
    '     the block map as an option; annotated.enabled, throttled, only while subscribed)',
    'out  /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz on the wall clock)',
    'in   fleet.topic (fluxshard_msgs/ServerStatus) with fleet.mode auto: the servers to '
    'choose from',
]

#: parameter -> EdgeConfig field (the others are the node's)
FIELDS = {
    'edge_id': 'edge_id', 'motion.block_size': 'block_size', 'motion.tau': 'tau',
    'motion.enabled': 'motion', 'motion.independent_px': 'independent_px',
    'motion.mixed_px': 'mixed_px',
    'payload.codec': 'codec', 'payload.quality': 'quality', 'payload.crf': 'crf',
    'payload.max_crf': 'max_crf', 'payload.roi_qoffset': 'roi_qoffset',
    'payload.roi_large_qoffset': 'roi_large_qoffset',
    'payload.send_motion': 'send_motion', 'payload.target_retention': 'target_retention',
    'payload.probe_interval': 'probe_interval',
    'payload.skip_target': 'skip_target', 'payload.skip_max': 'skip_max',
    'key_interval': 'key_interval',
    'model.local_inference': 'local_inference', 'model.task': 'task',
    'model.path': 'model_path', 'model.device': 'device', 'model.conf': 'conf',
    'model.backend': 'backend',
    'scheduler.lambda': 'lam',
    'scheduler.deadline_ms': 'deadline_ms', 'link.bandwidth_mbps': 'bandwidth_mbps',
    'scheduler.edge_profile': 'edge_profile', 'scheduler.cloud_profile': 'cloud_profile',
    'scheduler.profile_file': 'profile_file', 'scheduler.fit_latency': 'fit_latency',
    'scheduler.task_allocation': 'task_allocation',
    'scheduler.accuracy_edge': 'accuracy_edge', 'scheduler.accuracy_cloud': 'accuracy_cloud',
    'refresh.interval': 'refresh_interval', 'scheduler.salience': 'use_salience',
    'scheduler.force_strategy': 'force_strategy', 'scheduler.overlap_local': 'overlap_local',
    'scheduler.bridge_target': 'bridge_target', 'scheduler.bridge_max': 'bridge_max',
}

PARAMS = [
    Param('autostart', True, 'Configure and activate at start-up (false: wait for a '
          'lifecycle manager)'),
    Param('edge_id', '', "Unique id of this edge ('' = the namespace, or edge0)"),
    Param('motion.block_size', 16, 'Block edge, pixels', choices=[8, 16, 32]),
    Param('motion.tau', 10.0, 'Miss threshold on the dissimilarity D (mean abs diff, 0-255); '
          '0 makes every block a miss', lo=0.0, hi=255.0, live=True),
    Param('motion.enabled', True, 'Block matching (false: zero MVs, pixel deltas)', live=True),
    Param('motion.independent_px', 0.0, 'Also recompute blocks moving >= this many px '
          'against their neighbourhood (static cameras with small movers; 0 = off)',
          lo=0.0, hi=1000.0, live=True),
    Param('motion.mixed_px', EdgeConfig.mixed_px, 'Local path: in a still scene (2/3 of the '
          'blocks within 1 px of zero motion), also recompute the blocks next to a '
          'motion edge of >= this many px: their features mix an object with the background '
          'it crosses, which no warp keeps (0 = off; the server decides this for its own '
          'batches, model.mixed_px)',
          lo=0.0, hi=1000.0, live=True),
    Param('payload.codec', 'h264', 'Payload codec: raw / png / jpeg code the carried blocks '
          'alone; h264 codes the whole offloaded frame against the proxy (inter coding: the '
          'proxy converges to the frame; switching to it, or a new CRF, starts with a key)',
          choices=['raw', 'png', 'jpeg', 'h264'], live=True),
    Param('payload.quality', 90, 'JPEG quality', lo=1, hi=100, live=True),
    Param('payload.crf', 23, 'x264 constant rate factor of h264 payloads (lower = closer to '
          'the frame, more bytes): the finest the edge uses', lo=0, hi=51, live=True),
    Param('payload.max_crf', 30, 'Coarsest CRF when the link is slow (as a quantiser offset '
          'on the stream, no new key): the CRF rises so that '
          'a frame\'s unit takes at most half of what the estimated link rate carries in a '
          'frame interval (<= payload.crf: fixed CRF)', lo=0, hi=51, live=True),
    Param('payload.roi_qoffset', 0.2, 'h264 payloads: code the objects of the last result '
          '(moved by the block motion, grown by a block) at the CRF and the rest of the frame '
          'this much coarser (x264 quantiser offset, 1.0 = +51 QP, 0.2 costs about CRF + 6; '
          '0 = off)', lo=0.0, hi=1.0, live=True),
    Param('payload.roi_large_qoffset', 0.0, 'h264 payloads: code the large objects of the '
          'last result (>= 2.25 % of the frame, COCO\'s "large") this much coarser than the '
          'small ones (a detector keeps large objects through coarser quantisation); at most '
          'payload.roi_qoffset', lo=0.0, hi=1.0, live=True),
    Param('payload.target_retention', 0.0, 'h264 payloads: the CRF floor from the results: '
          'every payload.probe_interval offloaded frames the robot runs onnxruntime on the '
          "true frame in the background; while the server's results keep this object-pooled "
          "AP@0.5 of the robot's, the payload is coded coarser (up to payload.max_crf), finer "
          'at once when they do not (0 = off: payload.crf unless the link needs coarser; '
          'docs/evaluation.md measures 0.97: 15-30 % fewer bytes, 0-3 points of retention)',
          lo=0.0, hi=1.0),
    Param('payload.probe_interval', 10, 'Offloaded frames between two quality probes (one '
          'dense pass on the robot each, in the background)', lo=1, hi=100000),
    Param('payload.send_motion', False, 'h264 payloads: send the block motion field (about '
          '2 KB a frame on a moving camera); false: the server block-matches its proxy states '
          'before and after the unit itself (fewer bytes, and a field that explains the proxy '
          'the server holds, so fewer blocks drift; other codecs always send it: their proxy '
          'needs it)', live=True),
    Param('payload.skip_target', 0.0, 'detect: frames the server does not need are not '
          "sent: a frame whose change since the proxy frame moves no result gets the proxy "
          "frame's result moved by the block motion field (computed_by motion), while such "
          'moved results, checked against the results of the frames sent, keep this object '
          'F1 at its distance in frames, and no change appears outside the objects (0 = off)',
          lo=0.0, hi=1.0, live=True),
    Param('payload.skip_max', 2, 'Most frames in a row not sent (payload.skip_target)',
          lo=0, hi=100, live=True),
    Param('payload.pack_motion', True, 'zlib-pack the motion field of each BlockBatch (false: '
          'plain mv_x / mv_y arrays, readable with ros2 topic echo)', live=True),
    Param('key_interval', 0, 'Key batch every N frames (0 = on demand)', lo=0, hi=100000,
          live=True),
    Param('model.local_inference', True, 'Run incremental YOLO11 on the edge'),
    Param('model.task', 'detect', 'Vision task (the server must run the same; checked '
          'through the link)', choices=['detect', 'segment', 'pose']),
    Param('model.path', '', 'YOLO11 ONNX model file ("" = YOLO11n for the task)'),
    Param('model.device', 'cpu', 'Where local inference runs: cpu, cuda (the first GPU, e.g. a '
          'Jetson; configure fails when there is none) or auto (cuda when torch sees a GPU)',
          choices=['cpu', 'cuda', 'auto']),
    Param('model.backend', 'auto', 'Local inference: incremental (the engine), onnxruntime '
          '(dense, the shipped ONNX file), or auto: per frame the one measured faster '
          '(diagnostics path.*), seeded from scheduler.profile_file',
          choices=['auto', 'incremental', 'onnxruntime']),
    Param('model.warm_up', True, 'Run the local model on blank frames at configure, before the '
          'first camera frame'),
    Param('model.conf', 0.25, 'Score threshold', lo=0.0, hi=1.0, live=True),
    Param('scheduler.lambda', 10.0, 'EA time decay lambda, 1/s', lo=1e-6, hi=1e6, live=True),
    Param('scheduler.deadline_ms', 100.0, 'Frame deadline for opportunistic COB upload, ms',
          lo=1.0, hi=1e5, live=True),
    Param('link.bandwidth_mbps', 56.0, 'Uplink bandwidth estimate, Mbit/s (setting it '
          'resets the estimate; ACK timings refine it)', lo=0.01, hi=1e5, live=True),
    Param('scheduler.edge_profile', 'xavier_nx', 'Seed of the edge latency model',
          choices=sorted(PROFILES)),
    Param('scheduler.cloud_profile', 'rtx3080', 'Seed of the cloud latency model',
          choices=sorted(PROFILES)),
    Param('scheduler.profile_file', '', 'Measured device profile (JSON from `python -m '
          'fluxshard_kernels.profile --out F`) seeding both latency models instead of the '
          'named profiles ("" = the named ones)'),
    Param('scheduler.fit_latency', True, 'Refit the latency models from measured times '
          '(edge: local inference, and the auto backend\'s path costs; cloud: server-reported '
          'compute); false keeps the profiles, e.g. to emulate devices', live=True),
    Param('scheduler.task_allocation', True, "Adaptive task allocation (k*); false = every "
          "missed block (the paper's No-ATA ablation)", live=True),
    Param('scheduler.accuracy_edge', 1.0, 'Per-block accuracy A_e', lo=0.0, hi=1.0, live=True),
    Param('scheduler.accuracy_cloud', 1.0, 'Per-block accuracy A_c', lo=0.0, hi=1.0,
          live=True),
    Param('refresh.interval', 10, 'Frames between background dense refreshes', lo=1,
          hi=100000, live=True),
    Param('scheduler.salience', True, 'Weight misses by projected results', live=True),
    Param('scheduler.force_strategy', '', "'' = EA decides; 'edge' or 'cloud' to pin; "
          "'offline' = every frame on the robot, nothing sent (no server needed)",
          choices=['', 'edge', 'cloud', 'offline'], live=True),
    Param('scheduler.overlap_local', 'auto', 'Local inference on its own thread beside the '
          'critical path (paper 4.2): a frame that arrives while the device computes an '
          'earlier one is offloaded when the cloud beats waiting for the device, else it waits '
          '(newest wins; diagnostics deferred_device_busy). auto: on where model.device is '
          'CUDA (a GPU beside the CPU front end); a CPU robot would share its cores. '
          '(always/never, not on/off: YAML reads those as booleans)',
          choices=['auto', 'always', 'never']),
    Param('scheduler.bridge_target', 0.9, 'With overlap_local: a frame that arrives while the '
          "device computes an earlier one gets that frame's result moved by the block motion "
          'field between them, published right after it (computed_by motion; diagnostics '
          'frames_bridged), while such moved results, checked against the results the device '
          'computes, keep this object F1 (IoU 0.7) at their distance in frames and no change '
          'appears outside the objects; else the frame is offloaded or waits as before (0 = '
          'off)', lo=0.0, hi=1.0, live=True),
    Param('scheduler.bridge_max', 2, 'Most frames in a row bridged (scheduler.bridge_target)',
          lo=0, hi=100, live=True),
    Param('link.emulate_mbps', 0.0, 'Emulate an uplink of this many Mbit/s in the transport '
          '(0 = off)', lo=0.0, hi=1e5),
    Param('link.drop_rate', 0.0, 'Drop this fraction of outgoing batches (loss injection for '
          'tests and evaluation; 0 = off)', lo=0.0, hi=1.0),
    Param('link.delay_ms', 0.0, 'Emulated one-way delay, ms, both directions: outgoing '
          'batches, and feedback and results coming back (0 = off)', lo=0.0, hi=10000.0),
    Param('link.trace', '', 'Uplink capacity trace replacing link.emulate_mbps over time: '
          'seconds,mbps per line, or mahimahi packet timestamps (*.up); a batch leaves when '
          'the trace has carried its bytes'),
    Param('link.ack_timeout_ms', 1000.0, 'No ACK for this long: the server counts as '
          'unavailable, frames are computed locally and a probe is sent every timeout',
          lo=10.0, hi=1e6),
    Param('camera.reliability', 'auto', "QoS reliability of the camera subscription: auto "
          "matches the camera's publisher (best effort for the common sensor-data QoS), or "
          'reliable / best_effort', choices=['auto', 'reliable', 'best_effort']),
    Param('camera.transport', 'raw', "raw: sensor_msgs/Image on 'image'; compressed: jpeg/png "
          "CompressedImage on '<image>/compressed'; h264: one H.264 access unit per "
          "CompressedImage (format 'h264') on '<image>/compressed', whose codec motion "
          'vectors replace block matching', choices=['raw', 'compressed', 'h264']),
    Param('camera.depth', 5, "Camera QoS history depth: frames DDS holds while the edge's "
          'callback is late (a busy machine); the edge\'s own latest-wins slot then counts every '
          'replaced frame (dropped_superseded). 1 = latest frame wins inside DDS, where '
          'replaced frames are not seen, so not counted; h264 uses at least 30',
          lo=1, hi=100),
    Param('security.mode', 'mac', "mac: sign every BlockBatch / ProxyDelta with this edge's "
          'key and accept server feedback only with it; none: no authentication (lab only)',
          choices=list(auth.MODES)),
    Param('security.key_file', '', 'Key file holding a "<edge_id> <hex secret>" line for this '
          'edge (mode 0600; python -m fluxshard_msgs_py.auth generate / extract)'),
    Param('security.max_age_s', 30.0, "Reject feedback whose nonce is further than this from "
          "the edge's clock, s (replays after a restart; 0 = off)", lo=0.0, hi=1e6),
    Param('resync.max_rate_hz', 0.5, 'Key batches per second the edge sends in answer to '
          'resync requests (sustained); requests beyond it are refused and counted '
          '(resync_limited), so resync cannot be used as a bandwidth amplifier',
          lo=0.001, hi=1000.0),
    Param('fleet.mode', 'static', "static: batches go to the server(s) configured for this "
          "robot (fleet.server_id, or '' = any); auto: choose among the servers announcing "
          'on fleet.topic that accept this robot (least loaded, with hysteresis) and move when '
          'the server disappears, stops acknowledging or misses fleet.max_latency_ms',
          choices=['static', 'auto']),
    Param('fleet.server_id', '', "static mode: address batches to this server id ('' = any "
          'server configured with this edge)'),
    Param('fleet.topic', '/fluxshard/servers', 'Topic of the servers\' announcements'),
    Param('fleet.max_latency_ms', 0.0, 'auto mode: leave a server whose median offload '
          '(batch sent -> inference done, last 5) exceeds this, ms (0 = off)', lo=0.0,
          hi=1e6),
    Param('fleet.stale_s', 3.0, 'auto mode: a server not announced for this long is gone',
          lo=0.5, hi=3600.0),
    Param('resync.burst', 2, 'Key batches answered back to back above resync.max_rate_hz',
          lo=1, hi=1000),
]
PARAMS += annotate.PARAMS

#: live parameters that are the node's, not EdgeConfig's
_NODE_LIVE = {'payload.pack_motion'}


#: Camera queue depth with camera.transport h264 (at 30 Hz, a one-second stall).
H264_MIN_DEPTH = 30


class EdgeNode(WorkerLifecycle, LifecycleNode):
    """Subscribes ``image``; publishes ``block_batch``, local results and ``/diagnostics``."""

    def __init__(self, **kwargs):
        super().__init__('fluxshard_edge', **kwargs)
        self.params = p = Params(self, PARAMS)
        ns = self.get_namespace().strip('/').replace('/', '_')
        values = {FIELDS[k]: v for k, v in p.values.items() if k in FIELDS}
        values['edge_id'] = values['edge_id'] or ns or 'edge0'
        self.config = EdgeConfig(**values)  # validates; ValueError -> "cannot start"
        self.errors = ReasonLog(self.get_logger())
        self.runtime = None
        self._subs, self._pubs = [], []
        self._worker = None
        self._stop = threading.Event()
        self.slot = LatestSlot()
        self.failure = ''
        self._recent_bad = RecentCount(10.0)
        self.input_latency = LatencyWindow()  # image stamp -> the worker takes the frame
        self._taken = None  # index of the last frame taken
        self.get_logger().info(f'edge {self.config.edge_id!r} created (unconfigured)')

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p, c = self.params, self.config
        try:
            self._configure_security()
            link = EmulatedLink(p['link.emulate_mbps'],
                                BandwidthTrace.load(p['link.trace']) if p['link.trace']
                                else None, p['link.delay_ms'] / 1e3, p['link.drop_rate'])
            self.runtime = EdgeRuntime(self.config, p['link.ack_timeout_ms'] / 1e3,
                                       p['resync.max_rate_hz'], p['resync.burst'])
        except (ValueError, FileNotFoundError, OSError) as e:
            self.failure = str(e)
            self.get_logger().error(f'configure failed: {e}')
            return TransitionCallbackReturn.FAILURE
        self.link = link
        self.fleet_mode = p['fleet.mode']
        self.chooser = None
        if self.fleet_mode == 'auto':
            self.chooser = fleet.Chooser(c.edge_id, c.task, stale_s=p['fleet.stale_s'])
            self.runtime.no_server = True  # until a server accepts this robot
        else:
            self.runtime.server_id = p['fleet.server_id']
        if self.runtime.pipeline.runner is not None and p['model.warm_up']:
            took = self.runtime.pipeline.warm_up()
            self.get_logger().info(f'local models warmed up in {took:.1f} s')
        self.counters, self.rejects = self.runtime.counters, self.runtime.rejects
        self.batch_pub = self._pub(BlockBatch, 'block_batch', LINK_QOS)
        self.delta_pub = self._pub(ProxyDelta, 'proxy_delta', LINK_QOS)
        self.results = ResultPublisher(self, '', c.task, c.edge_id, 'edge', self.counters,
                                       annotated=annotate.from_params(self, p, '', 'edge'))
        self._publish_lock = threading.Lock()  # the critical and the local thread publish
        model = self.runtime.pipeline.model
        if model is not None:  # the labels come from the side that has the model on board
            self.results.names = model.names
            self._pub(LabelMap, 'labels', LATCHED_QOS).publish(
                conversions.label_map_msg(model.names, LabelMap().header))
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)
        self.get_logger().info(
            f'edge {c.edge_id!r} configured: block {c.block_size}px, tau {c.tau}, codec '
            f'{c.codec}, local inference {c.local_inference} ({c.task})')
        return TransitionCallbackReturn.SUCCESS

    def _configure_security(self):
        p = self.params
        self.batch_signer = self.delta_signer = self.feedback_check = None
        if p['security.mode'] != 'mac':
            self.get_logger().warning('security.mode none: link messages are not authenticated; '
                                      'any participant on this DDS domain can forge feedback '
                                      '(lab use only)')
            return
        keys = auth.load_keys(p['security.key_file'])
        if self.config.edge_id not in keys:
            raise ValueError(f'security.key_file {p["security.key_file"]} has no key for '
                             f'edge_id {self.config.edge_id!r}')
        key = keys[self.config.edge_id]
        self.batch_signer = auth.Signer(key, 'block_batch')
        self.delta_signer = auth.Signer(key, 'proxy_delta')
        # one verifier per server: each server's nonces increase on their own
        self.feedback_check = auth.PerSender(
            lambda: auth.Verifier(key, 'proxy_feedback', p['security.max_age_s']))

    def _pub(self, typ, topic, qos):
        pub = self.create_publisher(typ, topic, qos)
        self._pubs.append(pub)
        return pub

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        fb = MutuallyExclusiveCallbackGroup()
        self.transport = p['camera.transport']
        base = self.resolve_topic_name('image')
        if self.transport == 'raw':
            typ, topic = Image, base
        else:
            typ, topic = CompressedImage, base.rstrip('/') + '/compressed'
        self.camera_topic = topic
        self.camera_watch = CameraWatch()
        self._h264 = conversions.H264Input()
        self._subscribe_camera(typ, self._camera_reliability(topic))
        self._subs.append(self.create_subscription(
            ProxyDelta, 'proxy_feedback', lambda m: self._back(self._on_feedback, m), LINK_QOS,
            callback_group=fb))
        if self.chooser is not None:
            self._subs.append(self.create_subscription(
                ServerStatus, p['fleet.topic'], self._on_announcement, FLEET_QOS,
                callback_group=fb))
            self._fleet_timer = self.create_timer(
                0.1, self._fleet_tick, callback_group=fb,
                clock=Clock(clock_type=ClockType.STEADY_TIME))
        for t, name in ((DetectionArray, 'detections'), (KeypointArray, 'keypoints')):
            self._subs.append(self.create_subscription(
                t, name, lambda m, n=name: self._back(self._on_server_result, n, m),
                RESULT_QOS, callback_group=fb))
        self._stop.clear()
        self.slot = LatestSlot()
        self._local = None  # the future of the overlapped local job
        self._local_pool = ThreadPoolExecutor(1, thread_name_prefix='edge-local') \
            if self.runtime.pipeline.overlap else None
        self._worker = threading.Thread(target=self._run, name='edge-critical', daemon=True)
        self._worker.start()
        self.get_logger().info(f'edge {self.config.edge_id!r} active: listening on {topic} '
                               f'({self.transport}, {self._reliability}), batches on '
                               f'{self.resolve_topic_name("block_batch")}')
        return super().on_activate(state)

    def _camera_reliability(self, topic) -> str:
        want = self.params['camera.reliability']
        if want != 'auto':
            return want
        infos = self.get_publishers_info_by_topic(topic)
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                         for i in infos):
            return 'best_effort'
        return 'reliable'

    def _subscribe_camera(self, typ, reliability):
        self._reliability = reliability
        self._camera_type = typ
        depth = self.params['camera.depth']
        if self.transport == 'h264':
            # every access unit references the one before: a unit replaced inside DDS (the
            # callback ran late on a loaded machine) would break the stream until the next key
            # frame, so H.264 gets a queue deep enough to ride out a stall
            depth = max(depth, H264_MIN_DEPTH)
        self._camera_sub = self.create_subscription(
            typ, self.camera_topic, self._on_image, camera_qos(reliability, depth),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_bad_qos))
        self._subs.append(self._camera_sub)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if getattr(self, '_fleet_timer', None) is not None:
            self.destroy_timer(self._fleet_timer)
            self._fleet_timer = None
        self._stop_worker()
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        self.get_logger().info(f'edge {self.config.edge_id!r} inactive')
        return super().on_deactivate(state)

    def _stop_worker(self):
        if getattr(self, '_worker', None) is None:  # never started (or construction failed)
            return
        self._stop.set()
        pending = self.slot.take(timeout=0)
        self.slot.close()
        self._worker.join(timeout=10.0)
        self._worker = None
        if self._local_pool is not None:  # the frame on the device finishes and publishes
            self._local_pool.shutdown(wait=True)
            self._local_pool = None
        if pending is not None:  # accounted: never silently lost
            self.counters['dropped_deactivated'] += 1

    def _release(self):
        if getattr(self, 'runtime', None) is not None:
            self.runtime.close()
            self.runtime = None
        if getattr(self, 'link', None) is not None:
            self.link.close()
            self.link = None
        if getattr(self, 'diagnostics', None) is not None:
            self.diagnostics.destroy()
            self.diagnostics = None
        if getattr(self, 'results', None) is not None:
            self.results.destroy()
            self.results = None
        for pub in getattr(self, '_pubs', []):
            self.destroy_publisher(pub)
        self._pubs = []

    # -- callbacks: O(1) work ------------------------------------------------------------------
    def _on_image(self, msg):
        self.counters['frames_in'] += 1
        item = (self.counters['frames_in'], msg)
        if self.transport == 'h264':
            # every access unit must pass the decoder (P-frames reference the previous one), so
            # H.264 is decoded here, before the latest-wins slot can supersede a unit
            try:
                item = self._decode(*item)
            except conversions.InputError as e:
                self.rejects[e.reason] += 1
                self.errors.error(e.reason, f'rejected image ({e.reason}): {e}')
                return
            except Exception as e:  # noqa: B902 - a bad unit must never kill the edge
                self.rejects['internal_error'] += 1
                self.errors.error('internal_error', f'H.264 unit failed: {type(e).__name__}: {e}')
                return
        if self.slot.put(item) is not None:
            self.counters['dropped_superseded'] += 1

    def _on_bad_qos(self, event):
        self.counters['incompatible_qos'] += 1
        if self.params['camera.reliability'] == 'auto' and self._reliability == 'reliable':
            # a best-effort camera appeared after activation: follow it
            self.get_logger().warning(f'camera on {self.camera_topic} publishes best effort: '
                                      'subscribing best effort')
            self.destroy_subscription(self._camera_sub)
            self._subs.remove(self._camera_sub)
            self._subscribe_camera(self._camera_type, 'best_effort')
            return
        self.get_logger().error(
            f'camera publisher on {self.camera_topic} has incompatible QoS (policy id '
            f'{event.last_policy_kind}): no frames will arrive. Set parameter '
            'camera.reliability to auto or best_effort for a best-effort camera.')

    def _on_server_result(self, topic, msg):
        if msg.computed_by != 'server':
            return
        want = 'keypoints' if self.config.task == 'pose' else 'detections'
        if topic == 'detections' and len(msg.scores) and \
                bool(len(msg.mask_labels)) != (self.config.task == 'segment'):
            topic = 'segment results' if len(msg.mask_labels) else 'detect results'
        if topic != want:
            self.rejects['task_mismatch'] += 1
            self.errors.error('task_mismatch', f'the server publishes {topic} for this robot, '
                              f'but model.task is {self.config.task!r} here: edge and server '
                              'must run the same model.task')
            return
        if topic == 'detections' and self.runtime is not None:
            from fluxshard_kernels.yolo.processing import Detections
            boxes, scores, cls = conversions.boxes_from_msg(msg)
            for frame, det in self.runtime.on_server_result(Detections(boxes, scores, cls),
                                                            int(msg.frame_index)):
                self._publish_local(det, frame, by='motion')  # a frame not sent, waiting

    def _back(self, fn, *args):
        """A message from the server: handled after the emulated one-way delay (the delay
        line's thread runs such messages one at a time, in order)."""
        link = self.link
        if link is not None and link.delay_s > 0:
            link.deliver(lambda: fn(*args))
        else:
            fn(*args)

    def _on_feedback(self, msg: ProxyDelta):
        rt = self.runtime
        if rt is None:
            return
        self.counters['feedback_in'] += 1
        if msg.edge_id != self.config.edge_id:
            self.counters['feedback_other_edge'] += 1
            return
        if rt.server_id and msg.server_id != rt.server_id:
            # a server this robot left (or never chose): its word no longer counts
            self.counters['feedback_other_server'] += 1
            return
        if self.feedback_check is not None:
            bad = self.feedback_check.check(msg.server_id, msg)
            if bad:  # forged or replayed: never acted upon
                counter, why = bad
                self.rejects[f'feedback.{counter}'] += 1
                self.errors.error(f'feedback.{counter}',
                                  f'dropped proxy_feedback kind {msg.kind} ({counter}): {why}')
                return
        self.counters['feedback_ok'] += 1
        now = time.monotonic()
        if msg.kind == ProxyDelta.KIND_RESYNC_REQUEST:
            what = rt.on_resync_request(int(msg.seq), msg.reason, now)
            if what == 'limited':
                self.errors.error('resync_limited', 'resync request refused: more than '
                                  'resync.max_rate_hz key batches requested (resync storm?)')
            elif what == 'resync':
                self.get_logger().warning(f'server asked for resync after seq {msg.seq}: '
                                          f'{msg.reason}')
                # bounded resync: unless a newer frame is waiting, send the last one again
                last = rt.last_frame
                if last is not None and self.slot.put_if_empty(last):
                    self.counters['resync_resends'] += 1
        elif msg.kind == ProxyDelta.KIND_ACK:
            what = rt.on_ack(int(msg.seq), bytes(msg.state_digest),
                             float(msg.server_receive_ms) / 1e3, now)
            if what == 'mismatch':
                self.get_logger().error(f'server proxy digest differs at seq {msg.seq}; '
                                        'sending a key batch')
        elif msg.kind == ProxyDelta.KIND_INFERENCE_DONE:
            rt.on_inference_done(int(msg.seq), int(msg.server_blocks),
                                 float(msg.server_compute_ms) / 1e3)

    # -- critical path ---------------------------------------------------------------------------
    def _run(self):
        while not self._stop.is_set():
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            changes = self.params.take_changes()
            if changes:
                self._wait_local()  # the device's frame runs on the old configuration
                self._apply(changes)
            try:
                frame = item if isinstance(item, Frame) else self._decode(*item)
                if frame.index != self._taken:  # the first time (a deferred frame comes back)
                    self._taken = frame.index
                    self.input_latency.add_stamp(self.get_clock(), frame.header.stamp)
                self._process(frame)
            except conversions.InputError as e:
                self.rejects[e.reason] += 1
                self.errors.error(e.reason, f'rejected image ({e.reason}): {e}')
            except Exception as e:  # noqa: B902 - a bad frame must never kill the edge
                if not self.context.ok():
                    break  # shutting down (Ctrl-C): nothing to publish to any more
                self.rejects['internal_error'] += 1
                self.errors.error('internal_error', f'frame failed: {type(e).__name__}: {e}')

    def _apply(self, changes):
        cfg = {FIELDS[k]: v for k, v in changes.items() if k in FIELDS}
        if cfg:
            self.runtime.reconfigure(**cfg)
            self.config = self.runtime.config

    def _decode(self, idx, msg) -> Frame:
        if self.transport == 'raw':
            return Frame(idx, msg.header, conversions.image_to_array(msg))
        if self.transport == 'compressed':
            return Frame(idx, msg.header, conversions.compressed_to_array(msg))
        image, mvs = self._h264(msg)
        if mvs is not None:
            self.counters['codec_mv_frames'] += 1
        return Frame(idx, msg.header, image, mvs)

    def _process(self, frame: Frame):
        out = self.runtime.process(frame)
        step = out.step
        if step.deferred:  # waiting for the device beats offloading: then the newest frame
            self._wait_local()
            if not self.slot.put_if_empty(frame):
                self.counters['dropped_deferred_superseded'] += 1  # a newer one is waiting
            return
        self._link_log(out.link)
        for old, det in out.recovered:
            self._publish_local(det, old)
        if step.local_job is not None:  # the device computes it while the next frame comes
            self._local = self._local_pool.submit(self._run_local, frame, step)
        else:
            self._publish_local(step.local_result, frame, step)
        if not step.sends or self.runtime.no_server:  # no server: counted batches_no_server
            return
        msg = conversions.update_to_msg(
            step.update, step.payload, frame.header, self.config.edge_id, step.seq,
            frame.index, step.codec, step.quality, step.dissimilarity,
            step.sparse_inference_requested, step.digest, self.params['payload.pack_motion'])
        msg.server_id = self.runtime.server_id
        if self.batch_signer is not None:
            self.batch_signer.sign(msg)
        if step.key:
            self.get_logger().info(f'key batch seq {step.seq}: {step.key_reason}')
        if not self.link.send(len(step.payload), lambda m=msg: self.batch_pub.publish(m)):
            self.counters['injected_drops'] += 1  # lost on the emulated link

    def _publish_local(self, det, frame: Frame, step=None, by: str = ''):
        if step is not None and (step.skipped or step.bridged):
            by = 'motion'  # the proxy's or the device's frame's result moved by the field
        with self._publish_lock:
            if det is not None and self.results.publish(
                    det, frame.header, frame.index, frame.image.shape, frame.image,
                    None if step is None else step.block_map, self.config.block_size, by):
                self.counters['results_local'] += 1
                if by == 'motion':
                    self.counters['results_motion'] += 1

    def _run_local(self, frame: Frame, step):
        failed = False
        try:
            self.runtime.run_local(step)
            self._publish_local(step.local_result, frame, step)
        except Exception as e:  # noqa: B902 - a bad frame must never kill the edge
            failed = True
            self.rejects['internal_error'] += 1
            self.errors.error('internal_error', f'local inference failed: '
                              f'{type(e).__name__}: {e}')
        # after its own result: the frames bridged onto it are newer
        for old, det in self.runtime.bridge_done(step, failed):
            self._publish_local(det, old, by='motion')

    def _wait_local(self):
        if self._local is not None:
            self._local.result()

    # -- fleet (auto mode): which server -------------------------------------------------------
    def _on_announcement(self, msg: ServerStatus):
        ann, why = fleet.parse(msg, time.monotonic())
        if ann is None:
            self.rejects['bad_announcement'] += 1
            self.errors.error('bad_announcement', f'ignored a server announcement on '
                              f'{self.params["fleet.topic"]}: {why}', level='warn')
            return
        if self.chooser is not None and not self.chooser.observe(ann):
            self.counters['stale_announcement'] += 1  # older than the one held: ignored

    def _fleet_tick(self):
        rt, ch = self.runtime, self.chooser
        if rt is None or ch is None:
            return
        now, cur, reason = time.monotonic(), rt.server_id, ''
        bound = self.params['fleet.max_latency_ms']
        if cur and rt.server.late(now):
            reason = (f'server {cur} stopped acknowledging (no ACK for '
                      f'{self.params["link.ack_timeout_ms"]:.0f} ms)')
        elif cur and bound:
            lat = rt.offload_latency_s()
            if lat is not None and 1e3 * lat > bound:
                reason = (f'server {cur} misses fleet.max_latency_ms: median offload '
                          f'{1e3 * lat:.0f} ms > {bound:g} ms')
        if reason:
            ch.ban(cur, now)
        sid, why = ch.choose(now)
        if sid != cur or rt.no_server != (not sid):
            self._move(sid, reason or why)

    def _move(self, sid: str, why: str):
        rt = self.runtime
        frame = rt.move_to(sid, why)
        rt.no_server = not sid
        if sid:
            self.get_logger().info(f'edge {self.config.edge_id!r} served by {sid}: {why}')
        else:
            self.get_logger().warning(f'edge {self.config.edge_id!r}: no server accepts this '
                                      f'robot ({why or "none announced"}): computing locally')
        if frame is None:
            return
        if sid and self.slot.put_if_empty(frame):
            self.counters['reoffered'] += 1  # the new server serves the old one's last frame
        else:
            self.counters['lost_offloaded'] += 1

    def _link_log(self, link):
        topic = self.resolve_topic_name('block_batch')
        if link == 'lost':
            self.get_logger().warning(
                f'no server answers on {topic} (no ACK for '
                f'{self.params["link.ack_timeout_ms"]:.0f} ms): computing locally and '
                f'probing. Is a server running with {self.get_namespace()!r} in its edges '
                "parameter, on this ROS_DOMAIN_ID, with this edge's key?")
        elif link == 'probe':
            self.errors.error('probe', f'still no server on {topic}; probing (computing '
                              'locally meanwhile)', level='warn')
        elif link == 'back':
            self.get_logger().info(f'server answers again on {topic}: offloading resumes')

    def _diagnostics(self):
        c = self.config
        rt = self.runtime
        counters = rt.counters if rt else {}
        rejects = rt.rejects if rt else {}
        total_bad = sum(rejects.values())
        recent = self._recent_bad.update(total_bad)
        level = DiagnosticStatus.WARN if recent else DiagnosticStatus.OK
        msg = (f'{counters.get("batches_sent", 0)} batches, '
               f'{counters.get("results_local", 0)} local results, {recent} rejected inputs '
               f'in the last 10 s ({total_bad} since start)')
        if rejects.get('task_mismatch'):
            level, msg = DiagnosticStatus.ERROR, msg + '; edge and server model.task differ'
        vals = {}
        if rt is not None:
            storm = rt.resync.refused_recently(time.monotonic(), 10.0)
            if storm:
                level = max(level, DiagnosticStatus.WARN)
                msg += f'; resync storm: {storm} requests refused in the last 10 s'
            if not rt.server.available:
                level = max(level, DiagnosticStatus.WARN)
                msg += '; no server: computing locally'
            watch = getattr(self, 'camera_watch', None)
            if watch is not None and self._subs:  # active: the camera should arrive
                cams = self.count_publishers(self.camera_topic)
                told = watch.update(time.monotonic(), cams, counters.get('frames_in', 0))
                if told:
                    self.errors.error('camera_silent', told, level='warn')
                if watch.silent_for >= watch.silent_s:
                    level = max(level, DiagnosticStatus.WARN)
                    msg += f'; camera silent for {watch.silent_for:.0f} s with {cams} publisher(s)'
                vals['camera_publishers'] = cams
            servers = self.count_publishers('proxy_feedback')
            if self.chooser is not None and rt.no_server:
                level = max(level, DiagnosticStatus.WARN)
                msg += '; no server accepts this robot (fleet.mode auto): computing locally'
            if servers > 1 and not rt.server_id:
                level = max(level, DiagnosticStatus.WARN)
                msg += f'; {servers} servers answer this robot (serve it from one)'
        vals.update(counters)
        vals.update({f'rejected.{k}': v for k, v in rejects.items()})
        results = getattr(self, 'results', None)
        if results is not None:  # stamp -> result on the robot's topic; stamp -> frame taken
            lat, words, late = latency_report(results.seen_latency, self.input_latency,
                                              self.params['scheduler.deadline_ms'])
            vals.update(lat)
            msg += f'; {words}' if words else ''
            if late:  # a navigation stack downstream should know
                level = max(level, DiagnosticStatus.WARN)
        if rt is not None:
            vals.update({f'last.{k}': v for k, v in rt.last.items()})
            vals['cloud_available'] = rt.server.available
            vals['server_id'] = rt.server_id
        return [diagnostic_status(f'fluxshard/edge/{c.edge_id}', c.edge_id, level, msg, vals)]


def main(args=None):
    run_node(EdgeNode, args, threads=3,
             usage=help_text('fluxshard_edge edge_node', PURPOSE, PARAMS, TOPICS))


if __name__ == '__main__':
    main()
