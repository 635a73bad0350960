"""``lmstation`` with no arguments: the desktop window."""

from __future__ import annotations

import sys
from pathlib import Path


def run_app(model: Path | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from app import paths
    from app.chats.store import ChatStore
    from app.ui.engine_bridge import start_bridge, stop_bridge
    from app.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("LM Station")
    store = ChatStore(paths.data_dir() / "chats")
    bridge, thread = start_bridge()
    window = MainWindow(store, bridge, model)
    window.show()
    try:
        return app.exec()
    finally:
        stop_bridge(bridge, thread)
        store.close()
