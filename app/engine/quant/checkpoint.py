"""Writing the quantized model as a Hugging Face AWQ checkpoint folder, atomically.

Everything goes into a hidden temporary folder next to the destination, which is renamed into
place at the end: an error, a full disk or Ctrl-C leaves no partial checkpoint that could be
mistaken for a model. Non-quantized tensors (embeddings, norms, lm_head, biases) are stored in
fp16, the dtype AWQ checkpoints are read in.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from app.engine.quant.architecture import IMAGE_MODULES, LINEARS, NOT_CONVERTED, is_vision_language
from app.engine.quant.config import QuantizeConfig, QuantizeError

FreeBytes = Callable[[Path], int]
MAX_SHARD_BYTES = 5_000_000_000
_COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
           "chat_template.json", "preprocessor_config.json", "processor_config.json")
_HEADROOM = 1.05  # safetensors headers, config files, filesystem slack


def disk_free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_destination(out: Path) -> None:
    if out.exists():
        raise QuantizeError(f"{out} already exists; choose a new output folder (nothing is overwritten)")


def check_free_space(out: Path, needed: int, free_bytes: FreeBytes) -> None:
    free = free_bytes(_existing_parent(out.parent))
    if free < needed:
        raise QuantizeError(f"not enough disk space for {out}: the checkpoint needs about {needed / 1e9:.2f} GB, "
                            f"{free / 1e9:.2f} GB are free")


def _is_quantized(name: str) -> bool:
    """A language-model decoder layer's linear weight (a vision tower's layers are not)."""
    return (name.startswith(("model.layers.", "model.language_model.layers."))
            and name.endswith(tuple(f".{n}.weight" for n in LINEARS)))


def _source_file_bytes(model_dir: Path) -> int:
    return sum((model_dir / n).stat().st_size for n in _COPIED if (model_dir / n).is_file())


def estimate_checkpoint_bytes(model: nn.Module, group_size: int, model_dir: Path) -> int:
    """Bytes the checkpoint will take: 4 bits per quantized weight plus fp16 scales and packed zeros
    per group, fp16 for everything else, and the copied tokenizer files."""
    total = _source_file_bytes(model_dir)
    for name, tensor in _stored_state(model).items():
        if _is_quantized(name):
            out_features, in_features = tensor.shape
            total += out_features * in_features // 2 + out_features * (in_features // group_size) * 5 // 2
        else:
            total += tensor.numel() * 2
    return int(total * _HEADROOM)


def _stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as saved: a tied lm_head is stored once, as the embedding."""
    state = model.state_dict()
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() == embed.weight.data_ptr():
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return state


def _checkpoint_tensors(model: nn.Module, quantized: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    packed = {name.rsplit(".", 1)[0] for name in quantized if name.endswith(".qweight")}
    tensors = {}
    for name, tensor in _stored_state(model).items():
        if name.rsplit(".", 1)[0] in packed:
            continue  # replaced by qweight / qzeros / scales (and the fp16 bias, already in ``quantized``)
        half = tensor.detach().to("cpu", torch.float16).contiguous()
        if not torch.isfinite(half).all():
            raise QuantizeError(f"{name} has values beyond float16's range; it cannot be stored in an AWQ checkpoint")
        tensors[name] = half
    tensors.update(quantized)
    return tensors


def _shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    shards = _shards(tensors)
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def quantization_config(group_size: int, vision: bool = False) -> dict:
    """``vision``: a vision-language model, whose image side stays in fp16 too."""
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": list(NOT_CONVERTED) + (list(IMAGE_MODULES) if vision else [])}


def _model_config(source: dict, group_size: int) -> dict:
    config = dict(source, torch_dtype="float16",
                  quantization_config=quantization_config(group_size, is_vision_language(source)))
    if "dtype" in config:
        config["dtype"] = "float16"
    return config


def write_checkpoint(model: nn.Module, quantized: dict[str, torch.Tensor], config: QuantizeConfig,
                     source_config: dict, free_bytes: FreeBytes) -> Path:
    """Writes weights, config and the source's tokenizer files; returns the published folder."""
    out = config.out.absolute()
    tensors = _checkpoint_tensors(model, quantized)
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + _source_file_bytes(config.model)
    check_destination(out)
    check_free_space(out, int(needed * _HEADROOM), free_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        temporary.mkdir()
        _write_weights(temporary, tensors)
        config_text = json.dumps(_model_config(source_config, config.group_size), indent=2)
        (temporary / "config.json").write_text(config_text + "\n")
        for name in _COPIED:
            if (config.model / name).is_file():
                shutil.copyfile(config.model / name, temporary / name)
        check_destination(out)
        temporary.rename(out)
    except BaseException as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(exc, OSError):
            raise QuantizeError(f"writing {out} failed: {exc.strerror or exc}; nothing was left behind") from exc
        raise
    return out
