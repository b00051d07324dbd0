"""The payload's CRF floor from the results (payload.target_retention): real onnxruntime on real
frames; the 'server result' is dense inference on the frame itself (the offloaded path lost
nothing) or on a ruined copy (it lost the objects)."""

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


@pytest.fixture(scope='module')
def frame():
    return next(data.iter_frames('davis-parkour', limit=1))


def test_the_floor_rises_while_results_hold_and_falls_when_they_do_not(onnx, frame):
    exact = onnx(frame)
    assert len(exact), 'the test frame must hold an object'
    qc = QualityControl(onnx, target=0.9, lo=20, hi=30, every=1, sync=True)
    seen = [qc.crf]
    for seq in range(8):  # results as good as the robot's: coarser every SETTLE samples
        qc.offer(seq, frame, qc.crf)
        qc.observe(seq, exact)
        seen.append(qc.crf)
    assert seen[-1] == 30 and seen == sorted(seen) and len(set(seen)) == 5, seen
    assert qc.last_retention == 1.0
    # a frame sent at another CRF (the link's, a key) is not probed
    qc.offer(100, frame, 25)
    qc.observe(100, onnx(np.zeros_like(frame)))
    assert qc.crf == 30 and qc.samples == 8
    # results that lost the objects: finer at once
    qc.offer(101, frame, qc.crf)
    qc.observe(101, onnx(cv2.blur(frame, (61, 61))))
    assert qc.last_retention < 0.9 and qc.crf == 30 - QualityControl.STEP_DOWN
    # a result that never comes (superseded on the server) does not hold the probes up
    for seq in range(200, 210):
        qc.offer(seq, frame, qc.crf)
    assert len(qc._pending) <= QualityControl.MAX_PENDING
    qc.bounds(20, 25)  # live payload.max_crf: the floor stays inside
    assert qc.crf == 25


def test_a_background_reference_is_taken_when_both_results_are_in(onnx, frame):
    qc = QualityControl(onnx, target=0.5, lo=20, hi=30, every=1)
    try:
        qc.offer(7, frame, 20)
        qc._pending[7][0].result(timeout=60)  # the reference pass, in the background
        assert qc.samples == 0
        qc.observe(7, onnx(frame))
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
def test_the_pipeline_codes_coarser_where_the_results_allow(onnx, target):
    """Offloaded H.264 frames of a moving clip, each answered by dense inference on the proxy
    the server holds: with a target the results keep, the unit's CRF rises from payload.crf
    (as a quantiser offset on the stream: no new key); target 0 keeps payload.crf."""
    frames = list(data.iter_frames('davis-parkour', limit=12))
    pipe = EdgePipeline(EdgeConfig(codec='h264', force_strategy='cloud', local_inference=False,
                                   crf=20, max_crf=30, target_retention=target,
                                   probe_interval=1, roi_qoffset=0.0))
    if target:
        pipe.quality.sync = True
    crfs, keys = [], 0
    for f in frames:
        s = pipe.step(f)
        assert s.sends and s.sparse_inference_requested
        keys += s.key
        pipe.observe_server_result(s.seq, onnx(pipe.proxy))
        crfs.append(pipe.crf)
    assert keys == 1  # the CRF moves without restarting the stream
    if target:
        assert crfs[-1] > 20 and pipe.last_roi.background > 0, crfs
    else:
        assert pipe.quality is None and set(crfs) == {20}
