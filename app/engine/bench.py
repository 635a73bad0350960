"""Speed of the engine, and of HF transformers on the same model and inputs.

Both run in one process on the same random prompts (seeded), greedy, ignoring end-of-sequence,
so every request produces exactly the tokens asked for. Besides prefill/decode at a fixed
batch: an offline workload with ShareGPT-like lengths, time to first token of a long prompt,
and the device's own limits (copy bandwidth, GEMM rate) to judge the figures against.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine_core import EngineCore
from app.engine.loader.model_loader import load


@dataclass
class BenchSpec:
    model_dir: Path
    batch: int = 1
    input_len: int = 128
    output_len: int = 128
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    load_format: str = "safetensors"  # "random": real shapes, random weights
    kv_cache_dtype: str = "auto"


@dataclass
class BenchResult:
    name: str
    device: str
    dtype: str
    batch: int
    input_len: int
    output_len: int
    prefill_s: float  # all prompts of the batch
    decode_s: float  # the output_len - 1 tokens after the first
    prefill_tokens_per_s: float
    decode_tokens_per_s: float  # summed over the batch
    output_tokens_per_s: float  # all generated tokens over the whole run, prefill included
    weight_bytes: int = 0  # the engine's weights in memory (0 for the baseline)

    def as_dict(self) -> dict:
        return asdict(self)


def random_prompts(spec: BenchSpec, vocab_size: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(spec.seed)
    # Stay clear of the low ids where special tokens usually sit.
    return torch.randint(100, vocab_size, (spec.batch, spec.input_len), generator=g).tolist()


def _result(name, spec, device, dtype, prefill_s, decode_s) -> BenchResult:
    return BenchResult(
        name=name, device=str(device), dtype=str(dtype).removeprefix("torch."), batch=spec.batch,
        input_len=spec.input_len, output_len=spec.output_len, prefill_s=prefill_s, decode_s=decode_s,
        prefill_tokens_per_s=spec.batch * spec.input_len / prefill_s,
        decode_tokens_per_s=spec.batch * (spec.output_len - 1) / decode_s,
        output_tokens_per_s=spec.batch * spec.output_len / (prefill_s + decode_s),
    )


def _core(spec: BenchSpec, **options) -> EngineCore:
    gc.collect()  # earlier runs' models: give their memory back so the KV cache is sized alike
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    config = EngineConfig(model=spec.model_dir, device=spec.device, dtype=spec.dtype, load_format=spec.load_format,
                          kv_cache_dtype=spec.kv_cache_dtype, enable_prefix_caching=False, **options)
    return EngineCore(load(config, spec.model_dir), config)


def bench_engine(spec: BenchSpec) -> BenchResult:
    core = _core(spec, max_num_seqs=max(spec.batch, 1), max_num_batched_tokens=max(2048, spec.batch),
                 prefill_chunk_size=max(spec.input_len, 16), max_model_len=spec.input_len + spec.output_len + 16)
    prompts = random_prompts(spec, core.loaded.config.vocab_size)
    gen = GenerationConfig(temperature=0.0, max_new_tokens=spec.output_len, ignore_eos=True)
    # Warm-up: the whole batch through prefill and 8 decode steps, as the HF baseline warms up
    # (generate(8) on the same prompts): kernels specialised on these shapes compile, and the CPU
    # allocator has met the largest activations (a first 2048-row step pays ~20% more in page
    # faults), before the clock starts.
    warm_up = GenerationConfig(temperature=0.0, max_new_tokens=8, ignore_eos=True)
    for ids in prompts:
        core.add_request(ids, warm_up, lambda d: None)
    while core.has_work():
        core.step()
    awaiting_first_token: set[int] = set()
    for ids in prompts:
        awaiting_first_token.add(core.add_request(ids, gen, lambda d: awaiting_first_token.discard(d.request_id)))
    start = time.perf_counter()
    while awaiting_first_token:  # prefill: until every request has its first token
        core.step()
    prefilled = time.perf_counter()
    while core.has_work():
        core.step()
    end = time.perf_counter()
    result = _result("lmstation", spec, core.loaded.device, core.loaded.dtype, prefilled - start, end - prefilled)
    result.weight_bytes = core.loaded.model.weight_bytes()
    del core
    return result


def bench_hf(spec: BenchSpec, device: str, dtype: str) -> BenchResult:
    """HF transformers ``generate`` on the same prompts, in the dtype and device the engine used."""
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    torch_dtype = getattr(torch, dtype)
    if spec.load_format == "random":
        from transformers import AutoConfig

        with torch.device(device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec.model_dir), dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch_dtype).to(device)
    model.eval()
    prompts = random_prompts(spec, model.config.vocab_size)
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    pad = model.config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad

    def generate(n: int) -> tuple[float, float]:
        """(prefill, decode) seconds of one call, split where the first logits come out: a logits
        processor sees the clock (after syncing the device) once the prompt's forward is done."""
        first: list[float] = []

        def stamp(_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if not first:
                if scores.is_cuda:
                    torch.cuda.synchronize()
                first.append(time.perf_counter())
            return scores

        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=pad, logits_processor=LogitsProcessorList([stamp]))
        if ids.is_cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        return first[0] - start, end - first[0]

    generate(8)  # warm-up
    prefill_s, decode_s = generate(spec.output_len)
    return _result("hf-transformers", spec, device, torch_dtype, prefill_s, decode_s)


