"""Engine and generation settings: the two configs callers fill in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.engine.errors import RequestError

DTYPES = ("auto", "bfloat16", "float16", "float32")
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)


@dataclass
class EngineConfig:
    """How to load a model and size the engine around it."""

    model: str | Path
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    # "safetensors": the checkpoint's weights. "random": random weights of the config's shapes
    # (speed measurements of real model shapes without their checkpoints).
    load_format: str = "safetensors"
    # KV cache: tokens per block, and how much memory the cache may take.
    block_size: int = 64
    # Share of the memory free after loading the weights; None: 0.85 of a GPU's, 0.1 of RAM.
    cache_memory_fraction: float | None = None
    num_cache_blocks: int | None = None  # exact block count; overrides the fraction
    # How keys and values are stored: auto (the model's dtype) | bfloat16 | float16 | float32 |
    # int8 | int4 (quantized per token and head; 2x or ~3.8x the tokens in the same memory).
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool = True
    # Scheduler: how many sequences and tokens one step may process.
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    prefill_chunk_size: int = 512  # longest prompt slice prefilled in one step
    # While 32 or more sequences decode, new requests join every this many steps, together (a
    # step mixing prompts in cannot replay a CUDA graph). Fewer decoding: they join at once.
    prefill_interval: int = 8
    max_model_len: int | None = None  # defaults to the model's context length
    cuda_graphs: bool = True  # replay decode steps from captured graphs (CUDA only)
    kernels: str = "auto"  # auto | torch | triton (see kernels.ops_for)
    # Ranks the model is split over (app/engine/distributed): GPUs from the device's index on
    # (one spawned process each beside this one), or processes on the CPU.
    tensor_parallel: int = 1
    # The GPUs of a split model, rank by rank (rank 0's is the engine's device); empty: the
    # tensor_parallel GPUs from the device's index on.
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.load_format not in ("safetensors", "random"):
            raise ValueError(f"load_format must be 'safetensors' or 'random', got {self.load_format!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.kernels not in ("auto", "torch", "triton"):
            raise ValueError(f"kernels must be auto, torch or triton, got {self.kernels!r}")
        if self.tensor_parallel not in TENSOR_PARALLEL_SIZES:
            raise ValueError(f"tensor_parallel must be one of {TENSOR_PARALLEL_SIZES}, got {self.tensor_parallel!r}")
        if self.gpus and (len(self.gpus) != self.tensor_parallel or len(set(self.gpus)) != len(self.gpus)
                          or min(self.gpus) < 0):
            raise ValueError(f"gpus must name {self.tensor_parallel} different GPUs, got {self.gpus!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if min(self.block_size, self.prefill_chunk_size, self.max_num_seqs, self.prefill_interval) < 1:
            raise ValueError("block_size, prefill_chunk_size, max_num_seqs and prefill_interval must be positive")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs (one token each)")
        if self.cache_memory_fraction is not None and not 0.0 < self.cache_memory_fraction <= 1.0:
            raise ValueError("cache_memory_fraction must be in (0, 1]")


KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "float32", "int8", "int4")
MAX_LOGPROBS = 20  # likeliest tokens a request may ask for at each step (OpenAI's limit)


@dataclass
class GenerationConfig:
    """How one request samples and when it stops. temperature 0 means greedy."""

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    output_logits: bool = False  # return each step's raw logits (for tests and analysis)
    # Log-probabilities under the model's own distribution (before penalties and temperature) of
    # each sampled token, with the ``logprobs`` likeliest tokens'; None: none.
    logprobs: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise RequestError("max_new_tokens must be at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise RequestError("min_new_tokens must be between 0 and max_new_tokens")
        if self.temperature < 0:
            raise RequestError("temperature must be >= 0")
        if self.top_k < 0:
            raise RequestError("top_k must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError("top_p must be in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise RequestError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise RequestError("repetition_penalty must be > 0")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise RequestError(f"logprobs must be between 0 and {MAX_LOGPROBS}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
