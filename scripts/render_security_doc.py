"""Render docs/security.md from the saved measurements (never typed by hand):
  docs/security-dds.json        FLUXSHARD_SECURITY_COUNT=1000 \
                                FLUXSHARD_SECURITY_JSON=$PWD/docs/security-dds.json \
                                scripts/fluxshard test test/test_security.py
  docs/security-mac-bench.json  scripts/fluxshard run python -m fluxshard_edge.auth_bench \
                                --frames 20 --json docs/security-mac-bench.json
Usage: scripts/fluxshard run python scripts/render_security_doc.py > docs/security.md
"""

import json
import os

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'docs')


def load(name):
    with open(os.path.join(DOCS, name)) as f:
        return json.load(f)


def met(ok):
    return 'MET' if ok else 'NOT MET'


def main():
    dds, bench = load('security-dds.json'), load('security-mac-bench.json')
    f, st, fl = dds['forgeries'], dds['resync_storm'], dds['flood']
    n = f['count_per_kind']
    out = ['<!-- rendered by scripts/render_security_doc.py from docs/security-*.json -->', '',
           '# Security: authenticated link messages and fair service', '',
           TEXT, '',
           '## Measured (real nodes over DDS, this 2-core CPU machine)', '',
           'Command: `FLUXSHARD_SECURITY_COUNT=1000 FLUXSHARD_SECURITY_JSON=$PWD/docs/'
           'security-dds.json scripts/fluxshard test test/test_security.py` (CI runs the same '
           'tests with 200 per kind). The attacker is a separate process '
           '(`test/attacker.py`) holding robot2\'s key but not robot1\'s; it sends each kind '
           'until the victim has counted at least the target (DDS loses some on the victim\'s '
           'depth-8 reader; the victim\'s own accounting shows every received one).', '',
           '| kind | target | sent | counted by the victim | counter |', '|---|---|---|---|---|']
    counters = {'unsigned_batch': 'server `rejected.auth_missing`',
                'other_key_batch': 'server `rejected.auth_bad_tag`',
                'replay_batch': 'server `rejected.auth_replay`',
                'forged_reset': 'server `rejected.delta.auth_bad_tag`',
                'forged_resync': 'edge `rejected.feedback.auth_bad_tag`',
                'unsigned_resync': 'edge `rejected.feedback.auth_missing`',
                'replay_feedback': 'edge `rejected.feedback.auth_replay`'}
    for kind, r in f['kinds'].items():
        out.append(f'| {kind} | {n} | {r["sent"]} | {r["counted"]} | {counters[kind]} |')
    out += ['', f'Forged or replayed batches applied: **{f["forged_applied"]}** (server: '
            f'{f["genuine_applied"]} batches applied, all the genuine edge\'s, each ACK digest '
            f'equal to the edge\'s); digest mismatches {f["digest_mismatch"]}; edge key batches '
            f'{f["edge_key_batches"]} (the first, {f["edge_resync_requests"]} resync requests '
            f'the server really sent - it counted {f["server_resync_causes"]} batches it could '
            f'not apply - and {f["edge_probes"]} probes when the loaded server\'s ACKs came '
            'late), so the forged resync storm cost **0 key bytes**.', '',
            f'Resync storm that passes authentication (`security.mode: none`, '
            f'`resync.max_rate_hz: {st["rate_hz"]}`, `resync.burst: {st["burst"]}`): '
            f'{st["requests"]} requests in {st["seconds"]:.1f} s -> {st["key_batches"]} key '
            f'batches ({st["key_bytes"] / 1e3:.0f} KB), budget {st["budget"]:.1f}; '
            f'{st["refused"]} refused and counted (`resync_limited`), `/diagnostics` WARN '
            '"resync storm".', '',
            f'Flooding neighbour: robot2 sends genuine full-frame key batches at '
            f'{fl["flood_rate_hz"]} Hz asking for inference (`admission.max_rate_hz: '
            f'{fl["admission_rate_hz"]}`): {fl["flood_batches_in"]} in, '
            f'{fl["flood_rate_limited"]} dropped as `rate_limited`, {fl["flood_served"]} '
            f'served. robot1 (2 Hz camera, server onnxruntime) median latency alone '
            f'{fl["alone_ms"]:.0f} ms, with the flood {fl["flooded_ms"]:.0f} ms '
            f'(**{fl["ratio"]:.2f}x**, {fl["samples"]} results each, same run). The ratio '
            'is not stable here: with the shipped shared-memory DDS profile robot1 alone '
            'answers in 85-220 ms (250-400 ms over the LARGE_DATA built-in transports, which '
            'hid the flood\'s cost), and repeated runs of `pytest -s test/test_security.py -k '
            'flooding` on this 2-core machine printed 0.9x to 3.6x: the 50 Hz flood\'s '
            'callbacks take about one core of the server process, whatever admission then '
            'decides. The test asserts what admission guarantees - robot1 is not starved (a '
            'result for >= 50 % of its camera frames, median under two camera periods; 67 % '
            'and 317 ms in one CI run here) - and '
            'records the ratio. The budget sits above robot1\'s camera rate, as a deployed '
            'robot\'s does (default 60/s): at exactly 2/s, a frame the loaded machine delayed '
            'and the next one on time spent two tokens at once, the limiter dropped robot1\'s '
            'own batch and its inter-coded stream resynced (results at 0.76/s in one CI run). '
            'Next lever: drop over-budget samples before they reach the '
            'Python callback (a DDS reader-side time-based filter, or a C++ receive path).',
            '',
            f'MAC cost on the edge (`{bench["command"]}`, interleaved per frame, medians):', '',
            '| sequence | edge | step + message, ms | sign, ms | server check, ms | payload KB '
            '| sign / step |', '|---|---|---|---|---|---|---|']
    for r in bench['rows']:
        edge = 'default (local + offload)' if r['local_inference'] else 'offload only'
        out.append(f'| {r["sequence"]} | {edge} | {r["step_ms"]:.1f} | {r["sign_ms"]:.3f} | '
                   f'{r["check_ms"]:.3f} | {r["payload_kb"]:.1f} | '
                   f'{100 * r["sign_ratio"]:.2f} % |')
    worst = max(r['sign_ratio'] for r in bench['rows'])
    least = min(r['counted'] for r in f['kinds'].values())
    kinds_ok = least >= 1000
    out += ['', '## Targets', '', '| target | result | |', '|---|---|---|',
            f'| 0 forged or replayed applied of >= 1,000 per kind, every one counted | '
            f'{f["forged_applied"]} applied; min counted {least} per kind | '
            f'{met(f["forged_applied"] == 0 and kinds_ok)} |',
            f'| key bytes under a forged resync storm <= budget | 0 (authenticated); '
            f'{st["key_batches"]} key batches <= {st["budget"]:.1f} without authentication | '
            f'{met(st["key_batches"] <= st["budget"])} |',
            f'| normal edge median latency with a flooding neighbour <= 1.5x alone | '
            f'{fl["ratio"]:.2f}x | {met(fl["ratio"] <= 1.5)} |',
            f'| MAC cost <= 2 % of the edge\'s per-frame time | worst {100 * worst:.2f} % | '
            f'{met(worst <= 0.02)} |', '', SROS2]
    print('\n'.join(out))


