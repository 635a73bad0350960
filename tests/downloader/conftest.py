"""A fresh local hub per test, and managers with short waits so failures show up fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.downloader import DownloadManager, ManagerConfig, RetryPolicy, TokenStore
from tests.downloader.fake_hub import FakeHub

FAST = RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=5.0, chunk_bytes=64 * 1024)


@pytest.fixture(autouse=True)
def _local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub is on 127.0.0.1: no proxy in between, and no token from the developer's own login."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hub():
    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture
def make_manager(tmp_path: Path):
    """make_manager(on_progress=None, **config) -> a DownloadManager closed after the test."""
    managers: list[DownloadManager] = []

    def make(on_progress=None, **config) -> DownloadManager:
        config = {"retry": FAST, "progress_interval_s": 0.0,
                  "tokens": TokenStore(tmp_path / "tokens.json", use_keyring=False), **config}
        managers.append(DownloadManager(ManagerConfig(**config), on_progress=on_progress))
        return managers[-1]

    yield make
    for manager in managers:
        manager.close(timeout=10)


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking bytes."""
    import random

    return random.Random(seed).randbytes(size)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []
