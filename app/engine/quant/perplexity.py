"""Perplexity on held-out text, for before/after-quantization reports.

Fixed, non-overlapping windows of the held-out part of the built-in text (never used for
calibration) or of the user's file; one window per forward, float32 on the CPU, so the same
folder gives the same number on every run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from app.engine.quant.calibration import builtin_heldout_texts, read_text_files, token_windows
from app.engine.quant.config import QuantizeError
from app.engine.quant.dequantize import is_awq_folder, load_dequantized

DEFAULT_WINDOWS = 40
DEFAULT_SEQLEN = 512


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    windows: int
    tokens: int  # tokens predicted (seqlen - 1 per window)


def _eval_dtype(folder: Path, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32
    if is_awq_folder(folder):
        return torch.float16
    config = json.loads((folder / "config.json").read_text())
    name = config.get("torch_dtype") or config.get("dtype") or "float16"
    return getattr(torch, name)


def load_for_eval(folder: Path, device: torch.device):
    """An fp folder as it is, an AWQ folder dequantized: both run transformers' own forward (a
    vision-language model's on text alone)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    dtype = _eval_dtype(folder, device)
    if is_awq_folder(folder):
        model = load_dequantized(folder, dtype)
    else:
        vision = "vision_config" in json.loads((folder / "config.json").read_text())
        model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        model = model_class.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()
    return model.to(device)


@torch.no_grad()
def windows_perplexity(model, windows: torch.Tensor) -> PerplexityResult:
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for window in windows.to(device):
        logits = model(input_ids=window.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        nll += float(F.cross_entropy(logits, window[1:], reduction="sum"))
        count += window.numel() - 1
    return PerplexityResult(math.exp(nll / count), windows.shape[0], count)


def evaluate_perplexity(folder: Path, data: Path | None = None, device: str = "auto",
                        windows: int = DEFAULT_WINDOWS, seqlen: int = DEFAULT_SEQLEN) -> PerplexityResult:
    from transformers import AutoTokenizer

    if not (folder / "config.json").is_file():
        raise QuantizeError(f"{folder} has no config.json: not a Hugging Face model folder")
    if windows < 1 or seqlen < 2:
        raise QuantizeError("perplexity needs at least one window of at least two tokens")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = read_text_files([data]) if data is not None else builtin_heldout_texts()
    ids = token_windows(AutoTokenizer.from_pretrained(folder), texts, seqlen, windows)
    return windows_perplexity(load_for_eval(folder, torch.device(device)), ids)


def engine_perplexity(folder: Path, kv_cache_dtype: str, data: Path | None = None, device: str = "auto",
                      windows: int = DEFAULT_WINDOWS, seqlen: int = DEFAULT_SEQLEN, chunk: int = 64) -> PerplexityResult:
    """The same windows through our own engine with the KV cache stored as ``kv_cache_dtype``
    (EngineConfig's): each window is prefilled ``chunk`` tokens a step over the paged cache, so
    every chunk after the first attends to the cached (quantized) keys and values of the ones
    before, and every position's logits count. float32 on the CPU, as above."""
    from app.engine.config import EngineConfig
    from app.engine.engine_core import EngineCore
    from app.engine.loader.model_loader import load
    from app.engine.model_runner import StepInputs
    from app.engine.tokenizer import load_tokenizer

    if chunk < 1:
        raise QuantizeError("the chunk must hold at least one token")
    texts = read_text_files([data]) if data is not None else builtin_heldout_texts()
    ids = token_windows(load_tokenizer(folder), texts, seqlen, windows)
    block = 16
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = EngineConfig(model=folder, device=device, dtype="float32" if device == "cpu" else "auto",
                          kv_cache_dtype=kv_cache_dtype,
                          block_size=block, num_cache_blocks=-(-seqlen // block) + 1, enable_prefix_caching=False,
                          cuda_graphs=False, max_model_len=seqlen + 1, prefill_chunk_size=chunk)
    core = EngineCore(load(config, folder), config)
    try:
        nll, count = 0.0, 0
        with torch.inference_mode():
            for window in ids.tolist():
                table = list(range(-(-len(window) // block)))  # the cache is this evaluation's alone
                rows = []
                for start in range(0, len(window), chunk):
                    part = window[start : start + chunk]
                    span = range(start, start + len(part))
                    step = StepInputs(ids=part, positions=list(span),
                                      slots=[table[p // block] * block + p % block for p in span],
                                      block_tables=[table], query_starts=[0], query_lens=[len(part)],
                                      context_lens=[start + len(part)], num_decodes=0, sampling=[])
                    rows.append(core.loaded.model.compute_logits(core.runner._forward(step)).float())
                logits = torch.cat(rows)[:-1]
                target = torch.tensor(window[1:], device=logits.device)
                nll += float(F.cross_entropy(logits, target, reduction="sum"))
                count += len(window) - 1
    finally:
        core.close()
    return PerplexityResult(math.exp(nll / count), ids.shape[0], count)
