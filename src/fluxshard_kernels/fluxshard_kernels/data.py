"""Where the real data lives: video frame folders and model weights (see shared/data/MANIFEST.md).

The root is ``$FLUXSHARD_DATA`` when set, else the first ``shared/data`` or ``.data`` folder found
next to the current directory or one of its parents.
"""

import glob
import os
from pathlib import Path
from typing import Iterator, List, Optional

import cv2
import numpy as np

MODEL_FILES = {
    'detect': 'yolo11n.onnx',
    'segment': 'yolo11n-seg.onnx',
    'pose': 'yolo11n-pose.onnx',
}


def data_root() -> Path:
    """The data folder, or FileNotFoundError naming what was tried."""
    env = os.environ.get('FLUXSHARD_DATA')
    tried = []
    if env:
        if Path(env, 'video').is_dir() or Path(env, 'models').is_dir():
            return Path(env)
        tried.append(env)
    here = Path.cwd().resolve()
    for d in [here, *here.parents]:
        for cand in (d / 'shared' / 'data', d / '.data', d.parent / 'shared' / 'data'):
            if (cand / 'video').is_dir():
                return cand
            tried.append(str(cand))
    raise FileNotFoundError('no FluxShard data folder found (set FLUXSHARD_DATA or run '
                            'scripts/setup.sh); tried: ' + ', '.join(tried[:6]))


def model_path(task: str = 'detect') -> Path:
    """Path of the YOLO11n ONNX model for ``task`` (detect, segment, pose)."""
    if task not in MODEL_FILES:
        raise ValueError(f'unknown task {task!r}; choose from {sorted(MODEL_FILES)}')
    return data_root() / 'models' / MODEL_FILES[task]


def sequences() -> List[str]:
    """Names of the video sequences available (folders with a frames/ subfolder)."""
    root = data_root() / 'video'
    return sorted(p.parent.name for p in root.glob('*/frames'))


def frame_paths(sequence: str) -> List[str]:
    """Sorted JPEG/PNG frame files of a sequence (name or a folder path)."""
    d = Path(sequence)
    if not d.is_dir():
        d = data_root() / 'video' / sequence / 'frames'
    elif (d / 'frames').is_dir():
        d = d / 'frames'
    files = sorted(glob.glob(str(d / '*.jpg')) + glob.glob(str(d / '*.png')))
    if not files:
        raise FileNotFoundError(f'no frames in {d}')
    return files


def iter_frames(sequence: str, limit: Optional[int] = None) -> Iterator[np.ndarray]:
    """BGR uint8 frames of a sequence folder or a video file, in order."""
    if os.path.isfile(sequence):
        cap = cv2.VideoCapture(sequence)
        n = 0
        while limit is None or n < limit:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield frame
        cap.release()
        return
    for i, p in enumerate(frame_paths(sequence)):
        if limit is not None and i >= limit:
            break
        img = cv2.imread(p, cv2.IMREAD_COLOR)
        if img is None:
            raise IOError(f'cannot read frame {p}')
        yield img
