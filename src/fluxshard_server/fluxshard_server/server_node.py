"""FluxShard server node (lifecycle): BlockBatch in, per-edge proxy states, results out. Glue
only: the logic is ``runtime.py`` (sessions, admission, jobs, refresh policy)."""

import math
import os
import socket
import threading
import time

from diagnostic_msgs.msg import DiagnosticStatus
from fluxshard_msgs.msg import BlockBatch, LabelMap, ProxyDelta, ServerStatus
from fluxshard_msgs_py import annotate, auth, conversions
from fluxshard_msgs_py.node import (diagnostic_status, DiagnosticsPublisher, help_text,
                                    FLEET_PUB_QOS, LATCHED_QOS, LINK_QOS, Param, Params,
                                    ReasonLog,
                                    RecentCount, RESULT_QOS, run_node, WorkerLifecycle)
from fluxshard_msgs_py.results import ResultPublisher
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image

from fluxshard_server.admission import Budget
from fluxshard_kernels.profile import resolve_device
from fluxshard_server.inference import (BACKENDS, DRIFT_SCOPE, DRIFT_SCOPES, EdgeModel, load_model,
                                        MIXED_PX, RECOMPUTE_TAU)
from fluxshard_server.runtime import ServerRuntime

PURPOSE = """fluxshard_server server_node: the GPU-host side of FluxShard. Serves the robots
named in `edges`: applies each robot's BlockBatch messages to its proxy of the robot's camera
(sequence, digest and authentication checks), runs incremental YOLO11 on the changed blocks
over motion-warped caches, and publishes the results on the robot's topics. A lifecycle node:
with autostart (default) it configures (loads the model) and activates by itself; with
autostart:=false a lifecycle manager drives it."""

TOPICS = [
    'in   <edge ns>/block_batch (fluxshard_msgs/BlockBatch), <edge ns>/proxy_delta',
    'out  <edge ns>/proxy_feedback (fluxshard_msgs/ProxyDelta: ACK, resync, inference done)',
    'out  <edge ns>/detections (fluxshard_msgs/DetectionArray; + masks for segment; + '
    'detections_vision where vision_msgs exists) or <edge ns>/keypoints, computed_by server',
    'out  <edge ns>/labels (latched, only when the robot publishes none itself)',
    'out  <edge ns>/proxy_image (sensor_msgs/Image, with publish_proxy_image)',
    'out  <edge ns>/annotated (sensor_msgs/CompressedImage jpeg: results drawn on the image the '
    'server computed them from; annotated.enabled, only while subscribed)',
    'out  /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz on the wall clock)',
    'out  fleet.topic (fluxshard_msgs/ServerStatus, latched, 1 Hz: who it is, what it runs, '
    'its load, whether it accepts more robots)',
]

