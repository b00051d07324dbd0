"""rclpy glue shared by the FluxShard nodes (edge, server, camera replay): parameter tables
with descriptors, runtime validation and live updates, ``--help`` without ROS, QoS profiles,
throttled error logs, diagnostics built from recent history on the wall clock, the node
runner with lifecycle autostart."""

from collections import deque
from dataclasses import dataclass
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
import rclpy
import rclpy.exceptions
import rclpy.logging
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)


def camera_qos(reliability: str, depth: int = 1) -> QoSProfile:
    """Camera input, latest frame wins (depth 1 by default).

    Best effort matches every publisher; reliable (the default) does not match a best-effort
    driver (the edge logs that and names the parameter). Large best-effort frames need the
    shipped Fast DDS profile in both processes (docs/design.md, "DDS on a robot").
    """
    rel = {'reliable': ReliabilityPolicy.RELIABLE,
           'best_effort': ReliabilityPolicy.BEST_EFFORT}[reliability]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel)


#: BlockBatch / ProxyDelta: reliable, in order; a lost batch breaks proxy sync (then resync).
LINK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=8,
                      reliability=ReliabilityPolicy.RELIABLE)
#: Results for robot consumers: reliable, small depth.
RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                        reliability=ReliabilityPolicy.RELIABLE)
#: Static metadata (labels): latched.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Fleet announcements (ServerStatus), reader side: a reader keeps one per server it hears
#: (depth: servers whose latched samples may arrive together).
FLEET_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=64,
                       reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Writer side: latched with depth 1, so a reader matched late (or re-matched after a
#: discovery change) gets the server's newest announcement, never a replay of old ones.
FLEET_PUB_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                           reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


# -- parameters -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One node parameter: default, meaning, allowed values; ``live`` ones may be changed at
    runtime (validated, applied on the next frame), all others are read-only."""

    name: str
    default: Any
    description: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: Optional[Sequence] = None
    live: bool = False

    def check(self, value: Any) -> Any:
        """The value coerced to this parameter's type; ValueError saying what is allowed."""
        d = self.default
        if isinstance(d, bool):
            if not isinstance(value, bool):
                raise ValueError(f'parameter {self.name}={value!r}: must be true or false')
        elif isinstance(d, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f'parameter {self.name}={value!r}: must be an integer')
        elif isinstance(d, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'parameter {self.name}={value!r}: must be a number')
            value = float(value)
        elif isinstance(d, str):
            if not isinstance(value, str):
                raise ValueError(f'parameter {self.name}={value!r}: must be a string')
        elif isinstance(d, list):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f'parameter {self.name}={value!r}: must be a list')
            value = list(value)
        if self.lo is not None and self.hi is not None and not isinstance(d, bool):
            if not self.lo <= value <= self.hi:
                raise ValueError(f'parameter {self.name}={value}: must be in '
                                 f'[{self.lo}, {self.hi}]')
        if self.choices is not None and value not in self.choices:
            raise ValueError(f'parameter {self.name}={value!r}: must be one of '
                             f'{list(self.choices)}')
        return value

    def descriptor(self) -> ParameterDescriptor:
        desc = ParameterDescriptor(description=self.description, read_only=not self.live)
        d = self.default
        if isinstance(d, float):
            desc.dynamic_typing = True  # accept 600 where 600.0 is meant (a classic YAML slip)
        if self.lo is not None and self.hi is not None and not isinstance(d, bool):
            if isinstance(d, int):
                desc.integer_range = [IntegerRange(from_value=int(self.lo),
                                                   to_value=int(self.hi), step=0)]
            elif isinstance(d, float):
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(self.lo), to_value=float(self.hi), step=0.0)]
        if self.choices is not None:
            desc.additional_constraints = 'one of: ' + ', '.join(map(repr, self.choices))
        return desc

    def usage(self) -> str:
        allowed = ''
        if self.choices is not None:
            allowed = ' {' + ', '.join(repr(c) for c in self.choices) + '}'
        elif self.lo is not None and self.hi is not None:
            allowed = f' [{self.lo}, {self.hi}]'
        live = ' (live)' if self.live else ''
        return (f'  {self.name} = {self.default!r}{allowed}{live}\n'
                f'      {self.description}')


