"""From a model folder to a ready model, tokenizer and KV cache on one device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from transformers import PreTrainedTokenizerBase

from app.engine.config import EngineConfig
from app.engine.errors import ModelLoadError, ModelNotFoundError
from app.engine.kernels import ops_for
from app.engine.kv_cache import KVCache, bytes_per_block
from app.engine.loader.weights import checkpoint_files, iter_weights, validate_file
from app.engine.models.config import ModelConfig
from app.engine.models.decoder import DecoderLM
from app.engine.models.registry import build_model, resolve_config
from app.engine.tokenizer import eos_token_ids, load_tokenizer

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Memory the cache may take by default: most of a GPU's free memory; a modest share of RAM.
_DEFAULT_CACHE_FRACTION = {"cuda": 0.85, "cpu": 0.1}


@dataclass
class LoadedModel:
    path: Path
    config: ModelConfig
    model: DecoderLM
    tokenizer: PreTrainedTokenizerBase
    cache: KVCache
    eos_token_ids: frozenset[int]
    max_model_len: int
    device: torch.device
    dtype: torch.dtype
    kernels: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but no CUDA GPU is available")
    return device


def resolve_dtype(name: str, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
    """auto: the checkpoint's half precision on GPU; bf16 on CPUs that compute it natively, else fp32."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        wanted = _DTYPES.get(checkpoint_dtype or "", torch.bfloat16)
        return torch.bfloat16 if wanted == torch.float32 else wanted
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def read_config(model_dir: Path) -> ModelConfig:
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"no model folder at {model_dir}")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_dir} has no config.json: it is not a Hugging Face model folder")
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"config.json in {model_dir} is not valid JSON: {exc}") from exc
    return resolve_config(raw)


def check_model_folder(model_dir: Path, load_format: str = "safetensors") -> ModelConfig:
    """Everything that can be checked without loading weights: config, architecture, weight
    files complete. Done before unloading a working model, so a bad choice costs nothing."""
    cfg = read_config(model_dir)
    if load_format == "safetensors":
        for path in checkpoint_files(model_dir):
            validate_file(path)
    return cfg


def _cache_blocks(cfg: ModelConfig, engine_cfg: EngineConfig, max_model_len: int, dtype, device) -> int:
    per_block = bytes_per_block(cfg, engine_cfg.block_size, dtype)
    if engine_cfg.num_cache_blocks is not None:
        return engine_cfg.num_cache_blocks
    fraction = engine_cfg.cache_memory_fraction or _DEFAULT_CACHE_FRACTION[device.type]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available
    affordable = int(free * fraction) // per_block
    # No point holding more than every sequence at full context.
    useful = engine_cfg.max_num_seqs * -(-max_model_len // engine_cfg.block_size)
    blocks = min(affordable, useful)
    if blocks < 1:
        raise ModelLoadError(
            f"no memory left for the KV cache on {device} (one block takes {per_block / 2**20:.1f} MiB)"
        )
    return blocks


def load(engine_cfg: EngineConfig, model_dir: Path, checked: ModelConfig | None = None) -> LoadedModel:
    """``checked``: the folder's config when check_model_folder already ran (it reads every weight header)."""
    cfg = checked or check_model_folder(model_dir, engine_cfg.load_format)
    device = resolve_device(engine_cfg.device)
    dtype = resolve_dtype(engine_cfg.dtype, cfg.torch_dtype, device)
    tokenizer = load_tokenizer(model_dir)
    ops = ops_for(device, engine_cfg.kernels)
    context = engine_cfg.max_model_len or cfg.context_length
    model = build_model(cfg, ops, dtype, device, context)
    if engine_cfg.load_format == "random":
        model.fill_random()
    else:
        model.load_weights(iter_weights(checkpoint_files(model_dir)))
    model.pack_weights()
    model.eval()
    blocks = _cache_blocks(cfg, engine_cfg, context, dtype, device)
    cache = KVCache.allocate(cfg, blocks, engine_cfg.block_size, dtype, device)
    return LoadedModel(
        path=model_dir,
        config=cfg,
        model=model,
        tokenizer=tokenizer,
        cache=cache,
        eos_token_ids=eos_token_ids(model_dir, tokenizer, cfg.eos_token_ids),
        # One sequence must always fit alone in the cache, or it could never finish.
        max_model_len=min(context, cache.num_tokens),
        device=device,
        dtype=dtype,
        kernels=ops.name,
    )