TEXT = """Robots reach the GPU server over shared networks, and any participant on the DDS domain
can publish on a robot's topics. FluxShard therefore authenticates its own link messages at the
application layer (the Fast DDS in the PyPI wheels has no DDS Security plugins):

* **Tags.** Every `BlockBatch` (edge -> server), `ProxyDelta` RESET (edge -> server) and
  `ProxyDelta` ACK / RESYNC_REQUEST / INFERENCE_DONE (server -> edge) carries `auth_nonce` (the
  sender's wall clock in ns, strictly increasing) and `auth_tag`: keyed BLAKE2b-128 with the
  edge's 32-byte secret, personalised per topic role, over a canonical encoding of every other
  field (`fluxshard_msgs_py.auth`; the middleware's CDR bytes are not canonical - padding is
  left uninitialised - so they cannot be re-derived by the receiver).
* **Checks.** The server serves only the edges in `edges` that have a key (it refuses to start
  otherwise) and verifies each message with that edge's key *before* it can touch the proxy:
  missing tag (`auth_missing`), wrong tag or another edge's key (`auth_bad_tag`), nonce not newer
  than the last accepted one (`auth_replay`), nonce further than `security.max_age_s` (30 s) from
  its clock (`auth_stale`: replays after a restart; robots and server need NTP-synchronised
  clocks, as for TF). Refused messages are dropped unanswered (no resync request: forgeries
  cannot make traffic), counted per reason on `/diagnostics` (`rejected.*`; ProxyDelta ones
  under `rejected.delta.*`), logged (throttled), and the edge's status turns WARN for 10 s. The
  edge checks server feedback the same way (`rejected.feedback.*`).
* **Keys.** `python -m fluxshard_msgs_py.auth generate --out /etc/fluxshard/server.keys robot1
  robot2` writes one secret per robot (mode 0600); `... extract /etc/fluxshard/server.keys
  robot1 --out robot1.keys` gives a robot its own line. Both nodes read `security.key_file` and
  refuse a file that group or others can access. `fluxshard_run` (demo, live evaluation) makes a
  fresh key file per run. `security.mode: none` switches authentication off for a lab (logged as
  a warning at start on both nodes).
* **Resync budget.** The edge answers resync requests (and digest mismatches) with at most
  `resync.burst` (2) key batches back to back and `resync.max_rate_hz` (0.5) sustained; requests
  beyond are refused and counted (`resync_limited`); the server keeps asking with each batch it
  cannot apply, so a genuine request is served as soon as the budget allows. `/diagnostics`
  shows "resync storm: N requests refused in the last 10 s" (WARN).
* **Fair service.** Per-edge admission on the server, after authentication (so forgeries cannot
  spend a genuine robot's budget): `admission.max_batch_mb` (16; `oversize`),
  `admission.max_rate_hz` / `admission.burst` (60 / 10; `rate_limited`), `admission.max_mbps`
  (400; `byte_limited`). The inference queue keeps one latest-wins job per robot and serves the
  robots round robin (`fluxshard_server.jobs.JobTable`), so a flooding robot gets one job in
  turn. Stated bound: a robot's result waits at most for one job of each other robot in
  progress (inference is not preempted) plus the decode time of the others' admitted batches.
* **Not covered**: result topics (`detections`, `keypoints`, `masks`) and `labels` are not
  authenticated (robot consumers read them as plain ROS topics; use SROS2 below where they must
  be), and so a forged `detections` message can still reach the edge's salience weighting;
  payloads are not encrypted (confidentiality needs DDS Security or a VPN such as WireGuard
  between robot and server)."""