class Params:
    """The parameters of one node, declared from a table of ``Param``.

    ``values`` holds the validated values. Live parameters set at runtime (``ros2 param set``,
    a set-parameters service call) are validated by the set-parameters callback - a value
    outside its range or choices is refused with the reason - and queued; the node's worker
    takes them with ``take_changes()`` and applies them before its next frame.
    """

    def __init__(self, node, table: Iterable[Param]):
        self.table: Dict[str, Param] = {p.name: p for p in table}
        self.values: Dict[str, Any] = {}
        self._pending: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self._node = node
        for p in self.table.values():
            raw = node.declare_parameter(p.name, p.default, p.descriptor()).value
            self.values[p.name] = p.check(raw)
        node.add_on_set_parameters_callback(self._on_set)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def _on_set(self, params) -> SetParametersResult:
        staged = {}
        for prm in params:
            spec = self.table.get(prm.name)
            if spec is None:
                continue  # not ours (use_sim_time, ...)
            if not spec.live:
                return SetParametersResult(successful=False,
                                           reason=f'{prm.name} is read-only')
            try:
                staged[prm.name] = spec.check(prm.value)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
        with self._lock:
            self._pending.update(staged)
            self.values.update(staged)
        for name, value in staged.items():
            self._node.get_logger().info(f'parameter {name} = {value!r} (from the next frame)')
        return SetParametersResult(successful=True)

    def take_changes(self) -> Dict[str, Any]:
        """Live parameters changed since the last call (name -> validated value)."""
        with self._lock:
            out, self._pending = self._pending, {}
        return out


def help_text(prog: str, purpose: str, table: Iterable[Param], topics: Sequence[str]) -> str:
    """Usage of a node executable: purpose, topics, parameters with defaults and ranges."""
    lines = [f'usage: ros2 run {prog} [--help] [--ros-args --params-file FILE '
             '-p NAME:=VALUE -r FROM:=TO ...]', '', purpose.strip(), '', 'Topics:']
    lines += [f'  {t}' for t in topics]
    lines += ['', 'Parameters (name = default [range] {choices}; (live): settable at runtime):']
    lines += [p.usage() for p in table]
    return '\n'.join(lines) + '\n'


def wants_help(argv: Optional[List[str]]) -> bool:
    """``-h`` / ``--help`` before any ``--ros-args``."""
    argv = list(sys.argv[1:] if argv is None else argv[1:])
    if '--ros-args' in argv:
        argv = argv[:argv.index('--ros-args')]
    return '-h' in argv or '--help' in argv


# -- logs and diagnostics ---------------------------------------------------------------------
class ReasonLog:
    """Error logging throttled per reason: the first of each reason is logged at once, repeats
    at most once per ``period`` s with the number suppressed meanwhile (counters keep all)."""

    def __init__(self, logger, period: float = 1.0):
        self._logger, self._period = logger, period
        self._last, self._held = {}, {}

    def error(self, reason: str, message: str, level: str = 'error'):
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) >= self._period:
            held = self._held.pop(reason, 0)
            extra = f' ({held} more like this suppressed)' if held else ''
            getattr(self._logger, level)(message + extra)
            self._last[reason] = now
        else:
            self._held[reason] = self._held.get(reason, 0) + 1


class RecentCount:
    """How much a monotonically growing total grew in the last ``window`` seconds (so a
    diagnostics level reflects the recent past, not everything since start)."""

    def __init__(self, window: float = 10.0, now: Optional[float] = None):
        self.window = window
        self._hist = deque([(time.monotonic() if now is None else now, 0)])

    def update(self, total: int, now: Optional[float] = None) -> int:
        """Record ``total`` now; return its growth since ``window`` seconds ago."""
        now = time.monotonic() if now is None else now
        self._hist.append((now, total))
        while len(self._hist) > 1 and self._hist[1][0] <= now - self.window:
            self._hist.popleft()
        return total - self._hist[0][1]


