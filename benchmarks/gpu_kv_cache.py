"""KV-cache precision on a real model shape with random weights, every dtype in one run: how many
tokens the cache holds at the same memory fraction, and batch decode speed over long contexts
(issue: int8/int4 KV cache). Needs a GPU with room for batch x (input + output) tokens in bf16.

Usage: python benchmarks/gpu_kv_cache.py [--shape llama-3-8b] [--batch 64] [--input-len 4096]
       [--steps 32] [--dtypes auto,int8,int4]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from app.engine.bench import BenchSpec, _core
from app.engine.bench_shapes import write_shape_folder
from app.engine.config import GenerationConfig


def decode_speed(core, batch: int, input_len: int, steps: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s at the full batch): every prompt prefilled first, then `steps`
    steps of the batch decoding together, timed alone (a run that counted the decodes made
    while later prompts were still prefilling would overstate them)."""
    prompts = torch.randint(100, core.loaded.config.vocab_size, (batch, input_len),
                            generator=torch.Generator().manual_seed(0)).tolist()
    gen = GenerationConfig(temperature=0.0, max_new_tokens=1 << 20, ignore_eos=True)
    for ids in prompts:
        core.add_request(ids, gen, lambda d: None)
    torch.cuda.synchronize()
    started = time.perf_counter()
    while core.scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in core.scheduler.running):
        core.step()
    torch.cuda.synchronize()
    prefilled = time.perf_counter()
    assert len(core.scheduler.running) == batch, "the cache must hold the whole batch"
    for _ in range(4):  # CUDA graphs warm
        core.step()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(steps):
        core.step()
    torch.cuda.synchronize()
    return batch * input_len / (prefilled - started), batch * steps / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3-8b")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--dtypes", default="auto,int8,int4")
    args = parser.parse_args()
    folder = write_shape_folder(args.shape, Path(tempfile.gettempdir()) / f"lmstation-shape-{args.shape}")
    rows = []
    for kv in args.dtypes.split(","):
        spec = BenchSpec(model_dir=folder, device="cuda", dtype="bfloat16", load_format="random", kv_cache_dtype=kv)
        # The default memory fraction, with room for so many sequences that memory alone sets the size.
        core = _core(spec, max_num_seqs=4096, max_num_batched_tokens=8192, max_model_len=8192)
        tokens, name, kernels = core.stats()["cache_tokens"], core.stats()["kv_cache_dtype"], core.stats()["kernels"]
        del core
        gc.collect()
        core = _core(spec, max_num_seqs=args.batch, max_num_batched_tokens=8192, prefill_chunk_size=8192,
                     max_model_len=args.input_len + 256)
        prefill, decode = decode_speed(core, args.batch, args.input_len, args.steps)
        del core
        gc.collect()
        rows.append((name, tokens, decode))
        print(f"{name}: {tokens} cache tokens; batch {args.batch}, {args.input_len}-token prompts: decode "
              f"{decode:.0f} tok/s, prefill {prefill:.0f} tok/s ({kernels})", flush=True)
        torch.cuda.empty_cache()
    base_tokens, base_speed = rows[0][1], rows[0][2]
    print(f"\n| KV cache | cache tokens | x {rows[0][0]} | decode tok/s (batch {args.batch}, {args.input_len}-token "
          f"contexts) | x {rows[0][0]} |\n| --- | ---: | ---: | ---: | ---: |")
    for name, tokens, decode in rows:
        print(f"| {name} | {tokens} | {tokens / base_tokens:.2f} | {decode:.0f} | {decode / base_speed:.2f} |")


if __name__ == "__main__":
    main()