PARAMS = [
    Param('autostart', True, 'Configure and activate at start-up (false: wait for a '
          'lifecycle manager)'),
    Param('edges', [''], "Namespaces of the served edges (topics <ns>/block_batch, ...); '' = "
          "this node's namespace. In a fleet, every robot it may serve (it needs their keys); "
          'each robot picks one server (edge fleet.mode auto) and addresses it'),
    Param('server_id', '', "Id of this server in the fleet's announcements ('' = host name "
          'and process id)'),
    Param('fleet.announce', True, 'Publish a ServerStatus on fleet.topic at 1 Hz (latched) '
          'for robots choosing a server'),
    Param('fleet.topic', '/fluxshard/servers', 'Topic of the fleet announcements'),
    Param('fleet.max_robots', 0, 'Announce accepting=false once this many robots are served '
          'here (0 = no limit); robots already served stay', lo=0, hi=100000, live=True),
    Param('model.task', 'detect', 'Vision task (every served edge must run the same)',
          choices=['detect', 'segment', 'pose']),
    Param('model.backend', 'auto', 'auto (per frame the faster of incremental and onnxruntime '
          'dense, by measured cost: never slower than dense), incremental (sparse YOLO11 over '
          'MV-warped caches), dense (torch), onnxruntime (dense) or none',
          choices=list(BACKENDS)),
    Param('model.path', '', 'Model file (ONNX or Ultralytics .pt; "" = YOLO11n for the task '
          'from the data folder)'),
    Param('model.profile_file', '', 'auto backend: measured device profile (JSON of `python -m '
          'fluxshard_kernels.profile`) whose server role seeds the two paths\' costs ("" = '
          'measure both on the first frames)'),
    Param('model.warm_up', True, 'Run every inference path on blank frames at configure, '
          'before the first camera frame'),
    Param('model.conf', 0.25, 'Score threshold', lo=0.0, hi=1.0, live=True),
    Param('model.iou', 0.45, 'NMS IoU threshold', lo=0.0, hi=1.0, live=True),
    Param('model.threads', 0, 'CPU threads for inference (0 = auto)', lo=0, hi=256),
    Param('model.device', 'cpu', 'Where inference runs: cpu, cuda (the first GPU; configure '
          'fails when there is none) or auto (cuda when torch sees a GPU)',
          choices=['cpu', 'cuda', 'auto']),
    Param('publish_proxy_image', False, 'Publish each edge proxy image on <ns>/proxy_image',
          live=True),
    Param('refresh.interval', 10, 'Batches between background dense refreshes of a server '
          'cache', lo=1, hi=100000, live=True),
    Param('model.recompute_tau', RECOMPUTE_TAU, 'incremental backend: also recompute every '
          'block whose proxy pixels differ from the image its cached features describe (moved '
          'by the batch MVs) by at least this mean absolute error (0 = only the blocks a batch '
          'names); the server\'s own feature-reuse decision', lo=0.0, hi=255.0, live=True),
    Param('model.drift_scope', DRIFT_SCOPE, 'incremental backend: where that drift test looks. '
          'objects: the blocks of the last step\'s candidate objects (anchors scoring >= 0.02), '
          'moved by the batch MVs and grown by a block; elsewhere drift waits for the '
          'background refresh (refresh.interval). frame: every block', choices=list(DRIFT_SCOPES),
          live=True),
    Param('model.mixed_px', MIXED_PX, 'incremental backend: in a still scene (2/3 of '
          'the blocks within 1 px of zero motion in the batch field), also recompute '
          'the blocks next to a motion edge of >= this many px: their features mix a mover '
          'with the background it crosses, which no warp keeps, while their pixels match '
          '(0 = off)', lo=0.0, hi=1000.0, live=True),
    Param('security.mode', 'mac', 'mac: every link message carries a keyed BLAKE2b tag; only '
          'edges with a key in security.key_file are served. none: no authentication (lab '
          'only)', choices=list(auth.MODES)),
    Param('security.key_file', '', 'Key file with one "<edge_id> <hex secret>" line per '
          'served edge (mode 0600; python -m fluxshard_msgs_py.auth generate)'),
    Param('security.max_age_s', 30.0, 'Reject link messages whose nonce is further than this '
          "from the server's clock, s (replays after a restart; 0 = off)", lo=0.0, hi=1e6),
    Param('admission.max_rate_hz', 60.0, 'Per-edge sustained BlockBatch rate, batches/s; '
          'excess dropped (rejected.rate_limited)', lo=0.1, hi=1e6),
    Param('admission.burst', 10, 'Per-edge batches admitted back to back above the rate',
          lo=1, hi=100000),
    Param('admission.max_mbps', 400.0, 'Per-edge sustained batch payload, Mbit/s; excess '
          'dropped (rejected.byte_limited)', lo=0.01, hi=1e6),
    Param('admission.max_batch_mb', 16.0, 'Largest batch payload accepted, MB '
          '(rejected.oversize)', lo=0.001, hi=1e4),
]
PARAMS += annotate.PARAMS


