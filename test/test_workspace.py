"""Package discovery and builds: inside the repository (colcon_defaults.yaml) and with the
repository cloned into a workspace's src/ (README, "Building with colcon")."""

import os
from pathlib import Path
import shutil
import subprocess
import sys

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {'fluxshard_bringup', 'fluxshard_msgs', 'fluxshard_kernels', 'fluxshard_edge',
            'fluxshard_server', 'fluxshard_eval'}


def _colcon(args, cwd):
    colcon = shutil.which('colcon') or str(Path(sys.executable).parent / 'colcon')
    return subprocess.run([colcon] + args, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _names(out):
    return {line.split('\t')[0] for line in out.splitlines() if line.strip()}


def test_colcon_finds_all_packages_in_the_repo():
    r = _colcon(['list'], ROOT)
    assert r.returncode == 0, r.stderr
    assert _names(r.stdout) == PACKAGES


def test_clone_into_workspace_builds_with_base_paths(tmp_path):
    ws = tmp_path / 'ws'
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split('\n')
    for f in filter(None, files):
        dst = ws / 'src' / 'fluxshard' / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / f).is_file():
            shutil.copy2(ROOT / f, dst)
    # the pitfall: plain discovery stops at the root package.xml
    plain = _colcon(['list'], ws)
    assert _names(plain.stdout) == {'fluxshard_bringup'}
    listed = _colcon(['list', '--base-paths', 'src', 'src/*/src'], ws)
    assert _names(listed.stdout) == PACKAGES
    build = _colcon(['build', '--base-paths', 'src', 'src/*/src',
                     '--packages-select', 'fluxshard_bringup', 'fluxshard_kernels',
                     '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}'], ws)
    assert build.returncode == 0, build.stdout + build.stderr
    share = ws / 'install' / 'fluxshard_bringup' / 'share' / 'fluxshard_bringup'
    assert (share / 'launch' / 'fluxshard.launch.py').is_file()
    assert (share / 'config' / 'edge.yaml').is_file()
    assert (ws / 'install' / 'fluxshard_kernels' / 'lib').is_dir()
    assert os.path.isdir(ws / 'build' / 'fluxshard_bringup')
