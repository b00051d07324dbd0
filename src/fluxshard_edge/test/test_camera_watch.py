"""The edge says once per silent stretch that its camera has a publisher but sends nothing."""

from fluxshard_edge.camera_watch import CameraWatch


def test_a_publisher_without_frames_is_reported_once_per_silent_stretch():
    w = CameraWatch(silent_s=5.0)
    assert w.update(0.0, 0, 0) is None            # no publisher: nothing to expect
    assert w.update(1.0, 1, 0) is None            # publisher appears: the clock starts
    assert w.update(5.5, 1, 0) is None            # 4.5 s
    told = w.update(6.0, 1, 0)                    # 5 s without a frame
    assert told and 'FASTDDS_DEFAULT_PROFILES_FILE' in told and 'no frame for 5 s' in told
    assert w.update(9.0, 1, 0) is None            # said once
    assert w.silent_for == 8.0
    assert w.update(10.0, 1, 3) is None and w.silent_for == 0.0   # frames arrive
    assert w.update(14.0, 1, 3) is None
    assert w.update(15.0, 1, 3)                   # silent again: said again
    assert w.update(16.0, 0, 3) is None and w.silent_for == 0.0   # publisher gone
