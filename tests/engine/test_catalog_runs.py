"""Every model the catalog offers is one the engine runs: its architecture is in the registry."""

from __future__ import annotations

import json
from pathlib import Path

from app.engine.models.registry import supported_architectures

CATALOG = Path(__file__).resolve().parents[2] / "assets" / "catalog.json"


def test_the_catalog_offers_only_what_the_engine_runs() -> None:
    models = json.loads(CATALOG.read_text())["models"]
    unsupported = {m["id"]: m["architecture"] for m in models if m["architecture"] not in supported_architectures()}
    assert not unsupported
    vision = {m["architecture"] for m in models if m["kind"] == "vision"}
    assert len(vision) >= 3  # several vision families, 2B to 8B and AWQ
    assert any(m["kind"] == "vision" and m["quantization"] == "awq" for m in models)
