"""What a quantization will be before it runs: which models qualify, the default group size and
output folder, and rough estimates of time, disk and memory.

No torch and no Qt: the wizard recomputes all of it as the user types, on the GUI thread.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from app.library import LocalModel
from app.ui.quantize_report import DEFAULTS as REPORT_DEFAULTS

GROUP_SIZES = (128, 64, 32)  # the first that divides every layer is the default
FLOAT_TYPES = ("float16", "bfloat16", "float32")
DEFAULT_SAMPLES, DEFAULT_SEQLEN = 128, 512  # QuantizeConfig's defaults: what AWQ's authors calibrate with
# QuantizeConfig's defaults (the time estimate's work); the scale search also tries s = 1: 21 candidates
SCALE_GRID, CLIP_GRID, SEARCH_SAMPLES = 21, 20, 16
# Effective throughput of the quantizer's mixed small GEMMs and searches, and of the perplexity runs:
# the starter model with the defaults took 32 s a layer, and 65 s a perplexity, on 2 busy CPU cores.
CPU_FLOPS_PER_CORE, GPU_FLOPS = 40e9, 15e12
ACTIVATION_COPIES = 2  # captured inputs are concatenated from chunks, outputs made beside inputs
RUNTIME_BYTES = 600_000_000  # Python, torch and transformers in the worker process
_CHUNK_TOKENS = 8192  # tokens per chunked layer run (app/engine/quant/layer_inputs.py)


def can_quantize(model: LocalModel) -> bool:
    """Unquantized weights only: AWQ starts from the fp16/bf16/fp32 original."""
    return model.weight_type in FLOAT_TYPES


def read_config(model: LocalModel) -> dict:
    config = json.loads((model.path / "config.json").read_text())
    return config.get("text_config", config)


def _layer_inputs(config: dict) -> dict[str, int]:
    """Input widths of a decoder layer's linears, named as the user knows them."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return {"hidden size": config["hidden_size"], "attention width": heads * head_dim,
            "intermediate size": config["intermediate_size"]}


def _fits(config: dict, group_size: int) -> bool:
    return all(width % group_size == 0 for width in _layer_inputs(config).values())


def group_size_problem(config: dict, group_size: int, name: str) -> str | None:
    """Why ``group_size`` cannot quantize this model (every linear's input must split into whole groups)."""
    for what, width in _layer_inputs(config).items():
        if width % group_size:
            fits = [str(g) for g in GROUP_SIZES if _fits(config, g)]
            hint = f"choose {' or '.join(fits)}" if fits else "no group size fits this model"
            return f"Group size {group_size} does not divide {width}, the {what} of {name}: {hint}."
    return None


def default_group_size(config: dict) -> int | None:
    return next((g for g in GROUP_SIZES if _fits(config, g)), None)


def output_folder(models_dir: Path, name: str) -> Path:
    """``<name>-AWQ`` in the library, numbered when taken (nothing is ever overwritten)."""
    base = f"{name}-AWQ"
    folder, number = models_dir / base, 2
    while folder.exists():
        folder, number = models_dir / f"{base}-{number}", number + 1
    return folder


def name_problem(models_dir: Path, name: str) -> str | None:
    if not name.strip():
        return "Give the new model a name."
    if any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
        return f"“{name}” cannot be a folder name: leave out / \\ : * ? \" < > | and a leading dot."
    if (models_dir / name).exists():
        return (f"A folder named {name} already exists in {models_dir}; choose another name "
                "(nothing is overwritten).")
    return None


@dataclass(frozen=True)
class Estimate:
    seconds: float  # quantization
    seconds_per_layer: float
    layers: int
    report_seconds: float  # perplexity of both models, with the report's default windows
    disk_bytes: int  # the 4-bit checkpoint
    source_weight_bytes: int
    work_bytes: int  # on the compute device: one layer and the calibration activations
    model_bytes: int  # the whole model, waiting in RAM while its layers take turns


def estimate(model: LocalModel, config: dict, group_size: int, samples: int, seqlen: int, gpu: bool) -> Estimate:
    """Rough figures from the shapes: the FLOPs of calibration, scale search and clipping per layer
    and of the report's perplexity, 4 bits plus scales and zeros per grouped weight, and one layer's
    activations."""
    widths = _layer_inputs(config)
    hidden, attn, inter = widths["hidden size"], widths["attention width"], widths["intermediate size"]
    heads = config["num_attention_heads"]
    kv = (config.get("num_key_value_heads") or heads) * (attn // heads)
    layers = config["num_hidden_layers"]
    linear = hidden * (attn + 2 * kv) + attn * hidden + 3 * hidden * inter  # q k v, o, gate up down
    others = max(0, model.parameters - layers * linear)  # embeddings, head, norms: kept in fp16
    tokens, searched = samples * seqlen, min(SEARCH_SAMPLES, samples) * seqlen
    flops = linear * (4 * tokens + 2 * 1.5 * searched * SCALE_GRID + group_size * CLIP_GRID) \
        + 4 * tokens * seqlen * attn
    speed = GPU_FLOPS if gpu else CPU_FLOPS_PER_CORE * (os.cpu_count() or 1)
    per_layer = flops / speed
    element = 2 if gpu else 4  # the quantizer computes in fp16/bf16 on a GPU, float32 on a CPU
    activations = tokens * (4 * hidden + attn + inter) * element * ACTIVATION_COPIES
    attention_scores = min(tokens, _CHUNK_TOKENS) * heads * seqlen * 4
    source = sum(f.stat().st_size for f in model.path.glob("*.safetensors"))
    ppl_tokens = REPORT_DEFAULTS["ppl_windows"] * REPORT_DEFAULTS["ppl_seqlen"]
    return Estimate(
        seconds=per_layer * layers, seconds_per_layer=per_layer, layers=layers,
        report_seconds=2 * 2 * model.parameters * ppl_tokens / speed,
        disk_bytes=int(linear * layers * (0.5 + 2.5 / group_size) + others * 2 + (model.size_bytes - source)),
        source_weight_bytes=source, work_bytes=linear * element + activations + attention_scores,
        model_bytes=(layers * linear + others) * element + RUNTIME_BYTES)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
