"""Launch shapes for the fused decode layer's GEMV kernel against cuBLAS (torch.nn.functional.linear),
at the starter's and Llama-3-8B's linear shapes, timed inside CUDA graphs as the engine runs them.
Usage: python benchmarks/gpu_fused_decode_sweep.py"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from app.engine.kernels.triton import fused_decode

SHAPES = {  # name: (out, in)
    "smollm2 qkv": (960, 576), "smollm2 o": (576, 576), "smollm2 gate_up": (3072, 576), "smollm2 down": (576, 1536),
    "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (28672, 4096), "8b down": (4096, 14336),
}
CALLS = 50


class _Linear:
    def __init__(self, weight: torch.Tensor):
        self.weight, self.bias = weight, None


def time_us(fn) -> float:
    """Microseconds per call, from a CUDA graph of CALLS calls."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * CALLS)


def main() -> None:
    default = dict(fused_decode.TILES)  # None: chosen by the row length
    configs = [dict(programs_per_sm=p, tile_elements=t, num_warps=w)
               for p, t, w in itertools.product((1, 2, 4), (2048, 4096, 8192), (4, 8))]
    for name, (n, k) in SHAPES.items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for rows in (1, 4, 16):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            linear = _Linear(weight)
            ours = fused_decode._linear(linear, x)
            err = ((ours.float() - F.linear(x, weight).float()).norm() / F.linear(x, weight).float().norm()).item()
            cublas = time_us(lambda: F.linear(x, weight))
            timings = []
            for config in (configs if rows == 1 else []):
                fused_decode.TILES.update(config)
                timings.append((time_us(lambda: fused_decode._linear(linear, x)), config))
            fused_decode.TILES.update(default)
            default_us = time_us(lambda: fused_decode._linear(linear, x))
            best_us, best = min(timings or [(default_us, default)], key=lambda t: t[0])
            gbps = n * k * 2 / best_us / 1e3
            print(f"{name:16} M={rows:2}: cuBLAS {cublas:7.2f} us | ours default {default_us:7.2f} us | "
                  f"best {best_us:7.2f} us ({gbps:5.0f} GB/s) {best} | rel err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
