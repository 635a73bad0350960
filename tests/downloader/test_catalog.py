"""The shipped catalog is valid and covers what the app recommends; broken entries are named."""

from __future__ import annotations

import json

import pytest

from app.downloader import CatalogError, Fit, fit, load_catalog
from app.downloader.catalog import CATALOG_PATH

GB = 1_000_000_000


def test_the_shipped_catalog_covers_small_to_large_awq_and_vision() -> None:
    entries = load_catalog()
    chat = [e for e in entries if e.kind == "chat"]
    assert min(e.params_b for e in chat) <= 0.5 and max(e.params_b for e in chat) >= 72
    assert {e.quantization for e in entries} == {None, "awq"}
    assert any(e.kind == "vision" for e in entries)
    assert all("hf" in e.repos for e in entries)
    awq = [e for e in entries if e.quantization == "awq"]
    assert all(e.size_bytes < 0.5 * e.params_b * 2 * GB for e in awq)  # 4-bit weights: under half of 16-bit


def test_fit_prefers_the_gpu_then_ram() -> None:
    entry = next(e for e in load_catalog() if e.id == "qwen2.5-7b-instruct-awq")
    assert fit(entry, free_gpu_bytes=24 * GB, free_ram_bytes=16 * GB) is Fit.GPU
    assert fit(entry, free_gpu_bytes=4 * GB, free_ram_bytes=16 * GB) is Fit.CPU
    assert fit(entry, free_gpu_bytes=None, free_ram_bytes=16 * GB) is Fit.CPU
    assert fit(entry, free_gpu_bytes=None, free_ram_bytes=2 * GB) is Fit.TOO_BIG


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("good_for"), "missing ['good_for']"),
    (lambda m: m.update(memory_bytes=1), "memory_bytes is below size_bytes"),
    (lambda m: m.update(repos={"civitai": "a/b"}), "repos must map"),
    (lambda m: m.update(kind="audio"), "kind must be one of"),
])
def test_a_broken_entry_is_named(tmp_path, change, message) -> None:
    document = json.loads(CATALOG_PATH.read_text())
    change(document["models"][1])
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CatalogError, match=f"catalog entry '{document['models'][1]['id']}'.*{message}".replace(
            "[", r"\[").replace("]", r"\]")):
        load_catalog(path)
