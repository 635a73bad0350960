"""``lmstation`` with no arguments starts the window (offscreen here) and keeps running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")


def test_lmstation_without_arguments_opens_the_window(lmstation_home, starter_model) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LMSTATION_HOME": str(lmstation_home)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "lmstation")], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.stderr.read()
        assert (lmstation_home / "chats" / "chats.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