class LatencyWindow:
    """Latencies (seconds) of the last ``window`` seconds: their p50 / p90 in ms for the
    diagnostics, as robot teams watch a perception node's delay. A latency is ROS time at
    the event minus the image stamp, so it needs the camera's clock (the same host, or hosts
    kept in sync by chrony/PTP); one below zero cannot be right and is only counted
    (``negative``: the clocks disagree)."""

    #: latencies kept for the since-start percentiles (``values(run=True)``)
    RUN_SAMPLES = 10000

    def __init__(self, window: float = 10.0):
        self.window = window
        self._hist = deque()  # (monotonic time, latency s)
        self._run = deque(maxlen=self.RUN_SAMPLES)  # since start (the newest RUN_SAMPLES)
        self.negative = 0
        # callbacks add while the diagnostics timer reads (another executor thread)
        self._lock = threading.Lock()

    def add(self, latency_s: float, now: Optional[float] = None):
        with self._lock:
            if latency_s < 0:
                self.negative += 1
                return
            self._hist.append((time.monotonic() if now is None else now, latency_s))
            self._run.append(latency_s)

    def add_stamp(self, clock, stamp):
        """The latency from ``stamp`` (builtin_interfaces Time) to ``clock``'s now; an unset
        stamp (0) or clock (sim time before ``/clock``) records nothing."""
        t = int(stamp.sec) * 10**9 + int(stamp.nanosec)
        now = clock.now().nanoseconds
        if t and now:
            self.add((now - t) / 1e9)

    def values(self, prefix: str, deadline_ms: float = 0.0, now: Optional[float] = None,
               run: bool = False) -> Dict[str, Any]:
        """``<prefix>_p50_ms``, ``_p90_ms``, ``_count`` over the window (and ``_late``: above
        ``deadline_ms``, when given); ``<prefix>_negative`` since start when any; ``run``:
        also ``<prefix>_run_p50_ms`` / ``_run_p90_ms`` / ``_run_count`` since start."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._hist and self._hist[0][0] <= now - self.window:
                self._hist.popleft()
            lat = [v for _, v in self._hist]
            every = list(self._run) if run else []
            negative = self.negative
        lat.sort()
        out = {f'{prefix}_count': len(lat), **_percentiles(prefix, lat)}
        if lat and deadline_ms:
            out[f'{prefix}_late'] = sum(v > deadline_ms / 1e3 for v in lat)
        if run:
            every.sort()
            out.update({f'{prefix}_run_count': len(every),
                        **_percentiles(f'{prefix}_run', every)})
        if negative:
            out[f'{prefix}_negative'] = negative
        return out


def late_warning(values: Dict[str, Any], prefix: str, deadline_ms: float,
                 least: int = 10) -> str:
    """The diagnostics' words when most of at least ``least`` latencies of the window
    (``LatencyWindow.values`` with ``deadline_ms``) were later than ``deadline_ms``, else ''."""
    n, late = int(values.get(f'{prefix}_count', 0)), int(values.get(f'{prefix}_late', 0))
    if not deadline_ms or n < least or 2 * late <= n:
        return ''
    return (f'{late} of {n} results in the last 10 s later than the deadline '
            f'({deadline_ms:g} ms; p90 {values[f"{prefix}_p90_ms"]:.0f} ms)')


def latency_report(results: LatencyWindow, taken: LatencyWindow, deadline_ms: float):
    """A robot's latency diagnostics: (values: ``latency.results_*`` of the results on its
    topic, ``latency.input_*`` of the frames taken, since start too; words for the status
    message; True when most results are late, a WARN)."""
    lat = results.values('latency.results', deadline_ms)
    vals = dict(lat, **taken.values('latency.input', run=True))
    words = []
    if 'latency.results_p50_ms' in lat:
        words.append(f"results p50 {lat['latency.results_p50_ms']:.0f} / p90 "
                     f"{lat['latency.results_p90_ms']:.0f} ms after the image stamp")
    late = late_warning(lat, 'latency.results', deadline_ms)
    if late:
        words.append(late)
    return vals, '; '.join(words), bool(late)


def _percentiles(prefix: str, lat: list) -> Dict[str, float]:
    """Nearest-rank p50 / p90 (ms) of sorted latencies (s); none of an empty list."""
    if not lat:
        return {}
    return {f'{prefix}_p50_ms': round(1e3 * lat[(len(lat) - 1) // 2], 1),
            f'{prefix}_p90_ms': round(1e3 * lat[-(-9 * len(lat) // 10) - 1], 1)}


def diagnostic_status(name: str, hardware_id: str, level: int, message: str,
                      values: Dict[str, Any]) -> DiagnosticStatus:
    """One DiagnosticStatus with ``values`` as sorted key/value strings."""
    st = DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message)
    st.values = [KeyValue(key=k, value=str(v)) for k, v in sorted(values.items())]
    return st


class DiagnosticsPublisher:
    """Publishes ``/diagnostics`` once a second on a steady (wall) timer, so a node keeps
    reporting when ``use_sim_time`` is on and ``/clock`` stalls; the stamp is ROS time when it
    runs, else the system clock. ``build()`` returns the statuses."""

    def __init__(self, node, build: Callable[[], List[DiagnosticStatus]],
                 period: float = 1.0):
        self._node, self._build = node, build
        self.pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.timer = node.create_timer(period, self._tick,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _tick(self):
        arr = DiagnosticArray()
        now = self._node.get_clock().now()
        if now.nanoseconds == 0:  # sim time without /clock: stamp with the system clock
            now = Clock(clock_type=ClockType.SYSTEM_TIME).now()
        arr.header.stamp = now.to_msg()
        arr.status = self._build()
        self.pub.publish(arr)

    def destroy(self):
        self._node.destroy_timer(self.timer)
        self._node.destroy_publisher(self.pub)


# -- running ----------------------------------------------------------------------------------
def free_device_memory():
    """Return the CUDA caching allocator's free blocks to the driver (after a model is
    released); nothing to do without a GPU or where torch was never imported."""
    import sys
    torch = sys.modules.get('torch')
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class WorkerLifecycle:
    """Shutdown and destruction shared by the lifecycle nodes: stop the critical worker
    (``_stop_worker``), then release what configure made (``_release``); each node defines the
    two."""

    def on_cleanup(self, state):
        from rclpy.lifecycle import TransitionCallbackReturn
        self._release()
        free_device_memory()
        self.get_logger().info('cleaned up (model freed)')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state):
        from rclpy.lifecycle import TransitionCallbackReturn
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self):
        self._stop_worker()
        self._release()
        return super().destroy_node()


def autostart(node):
    """A lifecycle node whose ``autostart`` parameter is true: configure and activate it
    (ValueError with the node's ``failure`` reason if configure fails)."""
    from rclpy.lifecycle import TransitionCallbackReturn
    params = getattr(node, 'params', None)
    if not hasattr(node, 'trigger_configure') or params is None or \
            'autostart' not in params.values:
        return
    if not params['autostart']:
        node.get_logger().info('autostart false: waiting for a lifecycle manager')
        return
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        raise ValueError(getattr(node, 'failure', '') or 'configure failed')
    node.trigger_activate()


def run_node(make_node, args=None, threads: int = 2, body=None, usage: Optional[str] = None):
    """``--help``: print ``usage`` and exit 0 without starting ROS. Otherwise rclpy init, build
    the node, bring a lifecycle node with ``autostart`` to active, spin it on a
    MultiThreadedExecutor (or run ``body(node)`` instead), and always destroy it and shut down
    cleanly (Ctrl-C included)."""
    if usage is not None and wants_help(args):
        sys.stdout.write(usage)
        raise SystemExit(0)
    # camera-sized messages need the shipped Fast DDS profile unless the user chose transports
    from fluxshard_msgs_py import dds
    dds.apply_default()
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
            autostart(node)
        except (ValueError, TypeError, FileNotFoundError, rclpy.exceptions.ParameterException,
                rclpy.exceptions.InvalidParameterTypeException) as e:
            rclpy.logging.get_logger('fluxshard').fatal(f'cannot start: {e}')
            raise SystemExit(2)
        if body is not None:
            body(node)
        else:
            executor = MultiThreadedExecutor(num_threads=threads)
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