# ---- offline workload ------------------------------------------------------------------------

def sharegpt_like_lengths(num: int, seed: int, low: int = 4, high: int = 1024) -> list[tuple[int, int]]:
    """(input, output) lengths, each log-normal around 256 and clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    draw = lambda: np.clip(rng.lognormal(math.log(256), 0.8, num), low, high).astype(int)  # noqa: E731
    return list(zip(draw().tolist(), draw().tolist()))


@dataclass
class WorkloadResult:
    requests: int
    finished: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_workload(spec: BenchSpec, num_requests: int = 1000, max_num_seqs: int = 384) -> WorkloadResult:
    """All requests submitted at once (offline), served with continuous batching."""
    core = _core(spec, max_num_seqs=max_num_seqs, max_num_batched_tokens=8192, prefill_chunk_size=2048,
                 max_model_len=2048 + 16)
    vocab = core.loaded.config.vocab_size
    g = torch.Generator().manual_seed(spec.seed)
    lengths = sharegpt_like_lengths(num_requests, spec.seed)
    first: dict[int, float] = {}
    done: dict[int, tuple[float, int]] = {}

    def on_delta(delta) -> None:
        now = time.perf_counter()
        first.setdefault(delta.request_id, now)
        if delta.finished:
            done[delta.request_id] = (now, delta.stats.completion_tokens if delta.stats else 0)

    start = time.perf_counter()
    for in_len, out_len in lengths:
        ids = torch.randint(100, vocab, (in_len,), generator=g).tolist()
        core.add_request(ids, GenerationConfig(temperature=0.0, max_new_tokens=out_len, ignore_eos=True), on_delta)
    while core.has_work():
        core.step()
    duration = time.perf_counter() - start
    ttft = [(first[r] - start) * 1e3 for r in done]
    tpot = [(end - first[r]) * 1e3 / (n - 1) for r, (end, n) in done.items() if n > 1]
    tokens = sum(n for _, n in done.values())
    return WorkloadResult(
        requests=num_requests, finished=len(done), duration_s=duration, requests_per_s=len(done) / duration,
        output_tokens_per_s=tokens / duration, ttft_p50_ms=_percentile(ttft, 50), ttft_p99_ms=_percentile(ttft, 99),
        tpot_p50_ms=_percentile(tpot, 50), tpot_p99_ms=_percentile(tpot, 99),
    )


def bench_ttft(spec: BenchSpec, prompt_len: int = 2048, repeats: int = 5) -> float:
    """Median milliseconds from submitting one prompt of ``prompt_len`` tokens to its first token."""
    core = _core(spec, max_num_seqs=4, max_num_batched_tokens=prompt_len, prefill_chunk_size=prompt_len,
                 max_model_len=prompt_len + 16)
    g = torch.Generator().manual_seed(spec.seed)
    times = []
    for i in range(repeats + 1):  # the first run warms up
        ids = torch.randint(100, core.loaded.config.vocab_size, (prompt_len,), generator=g).tolist()
        start = time.perf_counter()
        core.add_request(ids, GenerationConfig(temperature=0.0, max_new_tokens=1), lambda d: None)
        while core.has_work():
            core.step()
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---- what the device allows --------------------------------------------------------------------

def copy_bandwidth(device: torch.device, size: int = 1 << 30) -> float:
    """Bytes per second moved by a device-to-device copy (read + write counted)."""
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    _sync(device)
    return 2 * size * 10 / (time.perf_counter() - start)


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Floating-point operations per second of a large square matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 2 * n**3 * 10 / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
