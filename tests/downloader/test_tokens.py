"""Tokens are kept per source in a file only the user can read (the keyring path needs a real keyring)."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from app.downloader import TokenStore


def test_round_trip_per_source(tmp_path) -> None:
    store = TokenStore(tmp_path / "tokens.json", use_keyring=False)
    assert store.get("hf") is None
    store.set("hf", "hf_abc")
    store.set("modelscope", "ms_xyz")
    fresh = TokenStore(tmp_path / "tokens.json", use_keyring=False)
    assert (fresh.get("hf"), fresh.get("modelscope")) == ("hf_abc", "ms_xyz")
    fresh.delete("hf")
    assert TokenStore(tmp_path / "tokens.json", use_keyring=False).get("hf") is None
    assert fresh.get("modelscope") == "ms_xyz"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_the_file_is_readable_by_the_user_only(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{}")
    os.chmod(path, 0o644)  # an existing file with loose permissions is tightened on write
    TokenStore(path, use_keyring=False).set("hf", "hf_abc")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
