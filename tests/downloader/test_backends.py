"""The backends through the real clients against the local hub: listings with checksums, search with
filters, ModelScope downloads, and the downloader importing neither torch nor Qt."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys

import pytest

from app.downloader import DownloadError, DownloadRequest, JobState, make_backend
from tests.downloader.conftest import blob
from tests.downloader.fake_hub import Fault

FILES = {"config.json": b"{}", "model.safetensors": blob(200_000), "pytorch_model.bin": b"dup"}


def test_hf_listing_is_pinned_to_the_commit_with_sizes_and_checksums(hub) -> None:
    repo = hub.add("org/model", FILES)
    listing = make_backend("hf", hub.url, "").list_files("org/model", "main")
    assert listing.revision == repo.commit
    weights = {f.path: f for f in listing.files}["model.safetensors"]
    assert weights.size == 200_000 and weights.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert weights.url == f"{hub.url}/org/model/resolve/{repo.commit}/model.safetensors"


def test_hf_search_by_name_task_and_library(hub) -> None:
    for name in ("org/llama-tiny", "org/llama-small", "org/qwen-tiny"):
        hub.add(name, FILES)
    backend = make_backend("hf", hub.url, "")
    assert [r.repo for r in backend.search("llama")] == ["org/llama-small", "org/llama-tiny"]
    found = backend.search("tiny", task="text-generation", library="transformers", limit=1)
    assert [(r.repo, r.task, r.library) for r in found] == [("org/llama-tiny", "text-generation", "transformers")]
    assert backend.search("tiny", task="image-classification") == []


def test_an_unreachable_hub_is_a_clear_transient_error() -> None:
    with pytest.raises(DownloadError, match=r"^org/model: cannot reach http://127\.0\.0\.1:9: ") as caught:
        make_backend("hf", "http://127.0.0.1:9", "").list_files("org/model")
    assert caught.value.transient


def test_modelscope_download_through_its_client(hub, make_manager, tmp_path) -> None:
    hub.add("org/model", FILES)
    hub.faults["model.safetensors"] = Fault("drop", after=50_000)
    dest = tmp_path / "ms-model"
    done = make_manager().add(DownloadRequest("org/model", source="modelscope", endpoint=hub.url, token="",
                                              dest=dest)).wait(30)
    assert done.state is JobState.DONE, done.error
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["config.json",
                                                                                    "model.safetensors"]
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert [r.range for r in hub.requests_for("model.safetensors")] == [None, "bytes=50000-"]
    assert hub.requests_for("/api/v1/models/org/model/repo/files")


def test_modelscope_search_and_errors(hub) -> None:
    hub.add("org/qwen-tiny", FILES)
    backend = make_backend("modelscope", hub.url, "")
    assert [r.repo for r in backend.search("qwen")] == ["org/qwen-tiny"]
    with pytest.raises(DownloadError, match=r"^org/missing: repository or revision not found on http://127"):
        backend.list_files("org/missing")


def test_the_downloader_imports_neither_torch_nor_qt() -> None:
    sources = ["hf"] + (["modelscope"] if importlib.util.find_spec("modelscope_hub") else [])
    code = ("import sys, app.downloader, app.commands.download; from app.downloader import make_backend; "
            f"[make_backend(s, 'http://127.0.0.1:9').headers() for s in {sources}]; "
            "print(sorted(m for m in ('torch', 'PySide6', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
