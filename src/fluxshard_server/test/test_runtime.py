"""The server runtime without ROS: admission, session, job table and the batch geometry, driven
by plain method calls with BlockBatch messages built the way the edge builds them."""

import numpy as np

from fluxshard_kernels import data, motion, proxy
from fluxshard_kernels.blocks import BlockGrid
from fluxshard_msgs.msg import BlockBatch, ProxyDelta
from fluxshard_msgs_py import auth, conversions
from fluxshard_server.admission import Budget
from fluxshard_server.inference import EdgeModel, load_model
from fluxshard_server.runtime import ServerRuntime


def _batches(block, signer=None, n=3):
    frames = list(data.iter_frames('davis-parkour', n))
    grid = BlockGrid(frames[0].shape[0], frames[0].shape[1], block)
    out, state = [], None
    for seq, f in enumerate(frames, 1):
        key = state is None
        if key:
            idx, mvx, mvy = np.arange(grid.count), None, None
        else:
            fld = motion.estimate_motion(f, state, block)
            idx = np.flatnonzero(fld.dissimilarity.reshape(-1) >= 10.0)
            mvx, mvy = fld.mv[..., 0].reshape(-1), fld.mv[..., 1].reshape(-1)
        payload, _, upd = proxy.build_update(f, grid, idx, proxy.CODEC_NAMES['jpeg'], 90,
                                             mvx, mvy, key)
        state = proxy.apply(None if key else state, upd)
        msg = conversions.update_to_msg(upd, payload, BlockBatch().header, 'robot1', seq, seq,
                                        proxy.CODEC_NAMES['jpeg'], 90,
                                        np.zeros(len(idx)), True, proxy.digest(state))
        out.append(signer.sign(msg) if signer else msg)
    return out, grid


def test_batches_become_acks_and_jobs_with_the_batch_geometry():
    key = auth.generate(['robot1'])
    shared = load_model('detect')
    rt = ServerRuntime(['robot1'], lambda: EdgeModel('incremental', 'detect', shared,
                                                     refresh_interval=1000), key, Budget(), 30.0)
    msgs, grid = _batches(8, auth.Signer(key['robot1'], 'block_batch'))
    recomputed = []
    for m in msgs:
        out = rt.on_batch('robot1', m)
        assert out.ack and out.job is not None and not out.rejected
        assert out.job.block_size == 8 and out.job.mv is None or \
            out.job.mv.shape == (grid.rows, grid.cols, 2)
        edge, job = rt.take_job(0.1)
        det, seconds, blocks = rt.infer(edge, job)
        recomputed.append(blocks)
    # the first batch (key) is computed whole, the others recompute exactly what they carried
    carried = [len(m.block_indices) or len(conversions.unpack_indices(
        bytes(m.indices_packed), grid.count)) for m in msgs[1:]]
    assert recomputed == [grid.count] + carried
    e = rt.edges['robot1']  # so the server added nothing, and its counters say so
    assert e.counters['blocks.drifted'] == e.counters['blocks.mixed'] == 0
    assert rt.counters['inferences'] == 3
    # a replay of an applied batch is refused before it costs anything
    out = rt.on_batch('robot1', msgs[1])
    assert out.refused and out.refused[0] == 'auth_replay'
    assert rt.rejects['auth_replay'] == 1


def test_a_gap_asks_for_a_resync_and_a_reset_unsyncs():
    rt = ServerRuntime(['robot1'], lambda: EdgeModel('none', 'detect'), None, Budget(), 30.0)
    msgs, _ = _batches(16)
    assert rt.on_batch('robot1', msgs[0]).ack
    out = rt.on_batch('robot1', msgs[2])  # seq 2 lost
    assert out.rejected[0] == 'seq_gap' and out.rejected[2]  # resync requested
    assert rt.on_delta('robot1', ProxyDelta(kind=ProxyDelta.KIND_RESET),
                       ProxyDelta.KIND_RESET) is None
    assert not rt.edges['robot1'].session.synced
