#!/usr/bin/env bash
# GPU check, for any machine with an NVIDIA GPU and this project set up (scripts/setup.sh):
#   1. the CUDA tests (cupy kernels vs their torch references, the engine on CUDA vs CPU);
#   2. the engine benchmark on the GPU (incremental step vs torch dense on the GPU and
#      onnxruntime on the CPU, with the per-stage breakdown);
#   3. the measured device profile with the server role on the GPU;
# then one table (also saved as OUT/gpu-check.md and .json). Without a GPU the CUDA tests skip
# and the script says so (exit 0). Usage: scripts/gpu-check.sh [OUT] (default out/gpu-check)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/out/gpu-check}"
mkdir -p "$OUT"
if [ -f "${FLUXSHARD_VENV:-$ROOT/.venv}/bin/activate" ]; then
  set +u
  # shellcheck disable=SC1091
  source "$ROOT/scripts/env.sh"
  set -u
else
  # a GPU machine without the ROS environment (no registry to set it up from): the engine
  # needs only torch, cupy, onnxruntime, OpenCV and numpy from that machine's Python
  export PYTHONPATH="$ROOT/src/fluxshard_kernels${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu-check: no virtual environment; using $(command -v python3) with the source tree"
fi
python() { python3 "$@"; }
cd "$ROOT"
python -m pytest -q -p no:cacheprovider --import-mode=importlib -rs \
  src/fluxshard_kernels/test/test_cuda.py src/fluxshard_kernels/test/test_sparse.py \
  -k cuda --junitxml="$OUT/cuda-tests.xml" | tee "$OUT/cuda-tests.txt"
tests_rc=${PIPESTATUS[0]}
if python -c 'import sys; from fluxshard_kernels import cuda; sys.exit(0 if cuda.available() else 1)'
then
  python -m fluxshard_kernels.bench --sections engine --device cuda --threads 2 \
    --json "$OUT/bench-cuda.json" || tests_rc=1
  python -m fluxshard_kernels.profile --device cuda --out "$OUT/profile-cuda.json" \
    || tests_rc=1
else
  echo "gpu-check: no CUDA device (or no working cupy) here: the CUDA tests skipped"
fi
python - "$OUT" "$tests_rc" <<'PY'
import json, os, sys
import xml.etree.ElementTree as ET
out, rc = sys.argv[1], int(sys.argv[2])
import torch
card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'
t = ET.parse(os.path.join(out, 'cuda-tests.xml')).getroot()
s = t if t.tag == 'testsuite' else t.find('testsuite')
n, f, e, sk = (int(s.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped'))
lines = [f'## GPU check: {card}', '',
         f'CUDA tests: {n - f - e - sk} passed, {f + e} failed, {sk} skipped', '']
res = {'card': card, 'tests': {'passed': n - f - e - sk, 'failed': f + e, 'skipped': sk}}
bp = os.path.join(out, 'bench-cuda.json')
if os.path.isfile(bp):
    from fluxshard_kernels import bench
    b = json.load(open(bp))
    res['engine'] = b['engine']
    lines += [bench.render_engine(b['engine'])]
pp = os.path.join(out, 'profile-cuda.json')
if os.path.isfile(pp):
    from fluxshard_kernels import profile
    p = profile.DeviceProfile.load(pp)
    res['profile'] = json.load(open(pp))
    lines += [profile.describe(p)]
text = '\n'.join(lines)
print('\n' + text)
open(os.path.join(out, 'gpu-check.md'), 'w').write(text)
json.dump(res, open(os.path.join(out, 'gpu-check.json'), 'w'), indent=1)
sys.exit(rc)
PY
