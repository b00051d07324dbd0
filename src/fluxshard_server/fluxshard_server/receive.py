"""What the server does with one BlockBatch before inference (paper Algorithm 2, step 2),
without ROS: decode it, offer it to the edge's session (sequence, stamp and digest checks,
proxy apply), and say what follows - a counted rejection, a resync request, an ACK, and the
incremental-inference job. ``server_node`` and the evaluation harness both use it."""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from fluxshard_msgs_py import conversions
from fluxshard_kernels import motion, proxy
from fluxshard_server.session import EdgeSession, Outcome


@dataclass
class Received:
    """Result of ``receive_batch``.

    Attributes:
        outcome: the session's verdict (``counter`` non-empty: count and log a rejection;
            ``resync``: ask the edge for a key batch).
        mv: (rows, cols, 2) camera-block MVs of the batch, or None.
        prev_seq: the batch the incremental cache should move from (None after a key).
        infer: applied cleanly and the edge asked for sparse inference.
        block_size: the batch's camera block edge, pixels (8, 16 or 32; from the message).
        changed: camera blocks the batch carried (``block_indices``): with ``mv``, exactly
            where the new proxy state differs from the previous one warped.
        matched: ``mv`` was not sent but matched here, between the proxy states before and
            after the batch (``payload.send_motion`` false).
    """

    outcome: Outcome
    mv: Optional[np.ndarray] = None
    prev_seq: Optional[int] = None
    infer: bool = False
    block_size: int = 16
    changed: Optional[np.ndarray] = None
    matched: bool = False

    @property
    def acked(self) -> bool:
        return self.outcome.applied and not self.outcome.resync


def receive_batch(session: EdgeSession, msg) -> Received:
    """Decode ``msg`` (fluxshard_msgs/BlockBatch) and offer it to ``session``; malformed input
    of any kind becomes a 'bad_batch' rejection with a resync request, never an exception."""
    stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    inter = msg.codec == proxy.CODEC_H264
    if inter:  # the decoder may only see units the session applies (its reference)
        refused = session.admit(int(msg.seq), bool(msg.key), bytes(msg.state_digest), stamp)
        if refused is not None:
            return Received(refused)
    try:
        upd = conversions.msg_to_update(msg, session.decoder if inter else None)
    except proxy.ProxyError as e:
        if inter:
            session.synced = False  # the decoder's reference is gone: a key batch restarts
        return Received(Outcome(False, True, f'seq {msg.seq}: {e}', 'bad_batch'))
        return Received(Outcome(False, True, f'seq {msg.seq}: {e}', 'bad_batch'))
    except Exception as e:  # noqa: B902 - malformed input must not escape
        if inter:
            session.synced = False
        return Received(Outcome(False, True, f'seq {msg.seq}: {type(e).__name__}: {e}',
                                'bad_batch'))
    prev_seq, old = session.last_seq, session.state  # an applied batch replaces the state
    out = session.offer(int(msg.seq), upd, bytes(msg.state_digest), stamp)
    r = Received(out)
    if r.acked and msg.sparse_inference_requested:
        if upd.mv_x is not None:
            r.mv = np.stack([upd.mv_x, upd.mv_y], -1).reshape(upd.grid.rows, upd.grid.cols, 2)
        elif inter and not upd.key and old is not None and old.shape == session.state.shape:
            # no field sent (payload.send_motion false): the server holds both proxy states,
            # the one the edge matched its frame against and the unit's decoded frame, so it
            # matches them itself (the same block matching, predicted from its last field)
            # instead of reading the bytes off the link
            f = motion.estimate_motion(session.state, old, upd.grid.block_size,
                                       session.matched_mv)
            r.mv, r.matched = f.mv, True
            session.matched_mv = f.mv
        r.prev_seq = None if upd.key else prev_seq
        r.infer = True
        r.block_size = int(upd.grid.block_size)
        r.changed = np.asarray(upd.block_indices, dtype=np.int64)
    return r
