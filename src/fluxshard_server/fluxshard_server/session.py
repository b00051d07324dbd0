"""Per-edge server state without ROS: the proxy edge state, sequence and digest checks
(paper Algorithm 2, step 2; architecture invariant "proxy sync is exact")."""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from fluxshard_kernels import proxy


@dataclass
class Outcome:
    """Result of offering one batch to a session.

    Attributes:
        applied: the proxy state was updated.
        resync: the edge must send a key batch (``reason`` says why).
        reason: short explanation for logs and ProxyDelta.reason; empty when all is well.
        counter: key of the drop/reject counter to bump, or '' when applied cleanly.
    """

    applied: bool
    resync: bool = False
    reason: str = ''
    counter: str = ''


class EdgeSession:
    """One edge's proxy state on the server."""

    def __init__(self, edge_id: str):
        self.edge_id = edge_id
        self.state: Optional[np.ndarray] = None
        self.last_seq = 0
        self.synced = False
        self.digest = b''
        self.applied = 0
        self.last_stamp = -1
        # the H.264 (CODEC_H264) reference of this edge
        self.decoder = proxy.InterDecoder()
        # the last block field matched here (``receive_batch``: batches without one)
        self.matched_mv: Optional[np.ndarray] = None

    def admit(self, seq: int, key: bool, expected_digest: bytes,
              stamp_ns: int = -1) -> Optional[Outcome]:
        """None when a batch ``seq`` would continue the stream, else the Outcome refusing it
        (checked before an inter-coded payload touches the session's decoder)."""
        if len(expected_digest) != 16:
            return Outcome(False, False, f'seq {seq}: state digest has {len(expected_digest)} '
                           'bytes, expected 16', 'bad_digest')
        if key:
            if self.synced and seq <= self.last_seq and stamp_ns <= self.last_stamp:
                return Outcome(False, False, f'duplicate or out-of-order key batch seq {seq} '
                               f'(last applied {self.last_seq})', 'stale_seq')
            # a key with a lower seq but a newer stamp is an edge that restarted its stream
        else:
            if not self.synced:
                return Outcome(False, True, f'not in sync (waiting for a key batch); got seq '
                               f'{seq}', 'unsynced')
            if seq <= self.last_seq:
                return Outcome(False, False, f'duplicate or out-of-order seq {seq} '
                               f'(last applied {self.last_seq})', 'stale_seq')
            if seq != self.last_seq + 1:
                self.synced = False
                return Outcome(False, True, f'sequence gap: expected {self.last_seq + 1}, '
                               f'got {seq}', 'seq_gap')
        return None

    def offer(self, seq: int, update: proxy.ProxyUpdate, expected_digest: bytes,
              stamp_ns: int = -1) -> Outcome:
        """Apply ``update`` (batch number ``seq``, source image stamp ``stamp_ns``) if it
        continues the stream; verify the digest."""
        refused = self.admit(seq, update.key, expected_digest, stamp_ns)
        if refused is not None:
            return refused
        try:
            new = proxy.apply(None if update.key else self.state, update)
        except proxy.ProxyError as e:
            self.synced = False
            return Outcome(False, True, f'cannot apply seq {seq}: {e}', 'bad_batch')
        dig = proxy.digest(new)
        self.state, self.last_seq, self.digest = new, seq, dig
        self.last_stamp = max(self.last_stamp, stamp_ns)
        self.applied += 1
        if expected_digest and dig != bytes(expected_digest):
            self.synced = False
            return Outcome(True, True, f'digest mismatch after seq {seq}', 'digest_mismatch')
        self.synced = True
        return Outcome(True)
