"""The Linux bundle, built by packaging/build_linux.sh from a clean clone of this checkout's HEAD
with this environment's torch, passes its own --self-test offscreen with no Python on the PATH
(an empty PATH and environment) and answers "Paris". About three minutes on two cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="packaging/build_windows.ps1 builds on Windows")]


def test_bundle_built_from_a_clean_checkout_passes_its_self_test(tmp_path) -> None:
    source = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(source)], check=True, timeout=120)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # this venv's python
    build = subprocess.run(["bash", "packaging/build_linux.sh"], cwd=source, env=env, capture_output=True,
                           text=True, timeout=1200)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    bundle = source / "dist" / "lmstation"
    assert (bundle / "lmstation").is_file() and (bundle / "install-desktop-entry.sh").is_file()
    empty = tmp_path / "no-programs"
    empty.mkdir()
    home = tmp_path / "home"
    report = tmp_path / "report.json"
    done = subprocess.run([str(bundle / "lmstation"), "--self-test", "--report", str(report)],
                          env={"PATH": str(empty), "HOME": str(home), "LMSTATION_HOME": str(home),
                               "LANG": "C.UTF-8"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())
    assert data["ok"] and data["frozen"] and "Paris" in data["reply"]
    assert "cpu fused decode" in data["engine"]["kernels"]  # the bundled CPU kernels (no compiler on PATH)
