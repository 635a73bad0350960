"""The curated list of recommended models (assets/catalog.json), checked on load, and whether one fits
the memory a machine has free."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path

from app.downloader.backends import SOURCES
from app.paths import assets_dir

CATALOG_PATH = assets_dir() / "catalog.json"
KINDS = ("chat", "vision")
QUANTIZATIONS = (None, "awq")


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    family: str
    kind: str  # "chat" | "vision"
    params_b: float  # billions of parameters
    quantization: str | None  # None (16-bit) or "awq"
    architecture: str  # config.json's architectures[0], to check engine support
    repos: dict[str, str]  # source -> repository id
    size_bytes: int  # on disk, the files a download takes
    memory_bytes: int  # to run it: weights, an 8K-token KV cache and workspace
    context_tokens: int
    license: str
    gated: bool  # the hub wants the license accepted and a token
    good_for: str


class Fit(str, Enum):
    GPU = "gpu"  # fits in free GPU memory
    CPU = "cpu"  # not on the GPU, but in free RAM (slower)
    TOO_BIG = "too_big"


def load_catalog(path: Path = CATALOG_PATH) -> list[CatalogEntry]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot read the model catalog {path}: {exc}") from exc
    entries = [_entry(raw) for raw in document.get("models", [])]
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise CatalogError(f"catalog entry {entry.id!r} appears twice")
        seen.add(entry.id)
    return entries


def fit(entry: CatalogEntry, free_gpu_bytes: int | None, free_ram_bytes: int) -> Fit:
    """Where the model can run; ``free_gpu_bytes`` is None without a GPU."""
    if free_gpu_bytes is not None and entry.memory_bytes <= free_gpu_bytes:
        return Fit.GPU
    if entry.memory_bytes <= free_ram_bytes:
        return Fit.CPU
    return Fit.TOO_BIG


def _entry(raw: dict) -> CatalogEntry:
    name = raw.get("id", "?") if isinstance(raw, dict) else "?"
    expected = {f.name for f in fields(CatalogEntry)}
    if not isinstance(raw, dict) or set(raw) != expected:
        got = set(raw) if isinstance(raw, dict) else set()
        raise CatalogError(f"catalog entry {name!r}: missing {sorted(expected - got)}, "
                           f"unknown {sorted(got - expected)}")
    entry = CatalogEntry(**raw)
    problems = [
        (not all(isinstance(getattr(entry, k), str) and getattr(entry, k) for k in
                 ("id", "name", "family", "architecture", "license", "good_for")), "empty text field"),
        (entry.kind not in KINDS, f"kind must be one of {KINDS}"),
        (entry.quantization not in QUANTIZATIONS, f"quantization must be one of {QUANTIZATIONS}"),
        (not entry.repos or not set(entry.repos) <= set(SOURCES)
         or not all(isinstance(r, str) and r.count("/") == 1 for r in entry.repos.values()),
         f"repos must map {SOURCES} to 'org/name' ids"),
        (not all(isinstance(v, int) and v > 0 for v in (entry.size_bytes, entry.memory_bytes, entry.context_tokens)),
         "sizes must be positive integers"),
        (entry.memory_bytes < entry.size_bytes, "memory_bytes is below size_bytes"),
        (not isinstance(entry.params_b, (int, float)) or entry.params_b <= 0, "params_b must be positive"),
        (not isinstance(entry.gated, bool), "gated must be true or false"),
    ]
    for bad, why in problems:
        if bad:
            raise CatalogError(f"catalog entry {name!r}: {why}")
    return entry
