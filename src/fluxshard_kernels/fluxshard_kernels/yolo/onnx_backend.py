"""Dense YOLO11 inference through onnxruntime (the reference backend; CPU or CUDA provider)."""

import ast
import os
import time

import numpy as np

from fluxshard_kernels.yolo.processing import WARM_SHAPES, decode, Detections, letterbox

TASKS = ('detect', 'segment', 'pose')


class OnnxYolo:
    """A YOLO11 ONNX model (detect / segment / pose) with letterbox and decoding.

    Args:
        path: .onnx file exported by Ultralytics (metadata gives task, names, input size).
        conf, iou: detection thresholds.
        threads: intra-op threads (0 = onnxruntime default).
        spin: let the intra-op workers spin-wait after a run (onnxruntime's default). Off
            here: a node shares its cores (DDS, codecs, motion estimation, the engine) and a
            spinning pool keeps them busy for a while after each run, slowing whatever runs
            next (and any benchmark that interleaves onnxruntime with other work).
        device: 'cpu' or 'cuda[:N]' (the CUDA execution provider; ValueError where this
            onnxruntime has none).
    """

    def __init__(self, path: str, conf: float = 0.25, iou: float = 0.45, threads: int = 0,
                 device: str = 'cpu', spin: bool = False):
        if not os.path.isfile(path):
            raise FileNotFoundError(f'model file not found: {path}')
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry('session.intra_op.allow_spinning', '1' if spin else '0')
        providers = ['CPUExecutionProvider']
        if device.startswith('cuda'):
            if 'CUDAExecutionProvider' not in ort.get_available_providers():
                raise ValueError(f'device {device!r}: this onnxruntime has no CUDA execution '
                                 'provider (install onnxruntime-gpu, or use the incremental '
                                 'or dense backend, which run on CUDA through torch)')
            idx = int(device.split(':')[1]) if ':' in device else 0
            providers = [('CUDAExecutionProvider', {'device_id': idx}), 'CPUExecutionProvider']
        self.session = ort.InferenceSession(path, opts, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.task = meta.get('task', 'detect')
        if self.task not in TASKS:
            raise ValueError(f'{path}: unsupported task {self.task!r}')
        self.names = {int(k): v for k, v in ast.literal_eval(meta.get('names', '{}')).items()}
        self.imgsz = int(ast.literal_eval(meta.get('imgsz', '[640, 640]'))[0])
        shape = self.session.get_inputs()[0].shape
        self.dynamic = not all(isinstance(s, int) for s in shape[2:])
        self.nkpt = int(ast.literal_eval(meta.get('kpt_shape', '[0, 3]'))[0])
        self.conf, self.iou = conf, iou
        self.input_name = self.session.get_inputs()[0].name

    def warm_up(self, shapes=WARM_SHAPES) -> float:
        """Run on blank frames of each camera ``shape`` before the first real one; seconds."""
        t0 = time.perf_counter()
        for shape in shapes:
            self(np.zeros(tuple(shape) + (3,), np.uint8))
        return time.perf_counter() - t0

    def __call__(self, image_bgr: np.ndarray) -> Detections:
        """Detect on one BGR uint8 (H, W, 3) image; results in source pixels."""
        x, lb = letterbox(image_bgr, self.imgsz, square=not self.dynamic)
        t0 = time.perf_counter()
        outs = self.session.run(None, {self.input_name: x})
        self.last_inference_s = time.perf_counter() - t0
        protos = outs[1][0] if self.task == 'segment' else None
        return decode(outs[0][0], lb, len(self.names), self.conf, self.iou,
                      nkpt=self.nkpt if self.task == 'pose' else 0, protos=protos)
