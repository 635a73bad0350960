"""Where a batch-1 decode step's time goes on the GPU: graph replay alone vs the whole engine
step (scheduling, staging, sampling, detokenization), with the fused decode layers and without
(the per-op kernels; batch 1 only). Usage:
python benchmarks/gpu_step_profile.py SHAPE [BATCH] [PROMPT_LEN] [KV_CACHE_DTYPE (auto, int8, int4, ...)]"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from app.engine.bench_shapes import write_shape_folder
from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine_core import EngineCore
from app.engine.loader.model_loader import load
from app.engine.models.decoder import DecoderLM


def main(shape: str, batch: int, prompt_len: int, kv_cache_dtype: str = "auto", steps: int = 300) -> None:
    profile(shape, batch, prompt_len, steps, fused=True, kv_cache_dtype=kv_cache_dtype)
    if batch > 1:
        return
    bind = DecoderLM.bind_cache
    DecoderLM.bind_cache = lambda self, kv_caches: None  # no whole-layer kernels: the per-op path
    try:
        profile(shape, batch, prompt_len, steps, fused=False, kv_cache_dtype=kv_cache_dtype)
    finally:
        DecoderLM.bind_cache = bind


def profile(shape: str, batch: int, prompt_len: int, steps: int, fused: bool, kv_cache_dtype: str = "auto") -> None:
    folder = write_shape_folder(shape, Path(tempfile.gettempdir()) / f"lmstation-shape-{shape}")
    config = EngineConfig(model=folder, device="cuda", dtype="bfloat16", load_format="random", max_num_seqs=batch + 1,
                          max_num_batched_tokens=max(2048, prompt_len), prefill_chunk_size=prompt_len,
                          max_model_len=prompt_len + 1024, enable_prefix_caching=False, kv_cache_dtype=kv_cache_dtype)
    core = EngineCore(load(config, folder), config)
    for i in range(batch):
        core.add_request([100 + (i + j) % 1000 for j in range(prompt_len)],
                         GenerationConfig(temperature=0, max_new_tokens=1000, ignore_eos=True), lambda d: None)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in core.scheduler.running) or core.scheduler.waiting:
        core.step()
    for _ in range(5):
        core.step()
    steps = min(steps, 1000 - 10)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        core.step()
    step_ms = (time.perf_counter() - start) / steps * 1e3
    graph, logits = core.runner.graphs.graphs[next(b for b in core.runner.graphs.buckets if b >= batch)]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - start) / steps * 1e3
    start = time.perf_counter()
    for _ in range(steps):
        logits.argmax(dim=-1).tolist()
    sample_ms = (time.perf_counter() - start) / steps * 1e3
    print(f"{shape} batch {batch}, {kv_cache_dtype} KV cache ({'fused layers' if fused else 'per-op'}): engine step {step_ms:.3f} ms "
          f"({batch * 1e3 / step_ms:.0f} tok/s); graph replay alone {replay_ms:.3f} ms; argmax+tolist {sample_ms:.3f} ms; host overhead ~{step_ms - replay_ms:.3f} ms")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(50):
            core.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))
    print_kernels_by_launch_shape(prof, replays=20)
    if batch > 1:  # a mixed step: these decodes plus one 512-token prompt, eager
        core.add_request([100 + j % 1000 for j in range(512)], GenerationConfig(temperature=0, max_new_tokens=4),
                         lambda d: None)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            core.step()
            torch.cuda.synchronize()
            mixed_ms = (time.perf_counter() - start) * 1e3
        print(f"mixed step ({batch} decodes + 512 prompt tokens): {mixed_ms:.2f} ms")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))
        import cProfile
        import pstats

        core.add_request([200 + j % 1000 for j in range(512)], GenerationConfig(temperature=0, max_new_tokens=4),
                         lambda d: None)
        torch.cuda.synchronize()
        with cProfile.Profile() as host:
            core.step()
            torch.cuda.synchronize()
        pstats.Stats(host).sort_stats("tottime").print_stats(18)


def print_kernels_by_launch_shape(prof, replays: int) -> None:
    """Kernel time per step grouped by kernel and grid, which tells apart the linears of one kernel.
    Two columns: a kernel's span (under programmatic dependent launch it includes its wait on the
    one before: run with LMSTATION_PDL=0 for spans that add up), and what it adds to the step, the
    time from the previous kernel's end to its own (these add up to the GPU time either way)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        events = json.loads(Path(trace.name).read_text())["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    last_end = None
    for event in kernels:
        end = event["ts"] + event["dur"]
        added = event["dur"] if last_end is None else max(0.0, end - last_end)
        last_end = end if last_end is None else max(last_end, end)
        key = (event["name"][:60], str(event.get("args", {}).get("grid")))
        groups.setdefault(key, []).append((event["dur"], added))
    print(f"{'kernel':60s} {'grid':>16s} {'calls/step':>10s} {'us/call':>8s} {'added/call':>10s} {'added/step':>10s}")
    for (name, grid), times in sorted(groups.items(), key=lambda kv: -sum(a for _, a in kv[1])):
        calls = len(times)
        print(f"{name:60s} {grid:>16s} {calls / replays:10.1f} {sum(d for d, _ in times) / calls:8.2f} "
              f"{sum(a for _, a in times) / calls:10.2f} {sum(a for _, a in times) / replays:10.1f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "smollm2-135m", int(args[1]) if len(args) > 1 else 1,
         int(args[2]) if len(args) > 2 else 128, args[3] if len(args) > 3 else "auto")