SROS2 = """## Running under SROS2 as well (where the middleware has DDS Security)

The wheels this project installs cannot (no PKI-DH / AES-GCM-GMAC plugins in their Fast DDS). On
a ROS 2 install from the ROS apt repository (or a source build with `-DSECURITY=ON`), DDS
Security adds encryption and per-topic access control under FluxShard's own tags:

```bash
ros2 security create_keystore ~/fluxshard_keystore
ros2 security create_enclave ~/fluxshard_keystore /fluxshard/server
ros2 security create_enclave ~/fluxshard_keystore /fluxshard/robot1
export ROS_SECURITY_KEYSTORE=~/fluxshard_keystore ROS_SECURITY_ENABLE=true \\
       ROS_SECURITY_STRATEGY=Enforce
ros2 run fluxshard_server server_node --ros-args --enclave /fluxshard/server \\
  --params-file config/server.yaml -p security.key_file:=/etc/fluxshard/server.keys
ros2 run fluxshard_edge edge_node --ros-args --enclave /fluxshard/robot1 -r __ns:=/robot1 \\
  --params-file config/edge.yaml -p security.key_file:=/etc/fluxshard/robot1.keys
```

Restrict each enclave's permissions (`ros2 security create_permission` with a policy XML) so a
robot may publish only its own `block_batch` / `proxy_delta` and subscribe only its own
`proxy_feedback` and results. Keep `security.mode: mac` on: it still binds each batch to one
robot's key and rejects replays, which DDS Security's per-participant checks do not."""


if __name__ == '__main__':
    main()
