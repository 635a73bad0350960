"""Logs to a rotating file in the user-data directory; an uncaught exception shows a dialog
that names the log instead of the app vanishing."""

from __future__ import annotations

import logging
import sys
import traceback
from logging.handlers import RotatingFileHandler
from pathlib import Path

from app import paths


def log_path() -> Path:
    folder = paths.data_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "lmstation.log"


def setup_logging() -> Path:
    path = log_path()
    handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def install_exception_dialog() -> None:
    """Uncaught exceptions on the GUI thread: logged, then shown with the log's path."""

    def hook(kind, value, tb) -> None:
        logging.getLogger("lmstation").error("uncaught exception:\n%s", "".join(traceback.format_exception(kind, value, tb)))
        from PySide6.QtWidgets import QApplication, QMessageBox

        if QApplication.instance() is not None:
            QMessageBox.critical(None, "LM Station hit a problem",
                                 f"{kind.__name__}: {value}\n\nThe details are in {log_path()}.")

    sys.excepthook = hook