class _Topics:
    """ROS handles of one served edge."""

    def __init__(self, node: 'ServerNode', ns: str, edge_id: str, task: str):
        self.prefix = (ns.strip('/') + '/') if ns.strip('/') else ''
        self.edge_id = edge_id
        self.lock = threading.Lock()  # feedback: sign and publish in nonce order
        self.feedback = node.create_publisher(ProxyDelta, self.prefix + 'proxy_feedback',
                                              LINK_QOS)
        self.results = ResultPublisher(
            node, self.prefix, task, edge_id, 'server', node.runtime.edges[edge_id].counters,
            annotated=annotate.from_params(node, node.params, self.prefix, 'server'))
        self.proxy_image = node.create_publisher(Image, self.prefix + 'proxy_image',
                                                 RESULT_QOS)
        # created here, published at the first result only when nobody else (the robot's own
        # edge model) publishes labels: entities are not created from the worker thread
        self.labels = node.create_publisher(LabelMap, self.prefix + 'labels', LATCHED_QOS)
        self.labels_sent = False
        self.batch_topic = node.resolve_topic_name(self.prefix + 'block_batch')
        self.subs = []


class ServerNode(WorkerLifecycle, LifecycleNode):
    """Serves the edges listed in ``edges`` (namespaces) from one process."""

    def __init__(self, **kwargs):
        super().__init__('fluxshard_server', **kwargs)
        self.params = p = Params(self, PARAMS)
        self.namespaces = list(p['edges']) or ['']
        self.edge_ids = [ns.strip('/').replace('/', '_') or 'edge0' for ns in self.namespaces]
        if len(set(self.edge_ids)) != len(self.edge_ids):
            raise ValueError(f'edges {self.namespaces} name the same edge twice')
        self.task = p['model.task']
        self.errors = ReasonLog(self.get_logger())
        self.runtime = None
        self.topics = {}
        self.failure = ''
        self._worker = None
        self._stop = threading.Event()
        self._recent_bad = RecentCount(10.0)
        self._rivals = {}
        self._addressed = {}  # edge -> its last batch named a server (fleet mode)
        self.server_id = p['server_id'] or f'{socket.gethostname()}-{os.getpid()}'
        self.announcer = None
        self._accepting = False
        self._busy_mark = (time.monotonic(), 0.0)

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        try:
            keys = self._keys()
            budget = Budget(rate_hz=p['admission.max_rate_hz'], burst=p['admission.burst'],
                            mbps=p['admission.max_mbps'],
                            max_batch_bytes=int(1e6 * p['admission.max_batch_mb']))
            if p['model.threads']:
                import torch
                torch.set_num_threads(p['model.threads'])
            backend, path = p['model.backend'], p['model.path']
            self.device = resolve_device(p['model.device'])
            shared = (load_model(self.task, path, self.device)
                      if backend in ('incremental', 'dense', 'auto') else None)

            prof = None
            if p['model.profile_file']:
                from fluxshard_kernels.profile import DeviceProfile
                prof = DeviceProfile.load(p['model.profile_file'])

            def make_model():
                return EdgeModel(backend, self.task, shared, path, p['model.conf'],
                                 p['model.iou'], p['model.threads'], p['refresh.interval'],
                                 recompute_tau=p['model.recompute_tau'],
                                 device=self.device, profile=prof,
                                 drift_scope=p['model.drift_scope'],
                                 mixed_px=p['model.mixed_px'])
            self.runtime = ServerRuntime(self.edge_ids, make_model, keys, budget,
                                         p['security.max_age_s'])
            if p['model.warm_up']:
                took = sum(e.model.warm_up() for e in self.runtime.edges.values())
                self.get_logger().info(f'models warmed up in {took:.1f} s')
        except (ValueError, FileNotFoundError, OSError) as e:
            self.failure = str(e)
            self.get_logger().error(f'configure failed: {e}')
            return TransitionCallbackReturn.FAILURE
        self.counters, self.rejects = self.runtime.counters, self.runtime.rejects
        self.topics = {eid: _Topics(self, ns, eid, self.task)
                       for ns, eid in zip(self.namespaces, self.edge_ids)}
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)
        if p['fleet.announce']:
            self.announcer = self.create_publisher(ServerStatus, p['fleet.topic'],
                                                   FLEET_PUB_QOS)
            self._announce_timer = self.create_timer(
                1.0, self._announce, clock=Clock(clock_type=ClockType.STEADY_TIME))
            self._announce()  # configured: robots see what it runs (not accepting yet)
        self.get_logger().info(f'configured: {p["model.backend"]} {self.task} on '
                               f'{self.device} for '
                               f'{[t.batch_topic for t in self.topics.values()]}; security '
                               f'{p["security.mode"]}')
        return TransitionCallbackReturn.SUCCESS

    def _keys(self):
        p = self.params
        if p['security.mode'] != 'mac':
            self.get_logger().warning('security.mode none: link messages are not authenticated; '
                                      'any participant on this DDS domain can inject batches or '
                                      'feedback (lab use only)')
            return None
        keys = auth.load_keys(p['security.key_file'])
        missing = [e for e in self.edge_ids if e not in keys]
        if missing:
            raise ValueError(f'security.key_file {p["security.key_file"]} has no key for '
                             f'edge(s) {missing}: the server serves only edges it has keys for '
                             '(add them with python -m fluxshard_msgs_py.auth generate)')
        return keys

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for eid, t in self.topics.items():
            group = MutuallyExclusiveCallbackGroup()
            t.subs = [
                self.create_subscription(BlockBatch, t.prefix + 'block_batch',
                                         lambda m, e=eid: self.on_batch(e, m), LINK_QOS,
                                         callback_group=group),
                self.create_subscription(ProxyDelta, t.prefix + 'proxy_delta',
                                         lambda m, e=eid: self.on_delta(e, m), LINK_QOS,
                                         callback_group=group)]
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name='server-infer', daemon=True)
        self._worker.start()
        self._accepting = True
        self._announce()
        self.get_logger().info(f'active: serving '
                               f'{[t.batch_topic for t in self.topics.values()]}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._accepting = False
        self._announce()  # robots move elsewhere before this one stops answering
        self._stop_worker()
        for t in self.topics.values():
            for s in t.subs:
                self.destroy_subscription(s)
            t.subs = []
        self.get_logger().info('inactive')
        return super().on_deactivate(state)

    def _stop_worker(self):
        if getattr(self, '_worker', None) is None:  # never started (or construction failed)
            return
        self._stop.set()
        self._worker.join(timeout=10.0)
        self._worker = None
        # jobs not taken are accounted, never silently lost
        while self.runtime is not None:
            left = self.runtime.jobs.take(0)
            if left is None:
                break
            self.counters['dropped_deactivated'] += 1

    def _release(self):
        if getattr(self, 'announcer', None) is not None:
            self.destroy_timer(self._announce_timer)
            self.destroy_publisher(self.announcer)
            self.announcer = None
        if getattr(self, 'diagnostics', None) is not None:
            self.diagnostics.destroy()
            self.diagnostics = None
        for t in getattr(self, 'topics', {}).values():
            t.results.destroy()
            for pub in (t.feedback, t.proxy_image, t.labels):
                if pub is not None:
                    self.destroy_publisher(pub)
        self.topics = {}
        if getattr(self, 'runtime', None) is not None:
            self.runtime.close()
            self.runtime = None

    # -- per message (ordered per edge by its callback group) ---------------------------------
    def on_batch(self, eid: str, msg: BlockBatch):
        t0 = time.perf_counter()
        rt, t = self.runtime, self.topics.get(eid)
        if rt is None or t is None:
            return
        self._addressed[eid] = bool(msg.server_id)
        if msg.server_id and msg.server_id != self.server_id:
            # addressed to another server of the fleet: not this one's to serve (counted)
            rt.edges[eid].counters['batches_other_server'] += 1
            return
        out = rt.on_batch(eid, msg)
        if out.refused:  # dropped unanswered: forgeries and floods must not trigger traffic
            counter, reason = out.refused
            self.errors.error(f'{eid}/{counter}',
                              f'{eid}: dropped batch seq {msg.seq} ({counter}): {reason}')
            return
        if out.rejected:
            counter, reason, resync = out.rejected
            self.errors.error(counter, f'{eid}: {reason}')
            if resync:
                req = ProxyDelta(edge_id=eid, kind=ProxyDelta.KIND_RESYNC_REQUEST,
                                 seq=int(msg.seq), reason=reason[:200])
                req.header.stamp = self.get_clock().now().to_msg()
                self._feedback(eid, req)
        if not out.ack:
            return
        e = rt.edges[eid]
        ack = ProxyDelta(header=msg.header, edge_id=eid, kind=ProxyDelta.KIND_ACK, seq=msg.seq)
        ack.state_digest = conversions._seq('B', bytearray(e.session.digest))
        ack.server_receive_ms = 1e3 * (time.perf_counter() - t0)
        self._feedback(eid, ack)
        if self.params['publish_proxy_image']:
            t.proxy_image.publish(conversions.array_to_image(e.session.state, msg.header))

    def on_delta(self, eid: str, msg: ProxyDelta):
        if self.runtime is None:
            return
        if msg.server_id and msg.server_id != self.server_id:
            self.runtime.edges[eid].counters['deltas_other_server'] += 1
            return
        refused = self.runtime.on_delta(eid, msg, ProxyDelta.KIND_RESET)
        if refused:
            self.errors.error(f'{eid}/{refused[0]}', f'{eid}: dropped proxy_delta kind '
                              f'{msg.kind} ({refused[0]}): {refused[1]}')
        elif msg.kind == ProxyDelta.KIND_RESET:
            self.get_logger().info(f'{eid}: reset ({msg.reason})')

    def _feedback(self, eid: str, msg: ProxyDelta):
        # callback and worker threads both answer: sign and publish in nonce order
        t, e = self.topics[eid], self.runtime.edges[eid]
        msg.server_id = self.server_id
        with t.lock:
            if e.signer is not None:
                e.signer.sign(msg)
            t.feedback.publish(msg)

    # -- inference worker: one thread owns the model (GPU state stays on it) ----------------
    def _run(self):
        while not self._stop.is_set():
            changes = self.params.take_changes()
            if changes:
                self._apply(changes)
            taken = self.runtime.take_job(0.2)
            if taken is None:
                continue
            edge, job = taken
            try:
                self._infer(edge, job)
            except Exception as e:  # noqa: B902 - keep serving other edges
                self.rejects['inference_error'] += 1
                self.errors.error('inference_error',
                                  f'{edge.edge_id}: inference failed: {type(e).__name__}: {e}')

    def _apply(self, changes):
        for e in self.runtime.edges.values():
            m = e.model
            m.conf = changes.get('model.conf', m.conf)
            m.iou = changes.get('model.iou', m.iou)
            m.refresh_interval = changes.get('refresh.interval', m.refresh_interval)
            m.recompute_tau = changes.get('model.recompute_tau', m.recompute_tau)
            m.drift_scope = changes.get('model.drift_scope', m.drift_scope)
            m.mixed_px = changes.get('model.mixed_px', m.mixed_px)
            if m.onnx is not None:  # the onnxruntime path decodes with its own thresholds
                m.onnx.conf, m.onnx.iou = m.conf, m.iou

    def _infer(self, edge, job):
        det, seconds, blocks = self.runtime.infer(edge, job)
        eid, t = edge.edge_id, self.topics[edge.edge_id]
        done = ProxyDelta(header=job.header, edge_id=eid, kind=ProxyDelta.KIND_INFERENCE_DONE,
                          seq=job.seq, server_compute_ms=1e3 * seconds, server_blocks=blocks)
        self._feedback(eid, done)
        if not t.labels_sent and edge.model.names:
            t.labels_sent = True
            if self.count_publishers(t.prefix + 'labels') <= 1:
                # the robot runs no model of its own: the labels come from here
                t.labels.publish(conversions.label_map_msg(edge.model.names,
                                                           LabelMap().header))
        t.results.names = edge.model.names or t.results.names
        # the picture's block map: the blocks this batch carried to the server
        block_map = (None if job.changed is None else
                     annotate.block_map(job.state.shape, job.block_size, job.changed))
        if t.results.publish(det, job.header, job.frame_index, job.state.shape, job.state,
                             block_map, job.block_size):
            self.counters['results_published'] += 1
            edge.counters['results_published'] += 1

    def _announce(self):
        """ServerStatus on the fleet topic: identity, task, load, accepting."""
        rt, p = self.runtime, self.params
        if self.announcer is None or rt is None:
            return
        now = time.monotonic()
        serving = rt.serving(now)
        t0, b0 = self._busy_mark
        self._busy_mark = (now, rt.busy_s)
        busy = min(1.0, max(0.0, (rt.busy_s - b0) / max(now - t0, 1e-3)))
        cap = p['fleet.max_robots']
        msg = ServerStatus(server_id=self.server_id, task=self.task,
                           model=os.path.basename(p['model.path']) or f'yolo11n-{self.task}',
                           device=str(self.device), backend=p['model.backend'],
                           edges=list(self.edge_ids), serving=serving,
                           queue=rt.jobs.pending(), busy=float(busy),
                           infer_ms=float(rt.infer_ms),
                           accepting=bool(self._accepting and (not cap or len(serving) < cap)))
        msg.header.stamp = self.get_clock().now().to_msg()
        if not math.isfinite(msg.infer_ms):
            msg.infer_ms = 0.0
        self.announcer.publish(msg)

    def _diagnostics(self):
        rt = self.runtime
        if rt is None:
            return []
        now = time.monotonic()
        out = []
        for eid, t in self.topics.items():
            e = rt.edges[eid]
            s = e.session
            level = DiagnosticStatus.OK if s.synced else DiagnosticStatus.WARN
            msg = 'in sync' if s.synced else 'waiting for key batch'
            if now - e.last_refused < 10.0:
                level = DiagnosticStatus.WARN
                msg += '; dropping forged, replayed or over-budget messages (see rejected.*)'
            rivals = self.count_publishers(t.prefix + 'proxy_feedback') - 1
            if rivals > 0 and self._addressed.get(eid) is False:  # a fleet addresses its batches
                level = DiagnosticStatus.WARN
                msg += f'; {rivals} other server(s) also serve this robot'
                if self._rivals.get(eid) != rivals:
                    self.get_logger().warning(
                        f'{eid}: {rivals} other server(s) publish on '
                        f'{self.resolve_topic_name(t.prefix + "proxy_feedback")}: the robot '
                        'gets every result twice; serve each robot from one server (edges)')
            self._rivals[eid] = rivals
            vals = dict(e.counters, last_seq=s.last_seq, applied=s.applied,
                        server_id=self.server_id)
            if e.model.costs is not None:  # auto backend: frames per path
                vals.update({f'path.{k}': v for k, v in e.model.costs.chosen.items()})
            # image stamp -> this server publishing its result (uplink, queue, inference)
            vals.update(t.results.own_latency.values('latency.served'))
            out.append(diagnostic_status(f'fluxshard/server/{eid}', eid, level, msg, vals))
        bad = sum(rt.rejects.values())
        recent = self._recent_bad.update(bad)
        vals = dict(rt.counters, server_id=self.server_id)
        vals.update({f'rejected.{k}': v for k, v in rt.rejects.items()})
        out.append(diagnostic_status(
            'fluxshard/server', 'server', DiagnosticStatus.WARN if recent else
            DiagnosticStatus.OK, f'{recent} rejected in the last 10 s ({bad} since start)',
            vals))
        return out


def main(args=None):
    run_node(ServerNode, args, threads=4,
             usage=help_text('fluxshard_server server_node', PURPOSE, PARAMS, TOPICS))


if __name__ == '__main__':
    main()
