"""What link authentication costs the edge, measured side by side with its own per-frame work.

For each sequence, the edge pipeline runs frame by frame (default configuration, and an
offload-only edge without local inference: the smaller denominator), builds the BlockBatch,
and times, interleaved on the same frame: the frame's step + message build, signing the
message (Signer.sign) and the server's check (Verifier.check). Prints a table of medians and
the ratios; ``--json`` saves it (docs/security.md is rendered from that file).

Usage: python -m fluxshard_edge.auth_bench [--frames 20] [--json PATH]
"""

import argparse
import json
import platform
import statistics
import time

from fluxshard_msgs_py import auth
from std_msgs.msg import Header

from fluxshard_msgs_py import conversions
from fluxshard_edge.pipeline import EdgeConfig, EdgePipeline

SEQUENCES = ('davis-parkour', 'pets09-s2l1')


def measure(sequence: str, frames: int, local_inference: bool) -> dict:
    from fluxshard_kernels import data
    key = auth.generate(['robot1'])['robot1']
    signer, verifier = auth.Signer(key, 'block_batch'), auth.Verifier(key, 'block_batch')
    pipe = EdgePipeline(EdgeConfig(edge_id='robot1', local_inference=local_inference))
    step_ms, sign_ms, check_ms, sizes = [], [], [], []
    try:
        for i, frame in enumerate(data.iter_frames(sequence, limit=frames + 2)):
            t0 = time.perf_counter()
            st = pipe.step(frame)
            if not st.sends:
                continue
            msg = conversions.update_to_msg(st.update, st.payload, Header(frame_id='c'),
                                            'robot1', st.seq, i, st.codec, st.quality,
                                            st.dissimilarity, st.sparse_inference_requested,
                                            st.digest, True)
            t1 = time.perf_counter()
            signer.sign(msg)
            t2 = time.perf_counter()
            assert verifier.check(msg) is None
            t3 = time.perf_counter()
            if i >= 2:  # warm-up frames dropped
                step_ms.append(1e3 * (t1 - t0))
                sign_ms.append(1e3 * (t2 - t1))
                check_ms.append(1e3 * (t3 - t2))
                sizes.append(len(msg.payload))
    finally:
        pipe.close()
    med = statistics.median
    return {'sequence': sequence, 'local_inference': local_inference, 'frames': len(step_ms),
            'step_ms': med(step_ms), 'sign_ms': med(sign_ms), 'check_ms': med(check_ms),
            'payload_kb': med(sizes) / 1e3, 'sign_ratio': med(s / f for s, f in
                                                              zip(sign_ms, step_ms))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--frames', type=int, default=20)
    ap.add_argument('--json', default='')
    a = ap.parse_args(argv)
    rows = [measure(s, a.frames, li) for s in SEQUENCES for li in (True, False)]
    print(f'{"sequence":16s} {"edge":14s} {"step ms":>8s} {"sign ms":>8s} {"check ms":>9s} '
          f'{"KB":>6s} {"sign/step":>9s}')
    for r in rows:
        edge = 'local+offload' if r['local_inference'] else 'offload only'
        print(f'{r["sequence"]:16s} {edge:14s} {r["step_ms"]:8.1f} {r["sign_ms"]:8.3f} '
              f'{r["check_ms"]:9.3f} {r["payload_kb"]:6.1f} {100 * r["sign_ratio"]:8.2f}%')
    if a.json:
        import torch
        with open(a.json, 'w') as f:
            json.dump({'command': 'python -m fluxshard_edge.auth_bench --frames '
                                  f'{a.frames}', 'machine': platform.processor() or
                       platform.machine(), 'torch_threads': torch.get_num_threads(),
                       'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
