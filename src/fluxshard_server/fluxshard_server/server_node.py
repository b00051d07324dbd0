"""FluxShard server node: BlockBatch in, proxy edge state, results out (glue only)."""

from collections import Counter
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from fluxshard_edge import conversions
from fluxshard_edge.common_node import (declare, LATCHED_QOS, LINK_QOS, ReasonLog, RESULT_QOS,
                                        run_node)
from fluxshard_msgs.msg import BlockBatch, DetectionArray, KeypointArray, LabelMap, ProxyDelta
from fluxshard_msgs_py import auth
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image

from fluxshard_server.admission import Budget, EdgeGate
from fluxshard_server.inference import background_paused, BACKENDS, EdgeModel, load_model
from fluxshard_server.jobs import JobTable
from fluxshard_server.receive import receive_batch
from fluxshard_server.session import EdgeSession

try:  # a ROS 2 robot with vision_msgs: publish the standard type too
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - depends on the install
    Detection2DArray = None


class _Edge:
    """ROS handles and state of one served edge."""

    def __init__(self, node: 'ServerNode', ns: str):
        self.ns = ns
        prefix = (ns.strip('/') + '/') if ns.strip('/') else ''
        self.session = EdgeSession(ns.strip('/').replace('/', '_') or 'edge0')
        self.counters = Counter()
        key = node.keys.get(self.session.edge_id) if node.keys is not None else None
        self.gate = EdgeGate(key, node.budget, node.max_age_s)
        self.signer = auth.Signer(key, 'proxy_feedback') if key else None
        self.feedback_lock = threading.Lock()
        self.last_refused = -1e9  # monotonic time of the last refused (forged, over-budget) one
        self.model = node.make_edge_model()
        self.group = MutuallyExclusiveCallbackGroup()
        self.feedback = node.create_publisher(ProxyDelta, prefix + 'proxy_feedback', LINK_QOS)
        self.detections = node.create_publisher(DetectionArray, prefix + 'detections',
                                                RESULT_QOS)
        self.keypoints = node.create_publisher(KeypointArray, prefix + 'keypoints', RESULT_QOS)
        self.masks = node.create_publisher(Image, prefix + 'masks', RESULT_QOS)
        self.labels = node.create_publisher(LabelMap, prefix + 'labels', LATCHED_QOS)
        self.proxy_image = (node.create_publisher(Image, prefix + 'proxy_image', RESULT_QOS)
                            if node.publish_proxy_image else None)
        self.vision = (node.create_publisher(Detection2DArray, prefix + 'detections_vision',
                                             RESULT_QOS) if Detection2DArray else None)
        node.create_subscription(BlockBatch, prefix + 'block_batch',
                                 lambda m: node.on_batch(self, m), LINK_QOS,
                                 callback_group=self.group)
        node.create_subscription(ProxyDelta, prefix + 'proxy_delta',
                                 lambda m: node.on_delta(self, m), LINK_QOS,
                                 callback_group=self.group)
        self.topic = node.resolve_topic_name(prefix + 'block_batch')


