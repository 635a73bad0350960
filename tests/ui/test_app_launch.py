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
            "app.chats.store; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
