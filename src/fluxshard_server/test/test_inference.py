"""The server's per-edge incremental model keeps following the edge's motion vectors across a
background refresh (the refresh's caches describe the batch it started on)."""

import numpy as np

from fluxshard_kernels import data, motion, proxy
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_server.inference import background_paused, EdgeModel, load_model


def _proxy_stream(n):
    """Proxy states as the server gets them: each frame's misses over the MV-warped previous
    state, with the batch's MV field."""
    frames = list(data.iter_frames('davis-parkour', n))
    grid = BlockGrid(frames[0].shape[0], frames[0].shape[1], 16)
    state, out = frames[0], [(frames[0], None)]
    for f in frames[1:]:
        fld = motion.estimate_motion(f, state, 16)
        mvx, mvy = fld.mv[..., 0].reshape(-1), fld.mv[..., 1].reshape(-1)
        warped = proxy.warp_image_int(state, grid, mvx, mvy)
        miss = fld.dissimilarity.reshape(-1) >= 10.0
        state = warped.copy()
        for i in np.flatnonzero(miss):
            r, c = divmod(int(i), grid.cols)
            state[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = f[r * 16:(r + 1) * 16,
                                                                c * 16:(c + 1) * 16]
        out.append((state, fld.mv))
    return out, grid


def test_refresh_then_motion_vectors_still_used():
    stream, grid = _proxy_stream(5)
    em = EdgeModel('incremental', 'detect', load_model('detect'), refresh_interval=2)
    blocks = []
    for seq, (state, mv) in enumerate(stream, 1):
        em(state, seq, mv, seq - 1 if seq > 1 else None)
        blocks.append(em.last_blocks)
        if em.refresh.running:
            em.refresh.thread.join()  # let the background refresh finish before the next batch
    em.close()
    assert em.refresh.completed >= 1
    assert blocks[0] == grid.count
    # after each refresh the next batch recomputes only what its MVs do not explain
    assert max(blocks[1:]) < 0.6 * grid.count, blocks


def test_pause_background_holds_a_running_refresh_until_resumed():
    import time
    stream, _ = _proxy_stream(2)
    em = EdgeModel('incremental', 'detect', load_model('detect'), refresh_interval=1)
    em(stream[0][0], 1, None, None)
    em(stream[1][0], 2, stream[1][1], 1)  # starts a refresh (interval 1)
    assert em.refresh.running
    done = em.refresh.completed
    with background_paused([em]):  # another edge's job runs
        time.sleep(0.5)
        assert em.refresh.running and em.refresh.completed == done  # parked at a layer
    em.refresh.thread.join(30)
    assert em.refresh.completed == done + 1
    em.close()