class ServerNode(Node):
    """Serves the edges listed in ``edges`` (namespaces) from one process."""

    def __init__(self, **kwargs):
        super().__init__('fluxshard_server', **kwargs)
        edges = declare(self, 'edges', [''],
                        'Namespaces of the served edges (topics <ns>/block_batch, ...); '
                        "'' = this node's namespace", read_only=True)
        if not edges:
            edges = ['']
        self.task = declare(self, 'model.task', 'detect', 'Vision task',
                            choices=['detect', 'segment', 'pose'], read_only=True)
        backend = declare(self, 'model.backend', 'incremental',
                          'incremental (sparse YOLO11 over MV-warped caches), dense (torch), '
                          'onnxruntime (dense reference) or none', choices=list(BACKENDS),
                          read_only=True)
        path = declare(self, 'model.path', '',
                       'Model file ("" = YOLO11n for the task from the data folder)',
                       read_only=True)
        conf = declare(self, 'model.conf', 0.25, 'Score threshold', lo=0.0, hi=1.0)
        iou = declare(self, 'model.iou', 0.45, 'NMS IoU threshold', lo=0.0, hi=1.0)
        threads = declare(self, 'model.threads', 0, 'CPU threads for inference (0 = auto)',
                          lo=0, hi=256, read_only=True)
        self.publish_proxy_image = declare(self, 'publish_proxy_image', False,
                                           'Publish each edge proxy image on <ns>/proxy_image')
        refresh = declare(self, 'refresh.interval', 10,
                          'Batches between background dense refreshes of a server cache',
                          lo=1, hi=100000)
        self.security = declare(self, 'security.mode', 'mac',
                                "mac: every link message carries a keyed BLAKE2b tag; only "
                                "edges with a key in security.key_file are served. none: no "
                                "authentication (lab only)", choices=list(auth.MODES),
                                read_only=True)
        key_file = declare(self, 'security.key_file', '',
                           'Key file with one "<edge_id> <hex secret>" line per served edge '
                           '(mode 0600; python -m fluxshard_msgs_py.auth generate)',
                           read_only=True)
        self.max_age_s = declare(self, 'security.max_age_s', 30.0,
                                 'Reject link messages whose nonce is further than this from '
                                 "the server's clock, s (replays after a restart; 0 = off)",
                                 lo=0.0, hi=1e6, read_only=True)
        self.budget = Budget(
            rate_hz=declare(self, 'admission.max_rate_hz', 60.0,
                            'Per-edge sustained BlockBatch rate, batches/s; excess dropped '
                            '(rejected.rate_limited)', lo=0.1, hi=1e6, read_only=True),
            burst=declare(self, 'admission.burst', 10, 'Per-edge batches admitted back to '
                          'back above the rate', lo=1, hi=100000, read_only=True),
            mbps=declare(self, 'admission.max_mbps', 400.0,
                         'Per-edge sustained batch payload, Mbit/s; excess dropped '
                         '(rejected.byte_limited)', lo=0.01, hi=1e6, read_only=True),
            max_batch_bytes=int(1e6 * declare(
                self, 'admission.max_batch_mb', 16.0, 'Largest batch payload accepted, MB '
                '(rejected.oversize)', lo=0.001, hi=1e4, read_only=True)))
        self.keys = None
        if self.security == 'mac':
            self.keys = auth.load_keys(key_file)
            ids = [ns.strip('/').replace('/', '_') or 'edge0' for ns in edges]
            missing = [e for e in ids if e not in self.keys]
            if missing:
                raise ValueError(f'security.key_file {key_file} has no key for edge(s) '
                                 f'{missing}: the server serves only edges it has keys for '
                                 '(add them with python -m fluxshard_msgs_py.auth generate)')
        else:
            self.get_logger().warn('security.mode none: link messages are not authenticated; '
                                   'any participant on this DDS domain can inject batches or '
                                   'feedback (lab use only)')
        if threads:
            import torch
            torch.set_num_threads(threads)
        shared = load_model(self.task, path) if backend in ('incremental', 'dense') else None

        def make_edge_model():
            return EdgeModel(backend, self.task, shared, path, conf, iou, threads, refresh)
        self.make_edge_model = make_edge_model
        self.counters = Counter()
        self.rejects = Counter()
        self.errors = ReasonLog(self.get_logger())
        self.edges = [_Edge(self, ns) for ns in edges]
        self.jobs = JobTable(self.edges)
        for e in self.edges:
            if e.model.names:
                e.labels.publish(conversions.label_map_msg(e.model.names, LabelMap().header))
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name='server-infer', daemon=True)
        self._worker.start()
        self.get_logger().info(f'serving {[e.topic for e in self.edges]} with '
                               f'{backend} {self.task}; security {self.security}')

    # -- per message (ordered per edge by its callback group) ---------------------------------
    def on_batch(self, edge: _Edge, msg: BlockBatch):
        t0 = time.perf_counter()
        self.counters['batches_in'] += 1
        edge.counters['batches_in'] += 1
        refused = edge.gate.admit_batch(msg, time.monotonic())
        if refused:  # dropped unanswered: forgeries and floods must not trigger traffic
            self._refuse(edge, *refused, what=f'batch seq {msg.seq}')
            return
        edge.counters['bytes_in'] += len(msg.payload)
        r = receive_batch(edge.session, msg)
        if r.outcome.counter:
            self._reject(edge, r.outcome.counter, r.outcome.reason, msg.seq,
                         resync=r.outcome.resync)
        if not r.acked:
            return
        edge.counters['batches_ok'] += 1
        ack = ProxyDelta(header=msg.header, edge_id=edge.session.edge_id,
                         kind=ProxyDelta.KIND_ACK, seq=msg.seq)
        ack.state_digest = conversions._seq('B', bytearray(edge.session.digest))
        ack.server_receive_ms = 1e3 * (time.perf_counter() - t0)
        self._feedback(edge, ack)
        if edge.proxy_image is not None:
            edge.proxy_image.publish(conversions.array_to_image(edge.session.state, msg.header))
        if r.infer:
            job = (msg.header, int(msg.frame_index), edge.session.state, int(msg.seq), r.mv,
                   r.prev_seq)
            if self.jobs.put(edge, job):
                self.counters['dropped_superseded'] += 1
                edge.counters['dropped_superseded'] += 1

    def on_delta(self, edge: _Edge, msg: ProxyDelta):
        refused = edge.gate.admit_delta(msg)
        if refused:
            self._refuse(edge, f'delta.{refused[0]}', refused[1],
                         what=f'proxy_delta kind {msg.kind}')
            return
        if msg.kind == ProxyDelta.KIND_RESET:
            edge.session.synced = False
            self.get_logger().info(f'{edge.session.edge_id}: reset ({msg.reason})')

    def _feedback(self, edge: _Edge, msg: ProxyDelta):
        # callback and worker threads both answer: sign and publish in nonce order
        with edge.feedback_lock:
            if edge.signer is not None:
                edge.signer.sign(msg)
            edge.feedback.publish(msg)

    def _refuse(self, edge: _Edge, counter: str, reason: str, what: str):
        self.rejects[counter] += 1
        edge.counters[f'rejected.{counter}'] += 1
        edge.last_refused = time.monotonic()
        self.errors.error(f'{edge.session.edge_id}/{counter}',
                          f'{edge.session.edge_id}: dropped {what} ({counter}): {reason}')

    def _reject(self, edge: _Edge, counter: str, reason: str, seq: int, resync: bool = True):
        self.rejects[counter] += 1
        edge.counters[f'rejected.{counter}'] += 1
        self.errors.error(counter, f'{edge.session.edge_id}: {reason}')
        if resync:
            req = ProxyDelta(edge_id=edge.session.edge_id, kind=ProxyDelta.KIND_RESYNC_REQUEST,
                             seq=int(seq), reason=reason[:200])
            req.header.stamp = self.get_clock().now().to_msg()
            self._feedback(edge, req)

    # -- inference worker: one thread owns the model (GPU state stays on it) ----------------
    def _run(self):
        while not self._stop.is_set():
            taken = self.jobs.take(0.2)
            if taken is None:
                continue
            edge, job = taken
            try:
                with background_paused([e.model for e in self.edges if e is not edge]):
                    self._infer(edge, *job)
            except Exception as e:  # noqa: B902 - keep serving other edges
                self.rejects['inference_error'] += 1
                self.get_logger().error(f'inference failed: {type(e).__name__}: {e}')

    def _infer(self, edge: _Edge, header, frame_index: int, image, seq, mv, prev_seq):
        eid = edge.session.edge_id
        t0 = time.perf_counter()
        det = edge.model(image, seq, mv, prev_seq)
        done = ProxyDelta(header=header, edge_id=eid, kind=ProxyDelta.KIND_INFERENCE_DONE,
                          seq=seq, server_compute_ms=1e3 * (time.perf_counter() - t0),
                          server_blocks=int(edge.model.last_blocks))
        self._feedback(edge, done)
        if self.task == 'pose':
            edge.keypoints.publish(conversions.keypoints_to_msg(det, header, eid, 'server',
                                                                frame_index))
        else:
            seg = self.task == 'segment'
            edge.detections.publish(conversions.detections_to_msg(det, header, eid, 'server',
                                                                  frame_index, seg))
            if seg:
                from fluxshard_kernels.yolo.processing import label_image
                lab = label_image(det.masks, det.scores, image.shape[:2])
                edge.masks.publish(conversions.array_to_image(lab, header))
            if edge.vision is not None:
                edge.vision.publish(_to_vision(det, header))
        self.counters['results_published'] += 1
        edge.counters['results_published'] += 1
        self.counters['infer_ms_total'] += int((time.perf_counter() - t0) * 1000)

    def _publish_diagnostics(self):
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        for e in self.edges:
            st = DiagnosticStatus(name=f'fluxshard/server/{e.session.edge_id}',
                                  hardware_id=e.session.edge_id)
            st.level = DiagnosticStatus.OK if e.session.synced else DiagnosticStatus.WARN
            st.message = 'in sync' if e.session.synced else 'waiting for key batch'
            if time.monotonic() - e.last_refused < 10.0:
                st.level = DiagnosticStatus.WARN
                st.message += ('; dropping forged, replayed or over-budget messages (see '
                               'rejected.*)')
            vals = dict(e.counters, last_seq=e.session.last_seq, applied=e.session.applied)
            st.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(vals.items())]
            arr.status.append(st)
        tot = DiagnosticStatus(name='fluxshard/server', hardware_id='server')
        vals = dict(self.counters)
        vals.update({f'rejected.{k}': v for k, v in self.rejects.items()})
        tot.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(vals.items())]
        arr.status.append(tot)
        self.diag_pub.publish(arr)

    def destroy_node(self):
        if hasattr(self, '_worker'):
            self._stop.set()
            self.jobs.close()
            self._worker.join(timeout=5.0)
            for e in self.edges:
                e.model.close()
        return super().destroy_node()


def _to_vision(det, header):
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


def main(args=None):
    run_node(ServerNode, args, threads=4)


if __name__ == '__main__':
    main()
