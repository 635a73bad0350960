"""Where user data lives (models, chats, settings, logs), and the app's own assets.

User data: the platform's user-data directory (platformdirs), overridable with ``LMSTATION_HOME``.
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


_models_dir_override: Path | None = None


def use_models_dir(path: Path | None) -> None:
    """Where models live from now on (the app's Settings); None: the default under data_dir()."""
    global _models_dir_override
    _models_dir_override = Path(path).expanduser() if path else None


def models_dir() -> Path:
    path = _models_dir_override or data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def assets_dir() -> Path:
    """Icons and the model catalog: beside the ``app`` package, in a source tree and in the bundle."""
    return Path(__file__).resolve().parent.parent / "assets"
