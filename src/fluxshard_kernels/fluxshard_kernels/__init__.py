"""FluxShard motion-aware cache engine.

Imports neither rclpy nor CUDA: GPU backends are probed lazily (``fluxshard_kernels.backend``).
"""

__version__ = '0.1.0'
