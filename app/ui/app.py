"""``lmstation`` with no arguments: the desktop window."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def app_icon():
    from PySide6.QtGui import QIcon

    from app.paths import assets_dir

    icon = QIcon()
    for png in sorted((assets_dir() / "icons").glob("lmstation-*.png")):
        icon.addFile(str(png))
    return icon


def run_app(model: Path | None = None) -> int:
    import shiboken6
    from PySide6.QtWidgets import QApplication

    from app import paths
    from app.chats.store import ChatStore
    from app.process_age import process_age_s
    from app.ui.logging_setup import install_exception_dialog, setup_logging

    setup_logging()
    log = logging.getLogger("lmstation")
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("LM Station")
    app.setDesktopFileName("lmstation")  # ties the window to lmstation.desktop (its icon, on Wayland)
    app.setWindowIcon(app_icon())
    install_exception_dialog()
    from app.ui.engine_bridge import start_bridge, stop_bridge  # the engine itself loads in the bridge's thread
    from app.ui.main_window import MainWindow
    from app.ui.settings import AppSettings
    from app.ui.theme import apply_theme

    settings = AppSettings()
    apply_theme(app, settings.theme)
    store = ChatStore(paths.data_dir() / "chats")
    bridge, thread = start_bridge()
    window = MainWindow(store, bridge, model, settings=settings)
    window.show()
    app.processEvents()
    log.info("window shown %.0f ms after the process started", process_age_s() * 1e3)
    try:
        return app.exec()
    finally:
        stop_bridge(bridge, thread)
        store.close()
        shiboken6.delete(window)  # while the QApplication lives: Python's exit order could outlive it
