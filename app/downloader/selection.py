"""Which files of a repository make a model folder: one weight format (safetensors first), one
quantization variant, plus configs, tokenizer, processor and license files. Repositories often carry the
same weights several times (.bin next to .safetensors, ONNX exports, a dozen GGUF quantizations)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from app.downloader.backends import RepoFile

WEIGHT_FORMATS = ("safetensors", "bin", "pth", "pt", "ckpt", "onnx", "gguf", "h5", "msgpack", "ot", "tflite", "npz")
PREFERRED_FORMATS = ("safetensors", "bin", "gguf")  # the first one a repository has is taken
GGUF_PREFERENCE = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "BF16", "F16")
SKIPPED_DIRS = {"original", "onnx", "openvino", "coreml", "mlx", "tflite", "flax", "tf"}  # other runtimes' copies
METADATA_SUFFIXES = (".json", ".model", ".tiktoken", ".txt", ".jinja", ".md")  # configs, tokenizers, processors
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
_GGUF_QUANT = re.compile(r"(?i)(?<![A-Z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Z0-9])")


@dataclass(frozen=True)
class FileChoice:
    variant: str | None = None  # a quantization or precision variant ("Q4_K_M", "fp16"); None: the default
    formats: tuple[str, ...] = ()  # weight formats to take ("safetensors", "bin"); empty: the preferred one
    everything: bool = False  # the whole repository, as it is


def select_files(files: tuple[RepoFile, ...] | list[RepoFile], choice: FileChoice = FileChoice()) -> list[RepoFile]:
    if choice.everything:
        return list(files)
    files = [f for f in files if not SKIPPED_DIRS.intersection(f.path.split("/")[:-1])]
    formats = choice.formats or _preferred_format(files)
    weights = {fmt: [f for f in files if weight_format(f.path) == fmt] for fmt in formats}
    chosen_groups = {fmt: _pick_variant(_groups(group), choice.variant) for fmt, group in weights.items()}
    picked = [f for fmt in formats for f in weights[fmt] if _group_key(f.path) == chosen_groups[fmt]]
    metadata = [f for f in files if weight_format(f.path) is None and _is_metadata(f.path, chosen_groups)]
    return sorted(metadata + picked, key=lambda f: f.path)


def variants(files: tuple[RepoFile, ...] | list[RepoFile], choice: FileChoice = FileChoice()) -> list[str]:
    """The variants on offer for the weight format that ``choice`` would take (for a picker)."""
    files = [f for f in files if not SKIPPED_DIRS.intersection(f.path.split("/")[:-1])]
    keys = {_group_key(f.path) for fmt in (choice.formats or _preferred_format(files))
            for f in files if weight_format(f.path) == fmt}
    return sorted(keys)


def weight_format(path: str) -> str | None:
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return suffix if suffix in WEIGHT_FORMATS else None


def _preferred_format(files: list[RepoFile]) -> tuple[str, ...]:
    present = {weight_format(f.path) for f in files}
    return next(((fmt,) for fmt in PREFERRED_FORMATS if fmt in present), ())


def _group_key(path: str) -> str:
    """Files of one variant share a key: the quantization of a GGUF file, else the name without its
    shard number and extension ("model-00001-of-00004.safetensors" -> "model")."""
    stem = path.rsplit(".", 1)[0]
    if path.lower().endswith(".gguf"):
        quant = _GGUF_QUANT.findall(stem.rsplit("/", 1)[-1])
        return quant[-1].upper() if quant else _SHARD.sub("", stem)
    return _SHARD.sub("", stem)


def _groups(files: list[RepoFile]) -> dict[str, int]:
    sizes: dict[str, int] = defaultdict(int)
    for f in files:
        sizes[_group_key(f.path)] += f.size or 0
    return sizes


def _pick_variant(groups: dict[str, int], wanted: str | None) -> str | None:
    if not groups:
        return None
    if wanted:
        matches = [key for key in groups if key.lower() == wanted.lower()]
        matches = matches or [key for key in groups if wanted.lower() in key.lower()]
        if matches:
            return min(matches, key=len)
    for key in ("model", "pytorch_model", *GGUF_PREFERENCE):
        if key in groups:
            return key
    return max(groups, key=lambda key: groups[key])  # the main weights are the biggest


def _is_metadata(path: str, chosen: dict[str, str | None]) -> bool:
    """Configs and tokenizer files; a weight index only for the weights that were picked."""
    if m := re.fullmatch(r"(.+)\.(\w+)\.index\.json", path):
        return chosen.get(m[2]) == _group_key(f"{m[1]}.{m[2]}")
    name = path.rsplit("/", 1)[-1]
    return path.lower().endswith(METADATA_SUFFIXES) or name.upper().startswith(("LICENSE", "NOTICE"))
