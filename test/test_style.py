"""Linters as tests (flake8 at 99 columns, as ros2/demos)."""

from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parent.parent


def test_flake8():
    r = subprocess.run([sys.executable, '-m', 'flake8', '--max-line-length', '99',
                        'src', 'test', 'scripts', 'launch'], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
