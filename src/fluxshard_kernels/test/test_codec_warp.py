"""Codec MVs from a real H.264 stream, and bilinear feature warping."""

import numpy as np
import pytest
import torch

from fluxshard_kernels import blocks, codec_mv, data, warp
from fluxshard_kernels.blocks import BlockGrid


def test_codec_mvs_reduce_warp_error_and_mark_intra(tmp_path):
    frames = list(data.iter_frames('davis-parkour', limit=5))
    path = tmp_path / 'clip.mp4'
    assert codec_mv.encode_h264(frames, path) == 5
    n_fields = 0
    prev = None
    for img, field in codec_mv.decode_with_motion(path, 16):
        if field is not None:
            n_fields += 1
            w = blocks.warp_image_int(prev, field.grid, field.mv_x, field.mv_y)
            err = np.abs(w.astype(int) - img).mean()
            none = np.abs(prev.astype(int) - img).mean()
            assert err < 0.6 * none, (err, none)
            intra = field.dissimilarity >= 255
            assert 0 <= intra.mean() < 0.5
            assert field.mv.shape == (field.grid.rows, field.grid.cols, 2)
        prev = img
    assert n_fields == 4  # every P-frame after the I-frame


def test_rasterize_hand_checked():
    dt = [('source', 'i4'), ('w', 'u1'), ('h', 'u1'), ('src_x', 'i2'), ('src_y', 'i2'),
          ('dst_x', 'i2'), ('dst_y', 'i2'), ('flags', 'u8'), ('motion_x', 'i4'),
          ('motion_y', 'i4'), ('motion_scale', 'u2')]
    # one 16x16 partition at block (0, 0) moving (+3, -2) px; block (0, 1) has no vector
    mvs = np.array([(-1, 16, 16, 11, 6, 8, 8, 0, 12, -8, 4)], dtype=dt)
    mv, cov = codec_mv.rasterize(mvs, BlockGrid(16, 32, 16))
    assert mv[0, 0].tolist() == [3, -2] and cov[0, 0] == 1.0
    assert cov[0, 1] == 0.0


@pytest.mark.parametrize('stride', [1, 2, 4, 8])
def test_feature_warp_matches_integer_warp_when_mvs_divide(stride):
    rng = np.random.default_rng(stride)
    h, w = 64, 96
    grid = BlockGrid(h, w, 16)
    mv = (rng.integers(-3, 4, (grid.rows, grid.cols, 2)) * stride).astype(np.int32)
    feat = torch.randn(1, 5, h // stride, w // stride)
    out = warp.warp_features(feat, mv, grid, stride)
    # reference: integer warp on the feature grid with MVs / stride
    fg = BlockGrid(h // stride, w // stride, 16 // stride)
    ref = blocks.warp_image_int(feat[0].permute(1, 2, 0).numpy(), fg,
                                (mv[..., 0] // stride).reshape(-1),
                                (mv[..., 1] // stride).reshape(-1))
    assert np.allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=1e-4)


def test_feature_warp_is_bilinear_for_fractional_motion():
    grid = BlockGrid(16, 16, 16)
    feat = torch.arange(8, dtype=torch.float32).repeat(8, 1)[None, None]  # value = x, 16px / 2
    out = warp.warp_features(feat, np.array([[[1, 0]]], np.int32), grid, 2)  # 0.5 px at /2
    assert torch.allclose(out[0, 0, 0, :7], torch.arange(7, dtype=torch.float32) + 0.5)
    assert out[0, 0, 0, 7] == 7.0  # clamped at the border


def test_h264_access_units_round_trip_with_motion_vectors():
    frames = list(data.iter_frames('davis-bmx-trees', limit=4))
    enc = codec_mv.H264Encoder(frames[0].shape[1], frames[0].shape[0])
    dec = codec_mv.H264Decoder()
    got = [dec.decode(enc.encode(f)) for f in frames]
    assert all(len(g) == 1 for g in got)          # zero latency: one frame per unit
    assert got[0][0][1] is None and all(g[0][1] is not None for g in got[1:])
    assert np.abs(got[2][0][0].astype(int) - frames[2]).mean() < 6
    with pytest.raises(ValueError, match='undecodable'):
        codec_mv.H264Decoder().decode(b'\x00\x00\x00\x01\x65garbage')
