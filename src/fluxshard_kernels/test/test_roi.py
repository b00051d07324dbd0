"""Quality where results need it: x264 codes an ROI map's regions at the CRF and the rest
coarser (FFmpeg addroi side data), and both ends still decode the same frame."""

import cv2
import numpy as np
import pytest

from fluxshard_kernels import data, proxy
from fluxshard_kernels.codec_mv import RoiMap


@pytest.mark.parametrize('args, words', [
    (([(0, 0, 10, 10)], 1.5), 'offsets'), (([(0, 0, 10, 10)], float('nan')), 'offsets'),
    (([(0, 0, 10)], 0.3), r'\(x, y, w, h\[, qoffset\]\)'),
    (([(0, 0, float('inf'), 1)], 0.3), 'finite'),
    (([('a', 0, 1, 1)], 0.3), 'could not convert'), (([(0, 0, 5, 5, 2.0)], 0.3), 'offsets')])
def test_bad_roi_maps_are_refused_with_a_reason(args, words):
    with pytest.raises(ValueError, match=words):
        RoiMap(*args)


def test_regions_are_clipped_to_the_frame():
    r = RoiMap([(-10, -5, 30, 20), (800, 400, 100, 100), (900, 0, 5, 5)], 0.3)
    assert r.clipped(854, 480) == [(0, 0, 20, 15, 0.0), (800, 400, 54, 80, 0.0)]


def test_each_region_keeps_its_own_offset_and_the_finest_holds_an_overlap():
    """A large object coded coarser beside a small one at the CRF: the coarse one costs fewer
    bits inside it than at the CRF, the small one keeps its quality where they overlap."""
    r = RoiMap([(0, 0, 400, 300, 0.1), (350, 250, 100, 100)], 0.3)
    assert [q for *_, q in r.clipped(854, 480)] == [0.0, 0.1]  # the finest first
    f = next(data.iter_frames('davis-parkour', limit=1))
    psnr = {}
    for big in (0.0, 0.2):
        enc = proxy.InterEncoder()
        roi = RoiMap([(0, 0, 400, 300, big), (350, 250, 100, 100)], 0.3)
        _, mine = enc.encode(f, True, 23, roi)
        psnr[big] = (cv2.PSNR(f[0:240, 0:340], mine[0:240, 0:340]),
                     cv2.PSNR(f[260:340, 360:440], mine[260:340, 360:440]))
    assert psnr[0.2][0] < psnr[0.0][0] - 1.0, psnr  # the large region went coarser
    assert abs(psnr[0.2][1] - psnr[0.0][1]) < 0.5, psnr  # the small one did not


def test_the_background_costs_fewer_bits_and_the_regions_keep_their_quality():
    frames = list(data.iter_frames('davis-parkour', limit=8))
    box = (400, 0, 300, 300)  # x, y, w, h
    out = {}
    for bg in (0.0, 0.4):
        enc, dec = proxy.InterEncoder(), proxy.InterDecoder()
        nbytes, inside, outside = 0, [], []
        for i, f in enumerate(frames):
            au, mine = enc.encode(f, i == 0, 23, RoiMap([box], bg))
            theirs = dec.decode(au, *f.shape, i == 0)
            assert np.array_equal(mine, theirs)  # the proxy stays bit-exact on both ends
            if i:
                nbytes += len(au)
                inside.append(cv2.PSNR(f[0:300, 400:700], mine[0:300, 400:700]))
                outside.append(cv2.PSNR(f[300:, :400], mine[300:, :400]))
        out[bg] = (nbytes, np.mean(inside), np.mean(outside))
    (b0, in0, out0), (b1, in1, out1) = out[0.0], out[0.4]
    assert b1 < 0.8 * b0, out
    assert in1 > in0 - 0.5 and out1 < out0 - 2.0, out
