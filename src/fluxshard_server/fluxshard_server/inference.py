"""Server-side inference (no ROS, paper Algorithm 2 steps 3-4): per edge, incremental YOLO11 over
the MV-warped server cache, recomputing the blocks the proxy edge state changed, with a
preemptible background refresh from the proxy edge state. Dense torch and onnxruntime backends
are kept as references; ``auto`` runs, frame by frame, whichever of the incremental pass and
onnxruntime dense its measured costs predict to be faster (so the server is never slower than
the best dense runtime on its machine)."""

from contextlib import contextmanager
import time
from typing import Optional

import numpy as np

from fluxshard_kernels import data
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.motion import MIXED_PX, MotionField
from fluxshard_kernels.paths import PathCosts, PROBE_EVERY  # noqa: F401 - re-exported

BACKENDS = ('auto', 'incremental', 'dense', 'onnxruntime', 'none')
#: Default of EdgeModel.recompute_tau (server parameter model.recompute_tau), 8-bit levels.
RECOMPUTE_TAU = 3.0
#: Where the server's drift test looks (server parameter model.drift_scope): 'objects' = the
#: blocks of the last step's candidate objects (every anchor scoring >= DRIFT_CONF, before NMS,
#: so an object the stale cache scores low stays in scope), moved by the batch's block motion
#: and grown by a block (elsewhere a drifted block waits for the background refresh, at most
#: refresh_interval batches); 'frame' = every block. Measured on 60 frames of every clip
#: (docs/evaluation.md, the payload table): 'objects' halves what the server recomputes on the
#: moving clips for retention within 1.4 points on each; at DRIFT_CONF 0.1 it lost davis-bmx-
#: trees 6.6 points (objects the stale features scored under 0.1).
DRIFT_SCOPES = ('objects', 'frame')
DRIFT_SCOPE = 'objects'
DRIFT_CONF = 0.02
#: Share of changed blocks above which a frame runs dense (the sparse pass is slower there).
DENSE_ABOVE = 0.5


def load_model(task: str, path: str = '', device: str = 'cpu'):
    """The YOLO11 torch model for ``task`` (the one loader both sides use: ONNX or an
    Ultralytics .pt, task checked against the file's metadata)."""
    from fluxshard_kernels.yolo import model as M
    return M.load(task, path, device)


