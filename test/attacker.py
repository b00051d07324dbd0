"""A participant on the DDS domain without robot1's key (it holds robot2's: a compromised
robot), used by test_security.py as a separate process. For each kind it sends forged or
replayed link messages at a paced rate until the victim's /diagnostics count at least
``--count`` of them under the expected reason (DDS may lose some on the victim's depth-8
reader; the victim's own accounting shows every received one), then prints one JSON line
per kind: {"kind", "sent", "counted"}.

Usage: python test/attacker.py --key-file F --kinds k1,k2 [--count 1000] [--rate 300]
"""

import argparse
import json
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from fluxshard_msgs.msg import BlockBatch, ProxyDelta
from fluxshard_msgs_py import auth
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy

QOS = QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE)
SERVER, EDGE = 'fluxshard/server/robot1', 'fluxshard/edge/robot1'
#: kind -> (topic, diagnostics status, counter the victim must show)
KINDS = {
    'unsigned_batch': ('/robot1/block_batch', SERVER, 'rejected.auth_missing'),
    'other_key_batch': ('/robot1/block_batch', SERVER, 'rejected.auth_bad_tag'),
    'replay_batch': ('/robot1/block_batch', SERVER, 'rejected.auth_replay'),
    'forged_reset': ('/robot1/proxy_delta', SERVER, 'rejected.delta.auth_bad_tag'),
    'forged_resync': ('/robot1/proxy_feedback', EDGE, 'rejected.feedback.auth_bad_tag'),
    'unsigned_resync': ('/robot1/proxy_feedback', EDGE, 'rejected.feedback.auth_missing'),
    'replay_feedback': ('/robot1/proxy_feedback', EDGE, 'rejected.feedback.auth_replay'),
    # security.mode none on the victim: the requests pass, the edge's resync budget holds
    'resync_storm': ('/robot1/proxy_feedback', EDGE, 'resync_requests'),
}


def _valid_key_batch(edge_id='robot1', full=False):
    """A well-formed key batch of a real frame that the server would apply without auth."""
    from fluxshard_msgs_py import conversions
    from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline
    from fluxshard_kernels import data
    from std_msgs.msg import Header
    frame = next(iter(data.iter_frames('davis-blackswan', limit=1)))
    frame = frame if full else frame[:96, :128].copy()
    p = EdgePipeline(EdgeConfig(edge_id=edge_id, local_inference=False,
                                force_strategy='cloud'))
    st = p.step(frame)
    return conversions.update_to_msg(st.update, st.payload, Header(frame_id='cam'), edge_id,
                                     1, 1, st.codec, st.quality, st.dissimilarity, True,
                                     st.digest, True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--key-file', required=True, help="robot2's key only")
    ap.add_argument('--kinds', required=True)
    ap.add_argument('--count', type=int, default=1000)
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--flood-s', type=float, default=0.0,
                    help="instead of --kinds: be robot2 (its own key) and send genuine full-"
                         "frame key batches asking for inference at --rate for this long")
    a = ap.parse_args()
    other = auth.load_keys(a.key_file)['robot2']
    rclpy.init()
    node = rclpy.create_node('attacker')
    diag, sniffed = {}, {'/robot1/block_batch': [], '/robot1/proxy_feedback': []}

    def on_diag(m):
        for st in m.status:
            diag[st.name] = {kv.key: kv.value for kv in st.values}
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
    node.create_subscription(BlockBatch, '/robot1/block_batch',
                             sniffed['/robot1/block_batch'].append, QOS)
    node.create_subscription(
        ProxyDelta, '/robot1/proxy_feedback',
        lambda m: m.kind == ProxyDelta.KIND_ACK and sniffed['/robot1/proxy_feedback'].append(m),
        QOS)
    pubs = {'/robot1/block_batch': node.create_publisher(BlockBatch, '/robot1/block_batch',
                                                         QOS),
            '/robot1/proxy_delta': node.create_publisher(ProxyDelta, '/robot1/proxy_delta', QOS),
            '/robot1/proxy_feedback': node.create_publisher(ProxyDelta,
                                                            '/robot1/proxy_feedback', QOS)}
    if a.flood_s:
        return _flood(node, pubs, other, a.rate, a.flood_s)
    batch = _valid_key_batch()
    signers = {r: auth.Signer(other, r) for r in auth.ROLES}

    def counted(status, key):
        return int(diag.get(status, {}).get(key, 0))

    def spin_until(cond, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            rclpy.spin_once(node, timeout_sec=0.05)
        return cond()

    def forge(kind, i):
        if kind in ('unsigned_batch', 'other_key_batch'):
            batch.seq, batch.header.stamp.sec = 10**6 + i, 2**30 + i  # newer than anything
            batch.auth_tag = b''
            return signers['block_batch'].sign(batch) if kind == 'other_key_batch' else batch
        if kind == 'forged_reset':
            return signers['proxy_delta'].sign(ProxyDelta(
                edge_id='robot1', kind=ProxyDelta.KIND_RESET, reason='forged'))
        if kind in ('forged_resync', 'unsigned_resync', 'resync_storm'):
            m = ProxyDelta(edge_id='robot1', kind=ProxyDelta.KIND_RESYNC_REQUEST, seq=10**9 + i,
                           reason='forged')
            return signers['proxy_feedback'].sign(m) if kind == 'forged_resync' else m
        # one of the 3 newest genuine messages (by nonce: the sniffer also hears its own
        # replays), so each is a replay, not merely too old for the freshness window
        genuine = sorted({m.auth_nonce: m for m in sniffed[KINDS[kind][0]]}.items())[-3:]
        return genuine[i % len(genuine)][1]

    for kind in a.kinds.split(','):
        topic, status, key = KINDS[kind]
        print(f'{kind}: start', file=sys.stderr, flush=True)
        if kind.startswith('replay'):  # genuine traffic to replay
            if not spin_until(lambda: len(sniffed[topic]) >= 3, 60):
                print(json.dumps({'kind': kind, 'error': 'nothing to sniff'}), flush=True)
                return 1
        spin_until(lambda: status in diag, 30)
        base, sent, t_kind = counted(status, key), 0, time.monotonic()
        for _ in range(20):  # top up what DDS lost on the victim's reader
            missing = a.count - (counted(status, key) - base)
            if missing <= 0:
                break
            t0 = time.monotonic()
            for i in range(missing):
                pubs[topic].publish(forge(kind, sent))
                sent += 1
                time.sleep(max(0.0, t0 + (i + 1) / a.rate - time.monotonic()))
            # the victim's 1 Hz diagnostics catch up (its counters never go down)
            last = [counted(status, key), time.monotonic()]

            def settled():
                c = counted(status, key)
                if c != last[0]:
                    last[:] = [c, time.monotonic()]
                return c - base >= a.count or time.monotonic() - last[1] > 2.5
            spin_until(settled, 30)
        print(json.dumps({'kind': kind, 'sent': sent, 'counted': counted(status, key) - base,
                          'seconds': time.monotonic() - t_kind}), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _flood(node, pubs, key, rate, seconds):
    pub = node.create_publisher(BlockBatch, '/robot2/block_batch', QOS)
    batch = _valid_key_batch('robot2', full=True)
    signer = auth.Signer(key, 'block_batch')
    t0, sent = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        batch.seq = sent + 1
        batch.header.stamp = node.get_clock().now().to_msg()
        batch.auth_tag = b''
        pub.publish(signer.sign(batch))
        sent += 1
        time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    print(json.dumps({'kind': 'flood', 'sent': sent, 'seconds': time.monotonic() - t0,
                      'bytes': len(batch.payload)}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
