"""Access tokens for gated and private repositories, one per source: in the OS keyring when one works,
otherwise in a JSON file that only the user can read (mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path

SERVICE = "lmstation"


class TokenStore:
    def __init__(self, path: Path | None = None, use_keyring: bool = True):
        self.path = path
        self.keyring = _working_keyring() if use_keyring else None

    @property
    def file(self) -> Path:
        if self.path is None:
            from app.paths import data_dir

            self.path = data_dir() / "tokens.json"
        return self.path

    def get(self, source: str) -> str | None:
        if self.keyring is not None:
            try:
                token = self.keyring.get_password(SERVICE, source)
                if token:
                    return token
            except Exception:  # a locked or broken keyring: the file may still have it
                pass
        return self._read().get(source)

    def set(self, source: str, token: str) -> None:
        if self.keyring is not None:
            try:
                self.keyring.set_password(SERVICE, source, token)
                self._write({k: v for k, v in self._read().items() if k != source})
                return
            except Exception:
                pass
        self._write({**self._read(), source: token})

    def delete(self, source: str) -> None:
        if self.keyring is not None:
            try:
                self.keyring.delete_password(SERVICE, source)
            except Exception:  # nothing stored there, or no keyring after all
                pass
        tokens = self._read()
        if tokens.pop(source, None) is not None:
            self._write(tokens)

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write(self, tokens: dict[str, str]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.chmod(self.file, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(tokens, f)


def _working_keyring():
    """The keyring module if it has a real backend (its fail backend has priority 0), else None."""
    try:
        import keyring

        return keyring if keyring.get_keyring().priority > 0 else None
    except Exception:  # not installed, or no backend can start (no D-Bus session, ...)
        return None