class EdgeModel:
    """Inference for one edge: call with the proxy edge state after batch ``seq``.

    Args:
        backend: 'incremental', 'dense', 'onnxruntime' or 'none'.
        model: a loaded YOLO11 (shared between edges; torch modules are stateless here).
        refresh_interval: batches between background dense refreshes (incremental only).
        recompute_tau: incremental only: besides the blocks a batch names, recompute every
            block whose pixels differ from the image the caches describe (warped by the
            batch's MVs) by a mean absolute error >= this (0 = only the named blocks). The
            proxy of an inter-coded payload changes a little everywhere; this is the server's
            own feature-reuse decision, apart from what the edge transmitted.
        drift_scope: which blocks the drift test looks at (``DRIFT_SCOPES``).
        mixed_px: incremental only: in a still scene (a still camera, shaking by a pixel or
            not), also recompute the blocks next to a motion edge of >= this many px in
            the batch's field (``MotionField.mixed``; 0 = off). The features there mix a
            mover with the background it crosses, which no warp keeps, while the pixels
            match: the edge need not send them (the proxy holds them), so the server decides
            this from the field it warps its caches by. A field the server matches between
            two proxy states is as clean as one between true frames (bgs-highway: 91 % of
            blocks still in both); one the edge searched against the proxy is not (43 %),
            and there the gate stays shut.
    """

    def __init__(self, backend: str, task: str, model=None, path: str = '',
                 conf: float = 0.25, iou: float = 0.45, threads: int = 0,
                 refresh_interval: int = 10, cam_block: int = 16,
                 recompute_tau: float = RECOMPUTE_TAU, device: str = 'cpu',
                 profile=None, drift_scope: str = DRIFT_SCOPE, mixed_px: float = MIXED_PX):
        if backend not in BACKENDS:
            raise ValueError(f'unknown inference backend {backend!r} ({", ".join(BACKENDS)})')
        self.backend, self.task, self.conf, self.iou = backend, task, conf, iou
        self.cam_block = cam_block
        self.refresh_interval = refresh_interval
        if recompute_tau < 0:
            raise ValueError(f'recompute_tau must be >= 0, got {recompute_tau}')
        self.recompute_tau = recompute_tau
        if drift_scope not in DRIFT_SCOPES:
            raise ValueError(f'unknown drift scope {drift_scope!r} ({", ".join(DRIFT_SCOPES)})')
        self.drift_scope = drift_scope
        if mixed_px < 0:
            raise ValueError(f'mixed_px must be >= 0, got {mixed_px}')
        self.mixed_px = mixed_px
        self.last_mixed = 0
        # candidate objects of the last step (drift_scope objects; none yet after a switch to
        # it, so one frame tests no drift)
        self._last_boxes = np.zeros((0, 4), np.float32)
        self.last_drifted = 0
        self.names = {}
        self.model = model
        self.runner = self.refresh = None
        self._last_seq = -1
        self._refresh_from = None  # (seq whose state the running refresh describes, count)
        self._since_refresh = 0
        self.last_blocks = 0
        self.costs = PathCosts() if backend == 'auto' else None
        self._measure_next = self._measured_after_sync = False
        self._cold = False  # the runner was (re)built: its first step allocates, not a sample
        if self.costs is not None and profile is not None:  # a DeviceProfile: its server role
            grid = BlockGrid(profile.frame[0], profile.frame[1], profile.block)
            self.costs.seed(profile.server, grid.count)
        self.last_path = backend
        self.onnx = None
        if backend in ('onnxruntime', 'auto'):
            from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
            try:
                self.onnx = OnnxYolo(path or str(data.model_path(task)), conf, iou, threads,
                                     device)
                self.names = self.onnx.names
            except ValueError:
                if backend == 'onnxruntime':
                    raise
                # auto on a GPU without onnxruntime's CUDA provider: torch dense on the GPU
        if backend in ('incremental', 'dense', 'auto'):
            self.model = model or load_model(task, path, device)
            self.names = self.model.names
            if backend in ('incremental', 'auto'):
                from fluxshard_kernels.incremental import IncrementalYOLO
                from fluxshard_kernels.refresh import Refresh
                self.runner = IncrementalYOLO(self.model, 16)
                self.refresh = Refresh(self.runner)

    def __call__(self, state: np.ndarray, seq: int, mv: Optional[np.ndarray] = None,
                 prev_seq: Optional[int] = None, block_size: Optional[int] = None,
                 changed: Optional[np.ndarray] = None):
        """Detections for the proxy image ``state`` (BGR) after batch ``seq``.

        The geometry comes from the batch: ``block_size`` is its camera block edge, ``mv``
        its (rows, cols, 2) block MVs and ``changed`` the blocks it carried. When the cache
        describes the state of batch ``prev_seq`` (normally seq - 1), the cache is warped by
        ``mv`` and exactly ``changed`` is recomputed; otherwise (a batch was superseded in the
        job table, or a refresh swapped in an older state) the cache is brought up to date by
        recomputing every block that differs from it.
        """
        from fluxshard_kernels.yolo.processing import Detections
        img = state if state.shape[2] == 3 else np.repeat(state, 3, axis=2)
        t0 = time.perf_counter()
        self.last_drifted = self.last_mixed = 0  # what this frame adds (a dense one: none)
        if self.backend == 'none':
            self.last_blocks = 0
            return Detections()
        if self.backend == 'onnxruntime':
            self.last_blocks = BlockGrid(img.shape[0], img.shape[1], self.cam_block).count
            return self.onnx(img)
        if self.backend == 'dense':
            self.last_blocks = BlockGrid(img.shape[0], img.shape[1], self.cam_block).count
            return self._torch_dense(img)
        if self.backend == 'auto':
            return self._auto(img, seq, mv, prev_seq, block_size, changed, t0)
        return self._incremental(img, seq, mv, prev_seq, block_size, changed, t0)

    def warm_up(self, shapes=None) -> float:
        """Run every path this backend may take on blank frames before the first real one
        (kernels built, buffers allocated); returns the seconds it took."""
        from fluxshard_kernels.yolo.processing import WARM_SHAPES
        t0 = time.perf_counter()
        shapes = shapes or WARM_SHAPES
        if self.onnx is not None:
            self.onnx.warm_up(shapes)
        if self.runner is not None:
            self.runner.warm_up(shapes)
        elif self.backend == 'dense' and self.model is not None:
            for shape in shapes:
                self._torch_dense(np.zeros(tuple(shape) + (3,), np.uint8))
        return time.perf_counter() - t0

    def _torch_dense(self, img):
        from fluxshard_kernels.yolo.processing import letterbox
        import torch
        x, lb = letterbox(img, 640)
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            raw = self.model(torch.from_numpy(x).to(dev))
        return self.model.decode(raw, lb, self.conf, self.iou)

    def _auto(self, img, seq, mv, prev_seq, block_size, changed, t0):
        """The cheaper path for this frame by measured cost; each path re-measured every
        PROBE_EVERY frames of the other. Frames served by onnxruntime leave the incremental
        caches behind: the next incremental frame brings them up to date first (a dense
        resync, which says nothing of a step's cost), so the frame after it runs incremental
        too - a probe measures a real step."""
        k = len(changed) if changed is not None else None
        if self._measure_next:
            self._measure_next = False
            path = 'incremental'
            self.costs.note(path)
        else:
            path = self.costs.choose(k)
        self.last_path = path
        if path == 'incremental':
            det = self._incremental(img, seq, mv, prev_seq, block_size, changed, t0)
            if self.last_stepped:  # a frame of a consecutive run (not a resync): a sample
                # keyed by the blocks the batch named, as the choice is: the model then
                # includes what the server adds (drift) and the dense passes it falls back to
                self.costs.observe_incremental(k if k is not None else self.last_blocks,
                                               self.last_seconds)
            else:
                self._measure_next = not self._measured_after_sync
                self._measured_after_sync = self._measure_next
            return det
        if self.refresh.running:
            self.refresh.cancel()
        self._last_seq = -1  # the caches no longer describe the latest state
        det = self.onnx(img) if self.onnx is not None else self._torch_dense(img)
        self.last_blocks = BlockGrid(img.shape[0], img.shape[1], self.cam_block).count
        self.last_seconds = time.perf_counter() - t0
        self.costs.observe_dense(self.last_seconds)
        return det

    def _incremental(self, img, seq, mv, prev_seq, block_size, changed, t0):
        self.last_stepped = False
        if self.refresh.running:
            self.refresh.pause()
        if self._refresh_from is not None and self.refresh.completed > self._refresh_from[1]:
            # the refresh swapped in caches that describe the state of the batch it started on
            self._last_seq, self._refresh_from = self._refresh_from[0], None
        r = self.runner
        block = int(block_size or self.cam_block)
        grid = BlockGrid(img.shape[0], img.shape[1], block)
        if mv is not None and np.asarray(mv).shape[:2] != (grid.rows, grid.cols):
            raise ValueError(f'motion field {np.asarray(mv).shape[:2]} does not match the '
                             f'{grid.rows}x{grid.cols} grid of {block}-px blocks')
        if r.state is None or r.state.shape != img.shape:
            self._cold = True  # a new runner: its first step allocates
            raw, lb, _ = r.dense(img)
            self.last_blocks = grid.count
        else:
            consecutive = (prev_seq is not None and prev_seq == self._last_seq
                           and changed is not None)
            if not consecutive:
                mv = None
                diff = np.abs(r.state.astype(np.int16) - img.astype(np.int16)).max(axis=2)
                changed = np.flatnonzero(grid.block_view(grid.pad(diff)).max(axis=(1, 3)))
            changed = np.asarray(changed, dtype=np.int64)
            if consecutive and self.recompute_tau > 0:
                drifted = np.setdiff1d(self._drifted(r.state, img, mv, grid), changed)
                self.last_drifted = int(drifted.size)
                changed = np.union1d(changed, drifted)
            if consecutive and self.mixed_px > 0 and mv is not None:
                mixed = np.setdiff1d(np.flatnonzero(
                    MotionField(grid, np.asarray(mv), None).mixed(self.mixed_px)), changed)
                self.last_mixed = int(mixed.size)
                changed = np.union1d(changed, mixed)
            if changed.size > DENSE_ABOVE * grid.count:
                # most blocks changed: one dense pass is cheaper than the sparse one, exact,
                # and renews every cache
                raw, lb, _ = r.dense(img)
                self.last_blocks = grid.count
                self.last_stepped = consecutive and not self._cold
                self._cold = False
            else:
                raw, lb, self.last_stats = r.step(img, mv, changed, block)
                self.last_blocks = int(changed.size)
                self.last_stepped = consecutive and not self._cold
                self._cold = False
                if self.last_stepped:
                    self._measured_after_sync = False
        self._last_seq = seq
        det = self.model.decode(raw, lb, self.conf, self.iou)
        if self.drift_scope == 'objects':  # where the next drift test looks
            from fluxshard_kernels.yolo.processing import candidate_boxes
            out = (raw[0] if self.task == 'segment' else raw)[0].cpu().numpy()
            self._last_boxes = candidate_boxes(out, lb, len(self.names),
                                               min(DRIFT_CONF, self.conf))
        else:
            self._last_boxes = self._last_boxes[:0]
        self.last_seconds = time.perf_counter() - t0
        self._since_refresh += 1
        if self.refresh.running:
            self.refresh.resume()
        elif self._since_refresh >= max(1, self.refresh_interval):
            self._since_refresh = 0
            self._refresh_from = (seq, self.refresh.completed)
            self.refresh.start(img)
        return det

    def _drifted(self, cached: np.ndarray, img: np.ndarray, mv, grid: BlockGrid) -> np.ndarray:
        """Blocks (of ``drift_scope``) where ``img`` differs from the caches' image ``cached``
        moved by ``mv`` by a mean absolute error >= recompute_tau."""
        from fluxshard_kernels.blocks import block_dissimilarity, warp_image_int
        from fluxshard_kernels.salience import object_blocks
        scope = None
        if self.drift_scope == 'objects':
            scope = object_blocks(self._last_boxes, grid, mv)
            if not scope.any():
                return np.zeros(0, np.int64)
        if mv is not None and np.any(mv):
            m = np.asarray(mv).reshape(-1, 2)
            cached = warp_image_int(cached, grid, m[:, 0], m[:, 1])
        drift = block_dissimilarity(img, cached, grid) >= self.recompute_tau
        return np.flatnonzero(drift if scope is None else drift & scope)

    def pause_background(self):
        """Hold this edge's refresh at its next layer boundary (another edge's critical job
        is about to run on the shared device)."""
        if self.refresh is not None and self.refresh.running:
            self.refresh.pause()

    def resume_background(self):
        if self.refresh is not None and self.refresh.running:
            self.refresh.resume()

    def close(self):
        if self.refresh is not None:
            self.refresh.cancel()


@contextmanager
def background_paused(models):
    """Hold the background refresh of every model in ``models`` (each yields within one layer)
    for the duration: the critical job of another edge runs first on the shared device."""
    for m in models:
        m.pause_background()
    try:
        yield
    finally:
        for m in models:
            m.resume_background()
