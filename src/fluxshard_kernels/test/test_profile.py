"""Device profiles: the latency fit, the file format, and a real measurement of the engine."""

import json

import numpy as np
import pytest

from fluxshard_kernels import profile as P


def test_fit_recovers_a_convex_model_and_stays_non_negative():
    ks = np.array([0, 20, 50, 100, 200, 400], float)
    a, b, c = P.fit_quadratic(ks, 2e-7 * ks ** 2 + 3e-4 * ks + 0.05)
    assert np.allclose((a, b, c), (2e-7, 3e-4, 0.05), rtol=1e-6, atol=1e-12)
    a, b, c = P.fit_quadratic(ks, 0.3 - 1e-4 * ks)  # falling times: no negative slope
    assert a < 1e-12 and b == 0 and c > 0
    with pytest.raises(ValueError, match='3 distinct'):
        P.fit_quadratic([1, 1, 2], [0.1, 0.1, 0.2])


def test_profile_file_round_trips_and_bad_files_say_what_to_do(tmp_path):
    f = str(tmp_path / 'p.json')
    P.PAPER.save(f)
    assert P.DeviceProfile.load(f) == P.PAPER
    assert P.PAPER.edge.sparse_s(10 ** 6) == P.PAPER.edge.dense_s  # never above dense
    (tmp_path / 'bad.json').write_text(json.dumps({'kind': 'measured'}))
    with pytest.raises(ValueError, match='fluxshard_kernels.profile --out'):
        P.DeviceProfile.load(str(tmp_path / 'bad.json'))
    with pytest.raises(ValueError, match='no CUDA|cpu'):
        P.resolve_device('cuda' if not _cuda() else 'tpu')
    assert P.resolve_device('auto') == ('cuda' if _cuda() else 'cpu')


def _cuda():
    import torch
    return torch.cuda.is_available()


def test_measured_profile_of_this_machine(tmp_path):
    """A real fit on real frames: the engine's step at several k, its dense pass and
    onnxruntime dense, interleaved; written, read back and described."""
    prof = P.measure('detect', 'davis-parkour', frames=3, fracs=(0.0, 0.05, 0.2, 0.5),
                     edge_threads=2, server_threads=2)
    assert prof.kind == 'measured' and 'thread' in prof.label
    assert prof.server == prof.edge  # same machine, same threads: measured once
    e = prof.edge
    assert e.c > 0 and e.a >= 0 and e.b >= 0
    assert e.dense_s == prof.meta['edge_onnxruntime_dense_s'] > 0
    assert e.engine_s == prof.meta['edge_engine_dense_s'] > 0
    assert len(prof.meta['edge_samples']) == 2 * 4 and prof.edge_overhead_s > 0
    prof.save(str(tmp_path / 'm.json'))
    back = P.DeviceProfile.load(str(tmp_path / 'm.json'))
    assert back.edge == e and back.label == prof.label
    text = P.describe(back)
    assert 'onnxruntime' in text and '| edge |' in text and '| server |' in text
