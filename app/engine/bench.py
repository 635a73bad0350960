"""Prefill and decode speed of the engine, and of HF transformers on the same model and inputs.

Both run in one process on the same random prompts (seeded), greedy, ignoring end-of-sequence,
so every request produces exactly ``output_len`` tokens.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
    )


def bench_engine(spec: BenchSpec) -> BenchResult:
    config = EngineConfig(
        model=spec.model_dir, device=spec.device, dtype=spec.dtype, max_num_seqs=max(spec.batch, 1),
        max_num_batched_tokens=max(2048, spec.batch), prefill_chunk_size=max(spec.input_len, 16),
        max_model_len=spec.input_len + spec.output_len + 16, enable_prefix_caching=False,
    )
    core = EngineCore(load(config, spec.model_dir), config)
    prompts = random_prompts(spec, core.loaded.config.vocab_size)
    gen = GenerationConfig(temperature=0.0, max_new_tokens=spec.output_len, ignore_eos=True)
    # Warm-up: one short request through prefill and decode.
    core.add_request(prompts[0][:16], GenerationConfig(temperature=0.0, max_new_tokens=8, ignore_eos=True), lambda d: None)
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
    del core
    return result


def bench_hf(spec: BenchSpec, device: str, dtype: str) -> BenchResult:
    """HF transformers ``generate`` on the same prompts, in the dtype and device the engine used."""
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch_dtype).to(device).eval()
    prompts = random_prompts(spec, model.config.vocab_size)
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    pad = model.config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad

    def generate(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=pad)
        if ids.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    generate(8)  # warm-up
    prefill_s = generate(1)
    total_s = generate(spec.output_len)
    return _result("hf-transformers", spec, device, torch_dtype, prefill_s, total_s - prefill_s)
