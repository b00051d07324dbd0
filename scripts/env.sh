# Source me (bash): the FluxShard virtual environment, the colcon install space and defaults.
_fs_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_fs_venv="${FLUXSHARD_VENV:-$_fs_root/.venv}"
# shellcheck disable=SC1091
source "$_fs_venv/bin/activate"
export AMENT_PREFIX_PATH="$_fs_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_fs_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$_fs_root/install/setup.bash"
# console scripts of the workspace (fluxshard-eval, fluxshard-bag, fluxshard_run) on PATH
for _fs_pkg in fluxshard_server fluxshard_edge fluxshard_eval; do
  PATH="$_fs_root/install/$_fs_pkg/lib/$_fs_pkg:$PATH"
done
export PATH
unset _fs_pkg
# Camera-sized messages need the shipped Fast DDS profile (shared memory with a 64 MB segment,
# UDP with 16 MB buffers; docs/design.md "DDS on a robot"), unless transports are chosen already.
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}${FASTRTPS_DEFAULT_PROFILES_FILE:-}${FASTDDS_BUILTIN_TRANSPORTS:-}" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="$_fs_root/src/fluxshard_msgs/dds/fastdds.xml"
fi
if [ -z "${FLUXSHARD_DATA:-}" ]; then
  if [ -d "$_fs_root/../shared/data/video" ]; then
    FLUXSHARD_DATA="$(cd "$_fs_root/../shared/data" && pwd)"
  else
    FLUXSHARD_DATA="$_fs_root/.data"
  fi
  export FLUXSHARD_DATA
fi
unset _fs_root _fs_venv
