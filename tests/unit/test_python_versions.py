"""The runtime runs on a host's system python3 >= 3.9: no newer syntax or library calls."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_runtime_package_needs_no_more_than_python_39():
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).exists():
        pytest.skip("vermin is not installed (pip install '.[test]')")
    result = subprocess.run(
        [vermin, "--no-tips", "--violations", "-t=3.9-", "runtime/flannelette", "schemas"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
