"""Server-side inference backends (no ROS): dense reference via onnxruntime, or none."""

from fluxshard_kernels import data


def load_backend(backend: str, task: str, path: str = '', conf: float = 0.25,
                 iou: float = 0.45, threads: int = 0):
    """Return a callable image_bgr -> Detections, or None for backend 'none'.

    Raises:
        ValueError: unknown backend; FileNotFoundError: missing model file.
    """
    if backend == 'none':
        return None
    if backend == 'onnxruntime':
        from fluxshard_kernels.yolo.onnx_backend import OnnxYolo
        model = OnnxYolo(path or str(data.model_path(task)), conf, iou, threads)
        if model.task != task:
            raise ValueError(f'model {path} is a {model.task!r} model, task is {task!r}')
        return model
    raise ValueError(f'unknown inference backend {backend!r} (onnxruntime, none)')
