"""The Linux menu entry: valid by desktop-file-validate, installed per user with the icons, and
removed again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LINUX = Path(__file__).resolve().parents[2] / "packaging" / "linux"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the .desktop entry is for Linux")


def validate(entry: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LINUX / "validate-desktop-entry.sh"), str(entry)], capture_output=True,
                          text=True, timeout=120)


def test_the_entry_is_valid() -> None:
    done = validate(LINUX / "lmstation.desktop")
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_install_and_uninstall_for_this_user(tmp_path) -> None:
    target = tmp_path / "my apps" / "lmstation"  # a space in the path: Exec must quote it
    target.parent.mkdir()
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share")}
    done = subprocess.run(["bash", str(LINUX / "install-desktop-entry.sh"), str(target)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entry = tmp_path / "share" / "applications" / "lmstation.desktop"
    assert f'Exec="{target}" %F' in entry.read_text()
    assert validate(entry).returncode == 0
    icons = tmp_path / "share" / "icons" / "hicolor"
    assert (icons / "256x256" / "apps" / "lmstation.png").is_file() and (icons / "scalable/apps/lmstation.svg").is_file()
    subprocess.run(["bash", str(LINUX / "install-desktop-entry.sh"), "--uninstall"], env=env, check=True,
                   capture_output=True, timeout=60)
    assert not entry.exists() and not (icons / "256x256" / "apps" / "lmstation.png").exists()
