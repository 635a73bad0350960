"""The local model library: turning what a user typed (folder, name or nothing) into a model folder."""

from __future__ import annotations

from pathlib import Path

from app.paths import models_dir


class ModelNotFound(Exception):
    pass


def resolve_model(model: str | Path | None) -> Path:
    """None: the starter model (converted on first use). Else an existing folder, a GGUF file
    (imported into the library once), or a model name in the library."""
    if model is None:
        from app.engine.starter import ensure_starter_model

        return ensure_starter_model()
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return import_gguf(path)
    named = models_dir() / str(model)
    if named.is_dir():
        return named
    raise ModelNotFound(
        f"no model folder at {path} and no model named {model!r} in the library ({models_dir()})"
    )


def import_gguf(gguf: Path) -> Path:
    """Converts a llama.cpp GGUF file into a model folder in the library, once."""
    from app.engine.loader.gguf_import import convert_gguf

    folder = models_dir() / gguf.stem
    if not (folder / "config.json").is_file():
        convert_gguf(gguf, folder)
    return folder
