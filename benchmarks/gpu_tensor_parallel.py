"""Tensor parallelism on a real model shape with random weights (the same weights at every split):
the logits of TP=N against TP=1 (bf16), and batch-1 decode speed of each. Needs N GPUs.

Usage: python benchmarks/gpu_tensor_parallel.py [--shape llama-3-8b] [--tp 2] [--steps 32]
       [--prompt-len 128] [--output-len 256] [--batch 1] [--device cuda]
       [--all-reduce peer,nccl] [--profile]

--all-reduce: the TP=N runs to make, one per way of summing (parallel_state.ALL_REDUCE_ENV);
--profile: after each run, rank 0's kernels over 16 decode steps (CUDA graphs included).

Logits are compared while both runs have fed the model the same tokens: greedy decoding in bf16
may take a different token at a near tie, after which the inputs (and logits) differ by design.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import torch

from app.engine.bench_shapes import write_shape_folder
from app.engine.config import EngineConfig, GenerationConfig
from app.engine.distributed.parallel_state import ALL_REDUCE_ENV
from app.engine.engine_core import EngineCore
from app.engine.loader.model_loader import load


def start(folder: Path, tp: int, args: argparse.Namespace) -> EngineCore:
    config = EngineConfig(model=folder, device=args.device, dtype="bfloat16", load_format="random", tensor_parallel=tp,
                          max_num_seqs=max(args.batch, 2), max_num_batched_tokens=max(2048, args.prompt_len),
                          prefill_chunk_size=args.prompt_len, max_model_len=args.prompt_len + args.output_len + 16,
                          enable_prefix_caching=False)
    started = time.perf_counter()
    core = EngineCore(load(config, folder), config)
    print(f"TP={tp}: loaded and warmed up in {time.perf_counter() - started:.1f} s ({core.stats()['kernels']})")
    return core


def run(core: EngineCore, prompts: list[list[int]], gen: GenerationConfig) -> list:
    finals = {}
    for ids in prompts:
        core.add_request(ids, gen, lambda d: finals.__setitem__(d.request_id, d) if d.finished else None)
    while core.has_work():
        core.step()
    if core.failure:
        raise RuntimeError(core.failure)
    return [finals[i] for i in sorted(finals)]


def measure(folder: Path, tp: int, args: argparse.Namespace) -> tuple[list[int], torch.Tensor, float]:
    """(greedy tokens, their logits [steps, vocab], decode tokens/s per sequence at args.batch)."""
    core = start(folder, tp, args)
    try:
        vocab = core.loaded.config.vocab_size
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(100, vocab, (args.batch, args.prompt_len), generator=g).tolist()
        (final,) = run(core, prompts[:1], GenerationConfig(temperature=0, max_new_tokens=args.steps,
                                                           ignore_eos=True, output_logits=True))
        logits = torch.stack(final.logits).float().cpu()
        run(core, prompts, GenerationConfig(temperature=0, max_new_tokens=16, ignore_eos=True))  # warm-up
        finals = run(core, prompts, GenerationConfig(temperature=0, max_new_tokens=args.output_len, ignore_eos=True))
        speed = sum(f.stats.decode_tokens_per_s for f in finals) / len(finals)
        print(f"TP={tp}: batch {args.batch} decode {speed:.1f} tokens/s per sequence "
              f"({1e3 / speed:.2f} ms per step)")
        if args.profile:
            profile(core, prompts)
        return [int(row.argmax()) for row in logits], logits, speed  # greedy: each step's argmax
    finally:
        core.close()
        del core
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def profile(core: EngineCore, prompts: list[list[int]]) -> None:
    """Rank 0's GPU time per kernel over 16 decode steps of the batch (after its prefill)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    gen = GenerationConfig(temperature=0, max_new_tokens=17, ignore_eos=True)
    for ids in prompts:
        core.add_request(ids, gen, lambda d: None)
    core.step()  # the prefill, outside the profile
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        while core.has_work():
            core.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3-8b")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32, help="greedy steps whose logits are compared")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda", help="the first rank's (cpu: a smoke test of the script)")
    parser.add_argument("--all-reduce", default="peer", help="comma-separated: peer (NCCL above its size), nccl")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        print(f"{torch.cuda.device_count()} GPUs, the first a {torch.cuda.get_device_name(0)}")
    folder = write_shape_folder(args.shape, Path(tempfile.gettempdir()) / f"lmstation-shape-{args.shape}")

    tokens_1, logits_1, speed_1 = measure(folder, 1, args)
    for mode in args.all_reduce.split(","):
        os.environ[ALL_REDUCE_ENV] = mode  # the spawned ranks inherit it
        print(f"-- TP={args.tp}, all-reduce: {mode}")
        compare(args, tokens_1, logits_1, speed_1, *measure(folder, args.tp, args))


def compare(args: argparse.Namespace, tokens_1: list[int], logits_1: torch.Tensor, speed_1: float,
            tokens_n: list[int], logits_n: torch.Tensor, speed_n: float) -> None:
    same = next((i for i, (a, b) in enumerate(zip(tokens_1, tokens_n)) if a != b), len(tokens_1))
    compared = min(same + 1, len(tokens_1))  # step i's logits depend on the tokens before it only
    error = (logits_n[:compared] - logits_1[:compared]).abs()
    print(f"greedy tokens equal for {same}/{len(tokens_1)} steps; over the {compared} steps fed the same tokens: "
          f"max |logit TP={args.tp} - TP=1| = {error.max().item():.4f}, mean {error.mean().item():.5f} "
          f"(logits std {logits_1.std().item():.3f})")
    print(f"decode speed-up TP={args.tp} over TP=1 at batch {args.batch}: {speed_n / speed_1:.2f}x "
          f"({speed_1:.1f} -> {speed_n:.1f} tokens/s)")


if __name__ == "__main__":  # the spawned ranks import this script too, as __mp_main__
    main()
