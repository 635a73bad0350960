"""Where user data lives: models, chats, settings, logs.

The platform's user-data directory (platformdirs), overridable with ``LMSTATION_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir


def data_dir() -> Path:
    override = os.environ.get("LMSTATION_HOME")
    root = Path(override).expanduser() if override else Path(user_data_dir("LMStation", appauthor=False))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
