"""The local model library: turning what a user typed (folder, name or nothing) into a model folder."""

from __future__ import annotations

import json
import math
import shutil
import struct
from dataclasses import dataclass
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


# ---- what the Models page lists ------------------------------------------------------------------
_LINKS_FILE = "linked_models.json"  # in the models folder: folders imported in place (not copied)
_ESTIMATE_CONTEXT = 4096  # tokens of KV cache the memory estimate includes
_WORKSPACE_SHARE = 0.1  # activations, graphs and allocator slack, as a share of the weights


class LibraryError(Exception):
    """A folder is not a model this app can list, with what is missing."""


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    architecture: str
    parameters: int
    weight_type: str  # "bfloat16", "float16", … or a quantization such as "AWQ 4-bit, group 128"
    size_bytes: int  # every file in the folder
    weight_bytes: int
    kv_bytes: int  # KV cache for ``context`` tokens
    kv_heads: int
    context: int
    linked: bool  # imported in place: deleting forgets it and leaves its files alone
    vision: bool = False  # reads pictures (a vision-language model)

    @property
    def memory_bytes(self) -> int:
        """Weights + KV cache for ``context`` tokens + workspace: what loading it on one device needs."""
        return self.memory_per_gpu(1)

    def memory_per_gpu(self, split: int) -> int:
        """What each GPU needs with the model split over ``split`` of them: a share of the
        weights, and of the KV heads (each rank keeps one whole head where there are fewer
        heads than ranks)."""
        heads = max(1, self.kv_heads)
        kv = self.kv_bytes * max(1, heads // split) / heads
        return int(self.weight_bytes / split * (1 + _WORKSPACE_SHARE) + kv)


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (the format's first 8 bytes give its length)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise LibraryError(f"{path.name} is not a safetensors file")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def _weights(folder: Path) -> tuple[int, int, str]:
    """(parameters, bytes, most common dtype) of the folder's safetensors weights."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LibraryError(f"{folder} holds no .safetensors weights")
    parameters = weight_bytes = 0
    dtype_bytes: dict[str, int] = {}
    for file in files:
        try:
            header = _safetensors_header(file)
        except (OSError, ValueError, struct.error) as exc:
            raise LibraryError(f"{file.name} cannot be read: {exc}") from exc
        for name, info in header.items():
            count = math.prod(info["shape"])
            size = info["data_offsets"][1] - info["data_offsets"][0]
            weight_bytes += size
            dtype_bytes[info["dtype"]] = dtype_bytes.get(info["dtype"], 0) + size
            if name.endswith(("qzeros", "scales", "g_idx")):
                continue
            parameters += count * 8 if name.endswith("qweight") else count  # 8 int4 values per int32
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    main = max(dtype_bytes, key=dtype_bytes.get)
    return parameters, weight_bytes, names.get(main, main.lower())


def describe_model(folder: Path, linked: bool = False) -> LocalModel:
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise LibraryError(f"{folder} has no config.json, so it is not a Hugging Face model folder") from None
    except (OSError, ValueError) as exc:
        raise LibraryError(f"{config_file} cannot be read: {exc}") from exc
    parameters, weight_bytes, dtype = _weights(folder)
    quant = config.get("quantization_config") or {}
    weight_type = (f"{quant.get('quant_method', 'quantized').upper()} {quant.get('bits', '?')}-bit, "
                   f"group {quant.get('group_size', '?')}") if quant else dtype
    text = config.get("text_config", config)
    heads = text.get("num_attention_heads", 1)
    head_dim = text.get("head_dim") or text.get("hidden_size", 0) // max(1, heads)
    context = min(text.get("max_position_embeddings", _ESTIMATE_CONTEXT), _ESTIMATE_CONTEXT)
    kv_heads = text.get("num_key_value_heads", heads)
    kv_bytes = 2 * text.get("num_hidden_layers", 0) * kv_heads * head_dim * 2 * context
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return LocalModel(
        name=folder.name, path=folder, architecture=(config.get("architectures") or ["unknown"])[0],
        parameters=parameters, weight_type=weight_type, size_bytes=size, weight_bytes=weight_bytes,
        kv_bytes=kv_bytes, kv_heads=kv_heads, context=context, linked=linked, vision="vision_config" in config,
    )


def _linked_folders() -> list[Path]:
    try:
        return [Path(p) for p in json.loads((models_dir() / _LINKS_FILE).read_text())]
    except (OSError, ValueError):
        return []


def _save_links(folders: list[Path]) -> None:
    target = models_dir() / _LINKS_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps([str(f) for f in folders], indent=1))
    temporary.replace(target)


def list_models() -> tuple[list[LocalModel], list[str]]:
    """The models in the library folder and those imported in place, and a note for each folder
    that looks like a model but cannot be listed (so a broken download is explained, not hidden)."""
    models, problems = [], []
    candidates = [(d, False) for d in sorted(models_dir().iterdir()) if d.is_dir() and not d.name.startswith(".")]
    candidates += [(d, True) for d in _linked_folders()]
    for folder, linked in candidates:
        try:
            models.append(describe_model(folder, linked))
        except LibraryError as exc:
            problems.append(str(exc))
    return models, problems


def link_folder(folder: Path) -> LocalModel:
    """Imports a model folder in place: it is checked, then remembered (nothing is copied)."""
    folder = folder.expanduser().resolve()
    model = describe_model(folder, linked=True)
    if folder.parent != models_dir().resolve():
        links = _linked_folders()
        if folder not in links:
            _save_links([*links, folder])
    return model


def remove_model(model: LocalModel) -> None:
    """Deletes a library model's folder; a model imported in place is only forgotten."""
    if model.linked:
        _save_links([f for f in _linked_folders() if f != model.path])
    else:
        shutil.rmtree(model.path)
