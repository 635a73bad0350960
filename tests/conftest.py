"""Shared fixtures: tiny random-weight checkpoints and the converted starter model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import write_tiny_model


@pytest.fixture(scope="session")
def lmstation_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private user-data directory for the whole test session (never the real one)."""
    home = tmp_path_factory.mktemp("lmstation_home")
    os.environ["LMSTATION_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def starter_model(lmstation_home: Path) -> Path:
    from app.engine.starter import ensure_starter_model

    return ensure_starter_model()


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """Returns (folder, HF model) for a variant of tests.tiny_models.VARIANTS, written once per session."""
    made: dict[tuple, tuple[Path, object]] = {}

    def make(variant: str, **overrides):
        key = (variant, repr(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(variant)
            made[key] = (folder, write_tiny_model(folder, variant, **overrides))
        return made[key]

    return make
