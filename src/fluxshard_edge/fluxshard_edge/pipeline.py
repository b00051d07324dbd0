"""Edge-side per-frame logic without ROS: block extraction against the proxy, payload packing,
proxy update (paper Algorithm 1, steps 1 and 3-4).

The node (``edge_node.py``) feeds frames in and publishes what comes out.
"""

from dataclasses import dataclass, field
import time
from typing import Optional

import numpy as np

from fluxshard_kernels import proxy
from fluxshard_kernels.blocks import BlockGrid


@dataclass(frozen=True)
class EdgeConfig:
    """Edge parameters (see config/edge.yaml for units and meaning)."""

    edge_id: str = 'edge0'
    block_size: int = 16
    tau: float = 0.0
    codec: str = 'jpeg'
    quality: int = 90
    key_interval: int = 0

    def __post_init__(self):
        if self.block_size not in (8, 16, 32):
            raise ValueError(f'block_size must be 8, 16 or 32, got {self.block_size}')
        if self.codec not in proxy.CODEC_NAMES:
            raise ValueError(f'codec must be one of {sorted(proxy.CODEC_NAMES)}, '
                             f'got {self.codec!r}')
        if not 1 <= self.quality <= 100:
            raise ValueError(f'quality must be in 1..100, got {self.quality}')
        if self.tau < 0:
            raise ValueError(f'tau must be >= 0, got {self.tau}')


@dataclass
class EdgeStep:
    """What one frame produced: the update both proxies apply, and its wire form."""

    seq: int
    update: proxy.ProxyUpdate
    payload: bytes
    dissimilarity: np.ndarray
    digest: bytes
    key: bool
    codec: int
    quality: int
    key_reason: str = ''
    timings: dict = field(default_factory=dict)


def block_dissimilarity(a: np.ndarray, b: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """Per-block mean absolute difference D (paper section 4.1) of two (H, W, C) uint8 images.

    Partial border blocks average over their in-frame pixels only.

    Returns:
        (count,) float32 in [0, 255].
    """
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(axis=2, dtype=np.int32)
    ph, pw = grid.padded_shape
    pad = np.zeros((ph, pw), dtype=np.int32)
    pad[:grid.height, :grid.width] = diff
    sums = grid.block_view(pad).sum(axis=(1, 3), dtype=np.int64)
    ones = np.zeros((ph, pw), dtype=np.int32)
    ones[:grid.height, :grid.width] = 1
    area = grid.block_view(ones).sum(axis=(1, 3)) * a.shape[2]
    return (sums / area).astype(np.float32).reshape(-1)


class EdgePipeline:
    """Per-edge state: the proxy of the server's reference image and the batch sequence."""

    def __init__(self, config: EdgeConfig):
        self.config = config
        self.proxy: Optional[np.ndarray] = None
        self.seq = 0
        self.frames = 0
        self.last_key_seq = 0
        self._key_reason = 'first frame'

    def request_resync(self, reason: str, failed_seq: Optional[int] = None) -> bool:
        """Make the next batch a key batch; False when a key after ``failed_seq`` was sent."""
        if failed_seq is not None and failed_seq < self.last_key_seq:
            return False
        self._key_reason = reason
        return True

    def step(self, frame: np.ndarray) -> EdgeStep:
        """Build the batch for one (H, W, C) uint8 frame and apply it to the proxy.

        Raises:
            ValueError: frame not (H, W, 1|3) uint8.
        """
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (1, 3):
            raise ValueError(f'frame must be (H, W, 1|3) uint8, got {frame.shape} {frame.dtype}')
        cfg = self.config
        t0 = time.perf_counter()
        self.frames += 1
        grid = BlockGrid(frame.shape[0], frame.shape[1], cfg.block_size)
        key = self._key_reason != ''
        if not key and self.proxy is not None and self.proxy.shape != frame.shape:
            key, self._key_reason = True, (f'frame size changed from {self.proxy.shape} '
                                           f'to {frame.shape}')
        if not key and cfg.key_interval and self.frames % cfg.key_interval == 0:
            key, self._key_reason = True, 'periodic key'
        if key:
            ref = np.zeros_like(frame)
        else:
            ref = self.proxy
        d = block_dissimilarity(frame, ref, grid)
        if key:
            miss = np.arange(grid.count)
        else:
            miss = np.flatnonzero(d >= cfg.tau) if cfg.tau > 0 else np.arange(grid.count)
        order = miss[np.argsort(-d[miss], kind='stable')]
        t1 = time.perf_counter()
        codec = proxy.CODEC_NAMES[cfg.codec]
        payload, _, upd = proxy.build_update(frame, grid, order, codec, cfg.quality, key=key)
        t2 = time.perf_counter()
        new_state = proxy.apply(None if key else self.proxy, upd)
        dig = proxy.digest(new_state)
        t3 = time.perf_counter()
        self.proxy = new_state
        self.seq += 1
        reason = self._key_reason
        if key:
            self.last_key_seq = self.seq
            self._key_reason = ''
        return EdgeStep(self.seq, upd, payload, d[order], dig, key, codec, cfg.quality, reason,
                        {'extract_s': t1 - t0, 'encode_s': t2 - t1, 'proxy_s': t3 - t2})
