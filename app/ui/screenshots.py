"""Screenshots of every page, light and dark, at 100% and 200% scale, from the real window with
the starter model answering real questions (in a private, temporary user-data folder).

    python -m app.ui.screenshots [OUT_DIR]        (default: docs/screenshots)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ["What is the capital of France?", "Write a Python function that returns the square of a number."]
THEMES = ("light", "dark")


def _wait_until(app, condition, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.01)


def _views(window) -> list[tuple[str, object]]:
    """(file name, how to show it): each sidebar page, and the Models page's Discover tab."""

    def page(row: int):
        return lambda: window.sidebar.setCurrentRow(row)

    views = [(window.sidebar.item(row).text().lower(), page(row)) for row in range(window.sidebar.count())]
    models_row = next(row for row in range(window.sidebar.count()) if window.sidebar.item(row).text() == "Models")

    def discover() -> None:
        window.sidebar.setCurrentRow(models_row)
        window.models_tabs.setCurrentWidget(window.discover)

    def library() -> None:
        window.sidebar.setCurrentRow(models_row)
        window.models_tabs.setCurrentWidget(window.models)

    views[models_row] = ("models", library)
    views.insert(models_row + 1, ("discover", discover))
    return views


def _shoot(out: Path, scale: int) -> None:
    """Runs in a process whose QT_SCALE_FACTOR is ``scale``."""
    from PySide6.QtWidgets import QApplication

    from app import paths
    from app.chats.store import ChatStore
    from app.ui.engine_bridge import start_bridge, stop_bridge
    from app.ui.main_window import MainWindow
    from app.ui.settings import AppSettings

    app = QApplication(sys.argv)
    settings = AppSettings()
    store = ChatStore(paths.data_dir() / "chats")
    bridge, thread = start_bridge()
    window = MainWindow(store, bridge, None, {"device": "cpu"}, settings)
    window.show()
    try:
        _wait_until(app, lambda: window.state_label.text() == "Ready" and window.discover.ram_bytes > 0)
        chat = window.chat
        if not store.conversations():  # the first process asks; the next one finds the chat stored
            chat.sampling.temperature.setValue(0.0)
            chat.sampling.max_new_tokens.setValue(160)
            for question in QUESTIONS:
                chat.input.setPlainText(question)
                chat.send()
                _wait_until(app, lambda: chat._active is None)
            store.rename(chat.conversation_id, "Geography and Python")
            store.new_conversation("Trip to Lyon")
        chat.open_conversation(store.conversations()[-1].id if len(store.conversations()) == 1 else
                               next(c.id for c in store.conversations() if c.title == "Geography and Python"))
        suffix = "" if scale == 1 else f"@{scale}x"
        themes = window.settings_page.theme
        for theme in THEMES:
            themes.setCurrentIndex(themes.findData(theme))  # as a user picks it: applied at once
            for name, show in _views(window):
                show()
                for _ in range(20):
                    app.processEvents()
                    time.sleep(0.01)
                window.repaint()
                window.grab().save(str(out / f"{name}-{theme}{suffix}.png"))
    finally:
        window.close()
        stop_bridge(bridge, thread)
        store.close()


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lmstation-shots-") as home:
        for scale in (1, 2):
            env = {**os.environ, "LMSTATION_HOME": home, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
                   "QT_SCALE_FACTOR": str(scale)}
            code = f"from app.ui.screenshots import _shoot; from pathlib import Path; _shoot(Path({str(out)!r}), {scale})"
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
