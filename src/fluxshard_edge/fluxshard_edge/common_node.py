"""rclpy glue shared by the FluxShard nodes: parameter declaration with descriptors, QoS."""

from typing import Any, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
import rclpy.exceptions
import rclpy.logging
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)


def camera_qos(reliability: str, depth: int = 1) -> QoSProfile:
    """Camera input, depth 1 (latest frame wins).

    Best effort matches every publisher, but Fast DDS loses most best-effort frames of ~1 MB
    between processes (README, "DDS and big messages"), so the default is reliable; cameras that
    publish best effort need ``camera.reliability: best_effort``.
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


def declare(node: Node, name: str, default: Any, description: str, *,
            lo: Optional[float] = None, hi: Optional[float] = None,
            choices: Optional[list] = None, read_only: bool = False) -> Any:
    """Declare one parameter with a descriptor (range / allowed values) and return its value."""
    desc = ParameterDescriptor(description=description, read_only=read_only)
    is_float = isinstance(default, float)
    if is_float:
        desc.dynamic_typing = True  # accept 600 where 600.0 is meant (a classic YAML slip)
    if lo is not None and hi is not None:
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo),
                                                            to_value=float(hi), step=0.0)]
    if choices:
        desc.additional_constraints = 'one of: ' + ', '.join(map(str, choices))
    value = node.declare_parameter(name, default, desc).value
    if is_float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'parameter {name}={value!r}: must be a number')
        value = float(value)
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise ValueError(f'parameter {name}={value}: must be in [{lo}, {hi}]')
    if choices and value not in choices:
        raise ValueError(f'parameter {name}={value!r}: must be one of {choices}')
    return value


class ReasonLog:
    """Error logging throttled per reason: the first of each reason is logged at once, repeats
    at most once per ``period`` s with the number suppressed meanwhile (counters keep all)."""

    def __init__(self, logger, period: float = 1.0):
        self._logger, self._period = logger, period
        self._last, self._held = {}, {}

    def error(self, reason: str, message: str):
        import time
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) >= self._period:
            held = self._held.pop(reason, 0)
            extra = f' ({held} more like this suppressed)' if held else ''
            self._logger.error(message + extra)
            self._last[reason] = now
        else:
            self._held[reason] = self._held.get(reason, 0) + 1


def run_node(make_node, args=None, threads: int = 2, body=None):
    """rclpy init, build the node, spin it on a MultiThreadedExecutor (or run ``body(node)``
    instead), and always destroy it and shut down cleanly (Ctrl-C included)."""
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
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
