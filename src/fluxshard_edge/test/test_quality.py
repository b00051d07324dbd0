"""The payload's CRF floor from the results (payload.target_retention): real onnxruntime on real
frames, the proxy identical to the frame (the codec costs nothing) or degraded (it costs the
detections)."""

import cv2
import numpy as np
import pytest

from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
from fluxshard_edge.quality import QualityControl
from fluxshard_kernels import data
from fluxshard_kernels.yolo.onnx_backend import OnnxYolo


@pytest.fixture(scope='module')
def onnx():
    return OnnxYolo(str(data.model_path('detect')), threads=2)


def test_the_floor_rises_while_results_hold_and_falls_when_they_do_not(onnx):
    frame = next(data.iter_frames('davis-parkour', limit=1))
    assert len(onnx(frame)), 'the test frame must hold an object'
    qc = QualityControl(onnx, target=0.9, lo=20, hi=30, every=1, sync=True)
    seen = [qc.crf]
    for _ in range(8):  # an exact proxy: retention 1.0, coarser after every SETTLE samples
        qc.offer(frame, frame, qc.crf)
        seen.append(qc.crf)
    assert seen[-1] == 30 and seen == sorted(seen) and len(set(seen)) == 5, seen
    assert qc.last_retention == 1.0
    # a sample measured at another CRF (before a change took effect) is not counted
    qc.offer(frame, np.zeros_like(frame), 25)
    assert qc.crf == 30
    # a proxy that loses the objects: finer at once
    ruined = cv2.blur(frame, (61, 61))
    qc.offer(frame, ruined, qc.crf)
    assert qc.last_retention < 0.9 and qc.crf == 30 - QualityControl.STEP_DOWN
    qc.bounds(20, 25)  # live payload.max_crf: the floor stays inside
    assert qc.crf == 25


def test_a_background_probe_is_taken_at_a_later_frame(onnx):
    frame = next(data.iter_frames('davis-parkour', limit=1))
    qc = QualityControl(onnx, target=0.5, lo=20, hi=30, every=1)
    try:
        qc.offer(frame, frame, 20)
        qc._job.result(timeout=60)  # done in the background; poll takes it
        assert qc.samples == 0
        qc.poll()
        assert qc.samples == 1 and qc.last_retention == 1.0
    finally:
        qc.close()


def test_bad_targets_are_refused(onnx):
    with pytest.raises(ValueError, match='target retention'):
        QualityControl(onnx, 1.5, 20, 30)
    with pytest.raises(ValueError, match='probe interval'):
        QualityControl(onnx, 0.9, 20, 30, every=0)
    with pytest.raises(ValueError, match='target_retention'):
        EdgeConfig(target_retention=-0.1)


@pytest.mark.parametrize('target', [0.0, 0.5])
def test_the_pipeline_codes_coarser_where_the_results_allow(target):
    """Offloaded H.264 frames of a moving clip: with a target the proxy keeps, the unit's CRF
    rises from payload.crf (as a quantiser offset on the stream: no new key) and the units
    shrink; target 0 keeps payload.crf."""
    frames = list(data.iter_frames('davis-parkour', limit=12))
    pipe = EdgePipeline(EdgeConfig(codec='h264', force_strategy='cloud', local_inference=False,
                                   crf=20, max_crf=30, target_retention=target,
                                   probe_interval=1, roi_qoffset=0.0))
    pipe.quality_sync = True
    crfs, keys = [], 0
    for f in frames:
        s = pipe.step(f)
        assert s.sends
        keys += s.key
        crfs.append(pipe.crf)
    assert keys == 1  # the CRF moves without restarting the stream
    if target:
        assert crfs[-1] > 20 and pipe.last_roi.background > 0, crfs
    else:
        assert pipe.quality is None and set(crfs) == {20}
