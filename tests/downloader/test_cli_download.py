"""``lmstation download`` as a user runs it, against the local hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.downloader.conftest import blob

LMSTATION = str(Path(sys.executable).parent / "lmstation")
FILES = {"config.json": b"{}", "tokenizer.json": b"{}", "model.safetensors": blob(300_000), "model.onnx": b"x"}


def download(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMSTATION_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost", "HF_TOKEN": ""}
    return subprocess.run([LMSTATION, "download", *args], capture_output=True, text=True, env=env, timeout=120)


def test_download_into_the_library_with_a_progress_bar(hub, tmp_path) -> None:
    repo = hub.add("org/model", FILES)
    done = download(["org/model", "--endpoint", hub.url, "--revision", repo.commit], tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "org--model"
    assert done.stdout.strip() == f"org/model is in {folder}"
    assert "org/model: 100%" in done.stderr  # the bar reached the end
    assert sorted(p.name for p in folder.iterdir()) == [".lmstation-download.json", "config.json",
                                                        "model.safetensors", "tokenizer.json"]
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_download_errors_name_the_repo(hub, tmp_path) -> None:
    done = download(["org/missing", "--endpoint", hub.url, "--out", str(tmp_path / "x")], tmp_path)
    assert done.returncode == 1
    assert f"error: org/missing: repository not found on {hub.url}" in done.stderr
    assert not (tmp_path / "x").exists()
