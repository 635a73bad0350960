"""``lmstation`` with no arguments: the window shows within 2 s, and the app keeps running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path



def test_window_shows_within_two_seconds_and_stays_up(lmstation_home, starter_model) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LMSTATION_HOME": str(lmstation_home)}
    log = lmstation_home / "logs" / "lmstation.log"
    before = log.read_text() if log.exists() else ""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "lmstation")], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        shown = None
        deadline = time.monotonic() + 30
        while shown is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            new = log.read_text()[len(before):] if log.exists() else ""
            match = re.search(r"window shown (\d+) ms", new)
            shown = int(match.group(1)) if match else None
        assert shown is not None, f"no window: {proc.stderr.read() if proc.poll() is not None else 'still starting'}"
        assert shown < 2000, f"the window took {shown} ms"
        time.sleep(3)  # the model loads in the background meanwhile
        assert proc.poll() is None, proc.stderr.read()
        assert (lmstation_home / "chats" / "chats.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_ui_imports_no_torch() -> None:
    """The window, its pages, the bridge and the chat store import without torch (it loads in the
    bridge's thread, once the window is up)."""
    code = ("import sys; import app.ui.app, app.ui.main_window, app.ui.chat_page, app.ui.engine_bridge, "
            "app.ui.models_page, app.ui.quantize_page, app.ui.quantize_bridge, app.ui.settings_page, app.chats.store, "
            "app.library; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


CRASHING_SLOT = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from app.ui.logging_setup import install_exception_dialog, setup_logging

setup_logging()
app = QApplication(sys.argv)
install_exception_dialog()

def boom():
    raise RuntimeError("the flux capacitor melted")

def read_dialog():
    box = QApplication.activeModalWidget()
    if box is None:
        QTimer.singleShot(20, read_dialog)
        return
    print("DIALOG", box.windowTitle(), "|", box.text(), flush=True)
    box.accept()
    app.quit()

QTimer.singleShot(0, boom)
QTimer.singleShot(50, read_dialog)
app.exec()
print("STILL RUNNING", flush=True)
"""


def test_an_uncaught_exception_shows_a_dialog_naming_the_log(tmp_path) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LMSTATION_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", CRASHING_SLOT], env=env, capture_output=True, text=True, timeout=60)
    log = tmp_path / "logs" / "lmstation.log"
    assert done.returncode == 0, done.stderr
    assert f"DIALOG LM Station hit a problem | RuntimeError: the flux capacitor melted\n\nThe details are in {log}." \
        in done.stdout
    assert done.stdout.rstrip().endswith("STILL RUNNING")
    assert "Traceback" in log.read_text() and "in boom" in log.read_text()  # the traceback is in the log
