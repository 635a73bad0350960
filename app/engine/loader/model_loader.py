"""From a model folder to a ready model, tokenizer and KV cache on one device (or split over
several: tensor parallelism, where each rank loads only its part)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch
from transformers import PreTrainedTokenizerBase

from app.engine.config import EngineConfig
from app.engine.distributed import parallel_state
from app.engine.distributed.parallel_state import Shard
from app.engine.distributed.sharding import check_divisible
from app.engine.errors import ModelLoadError, ModelNotFoundError, UnsupportedModelError
from app.engine.kernels import ops_for, with_cache_format
from app.engine.kv_cache import KVCache, bytes_per_block
from app.engine.kv_quant import CacheFormat
from app.engine.loader.weights import checkpoint_files, count_tensors, iter_weights, reporting, validate_file
from app.engine.models.config import ModelConfig
from app.engine.models.decoder import DecoderLM
from app.engine.models.registry import build_model, resolve_config
from app.engine.tokenizer import eos_token_ids, load_tokenizer

if TYPE_CHECKING:
    from app.engine.distributed.group import WorkerGroup

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
    workers: WorkerGroup | None = None  # tensor parallel: ranks 1.., each in a process of its own
    processor: Any = None  # a vision-language model's (vision.prompts.load_processor)

    def close(self) -> None:
        """Stops the other tensor-parallel ranks (their processes end)."""
        if self.workers is not None:
            self.workers.close()


def resolve_device(name: str, tensor_parallel: int = 1, gpus: tuple[int, ...] = ()) -> torch.device:
    """The device (rank 0's, under tensor parallelism: the first of ``gpus``, else ``name``'s,
    and the others take the next GPUs)."""
    if gpus:
        name = f"cuda:{gpus[0]}"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but no CUDA GPU is available")
    first = device.index or 0
    wanted = list(gpus) or list(range(first, first + tensor_parallel))
    if tensor_parallel > 1 and device.type == "cuda" and max(wanted) >= torch.cuda.device_count():
        raise ModelLoadError(
            f"tensor_parallel={tensor_parallel} needs GPUs {', '.join(map(str, wanted))}; "
            f"this machine has {torch.cuda.device_count()}"
        )
    # With an index: the process group binds its NCCL communicator to that exact device.
    return torch.device("cuda", first) if tensor_parallel > 1 and device.type == "cuda" else device


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


def check_model_folder(model_dir: Path, load_format: str = "safetensors", tensor_parallel: int = 1) -> ModelConfig:
    """Everything that can be checked without loading weights: config, architecture, weight
    files complete, a split over tensor_parallel ranks. Done before unloading a working model,
    so a bad choice costs nothing."""
    cfg = read_config(model_dir)
    check_divisible(cfg, tensor_parallel)
    if load_format == "safetensors":
        for path in checkpoint_files(model_dir):
            validate_file(path)
    return cfg


def cache_format(engine_cfg: EngineConfig, model_dtype: torch.dtype) -> CacheFormat:
    return CacheFormat.of(engine_cfg.kv_cache_dtype, model_dtype)


def _cache_blocks(cfg: ModelConfig, engine_cfg: EngineConfig, max_model_len: int, fmt: CacheFormat, device,
                  shard: Shard) -> int:
    per_block = bytes_per_block(cfg, engine_cfg.block_size, fmt, shard)
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


def load_shard(
    engine_cfg: EngineConfig, model_dir: Path, cfg: ModelConfig, shard: Shard, device: torch.device,
    progress: Callable[[float], None] | None = None,
) -> tuple[DecoderLM, int]:
    """This rank's part of the model (all of it without tensor parallelism), loaded and packed,
    and how many cache blocks its memory affords. A rank reads only its part of each tensor.
    ``progress`` hears the share of the weights read."""
    dtype = resolve_dtype(engine_cfg.dtype, cfg.torch_dtype, device)
    fmt = cache_format(engine_cfg, dtype)
    ops = with_cache_format(ops_for(device, engine_cfg.kernels, shard.world), fmt, dtype, cfg.head_dim)
    context = _context(cfg, engine_cfg)
    model = build_model(cfg, ops, dtype, device, context, shard)
    if engine_cfg.load_format == "random":
        model.load_weights(model.random_weights())
    else:
        files = checkpoint_files(model_dir)
        weights = iter_weights(files, model.shard_index if shard.world > 1 else None)
        model.load_weights(weights if progress is None else reporting(weights, count_tensors(files), progress))
    model.pack_weights()
    model.eval()
    if shard.world > 1:
        parallel_state.enable_peer_all_reduce(device)
    return model, _cache_blocks(cfg, engine_cfg, context, fmt, device, shard)


def usable_context(cfg: ModelConfig, engine_cfg: EngineConfig, cache: KVCache) -> int:
    """The longest sequence served. One sequence must always fit alone in the cache, or it could never finish."""
    return min(_context(cfg, engine_cfg), cache.num_tokens)


def _context(cfg: ModelConfig, engine_cfg: EngineConfig) -> int:
    return engine_cfg.max_model_len or cfg.context_length


def load(engine_cfg: EngineConfig, model_dir: Path, checked: ModelConfig | None = None,
         progress: Callable[[float], None] | None = None) -> LoadedModel:
    """``checked``: the folder's config when check_model_folder already ran (it reads every weight header).
    With tensor_parallel > 1 this process is rank 0; the other ranks start first and load alongside.
    ``progress`` hears the share of rank 0's weights read."""
    world = engine_cfg.tensor_parallel
    cfg = checked or check_model_folder(model_dir, engine_cfg.load_format, world)
    device = resolve_device(engine_cfg.device, world, engine_cfg.gpus)
    if device.type == "cuda" and device.index is not None:  # Triton launches on the thread's
        torch.cuda.set_device(device)  # current GPU: this (engine) thread's
    tokenizer = load_tokenizer(model_dir)
    if cfg.vision is not None and world > 1:
        raise UnsupportedModelError("vision-language models run on one device for now (no tensor parallelism)")
    workers = None
    if world > 1:
        from app.engine.distributed.group import WorkerGroup  # here: its ranks import this module

        workers = WorkerGroup.start(engine_cfg, model_dir, device)
    try:
        model, blocks = load_shard(engine_cfg, model_dir, cfg, Shard(0, world), device, progress)
        if workers is not None:
            blocks = workers.agree_cache_blocks(blocks)
        cache = KVCache.allocate(cfg, blocks, engine_cfg.block_size, cache_format(engine_cfg, model.dtype), device,
                                 model.shard)
        processor = None
        if cfg.vision is not None:
            from app.engine.vision.prompts import load_processor

            processor = load_processor(model_dir, model)
    except BaseException:
        if workers is not None:
            workers.close()
        raise
    return LoadedModel(
        path=model_dir,
        config=cfg,
        model=model,
        tokenizer=tokenizer,
        cache=cache,
        eos_token_ids=eos_token_ids(model_dir, tokenizer, cfg.eos_token_ids),
        max_model_len=usable_context(cfg, engine_cfg, cache),
        device=device,
        dtype=model.dtype,
        kernels=model.ops.name if world == 1 else f"{model.ops.name}; {parallel_state.all_reduce_kind()}",
        workers=workers,
        processor=processor,
    )
