"""W4A16 (AWQ 4-bit) linears against bf16 at Llama-3-8B's shapes, on the GPU box: bf16 cuBLAS
(F.linear) vs the Triton W4A16 kernel vs the CUDA W4A16 GEMV (M <= 8), in microseconds per call
and effective GB/s (bytes that must move: weights, scales, zeros, x, y), plus the sum over one
decoder layer. Target: W4A16 at batch 1 at least 2.5x faster than bf16 over a whole layer.

Each figure is one CUDA graph of CALLS calls replayed REPLAYS times (no launch gaps, as the engine
runs decode), over enough copies of the weights that the L2 cache never holds the next one.
Every kernel is first checked against the torch reference.

Usage: python benchmarks/gpu_w4a16.py [--sweep [--sweep-batches M ...]]
(--sweep: also time other Triton tile configs and split targets, and CUDA split
counts, to tune CONFIGS / GEMV_CONFIG / PROGRAMS_PER_SM in app/engine/kernels/triton/w4a16.py and
make_plan in csrc/w4a16/w4a16_gemv.cu). On Hopper both kernels use programmatic dependent launch;
LMSTATION_PDL=0 turns it off.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton

from app.engine.kernels import w4a16_cuda
from app.engine.kernels.triton import w4a16 as triton_w4a16
from app.engine.kernels.w4a16_reference import pack, w4a16_matmul_reference

LAYER = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}  # (K, N)
GROUP = 128
BATCHES = (1, 4, 16, 64, 128)
CALLS = 40
REPLAYS = 10
ROTATE_BYTES = 512 << 20  # weight copies per shape: at least this many bytes (10x the L2)
SWEEP_TILES = [  # (block_m, block_n, block_k, num_warps, num_stages)
    (16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (16, 256, 128, 4, 3), (16, 256, 64, 4, 4), (16, 128, 128, 8, 4),
    (16, 256, 128, 8, 3), (64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (64, 256, 64, 8, 3), (64, 64, 128, 4, 4),
    (64, 256, 128, 8, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3),
]
SWEEP_GEMV = [  # (block_n, block_k, num_warps, num_stages) for batch 1
    (256, 64, 4, 3), (256, 32, 4, 3), (128, 64, 4, 3), (512, 32, 4, 3), (256, 128, 8, 3), (256, 64, 8, 4),
    (512, 64, 8, 3),
]
SWEEP_SPLITS = [0, 2, 4, 8, 16, 24, 32, 48]
SWEEP_PROGRAMS_PER_SM = [1, 2, 4]
SWEEP_BLOCK_ROWS = [0, 16, 32, 64]  # the CUDA GEMM's rows of x a block (0 = automatic)  # Triton: split K until this many programs per SM


def time_us(calls: list[Callable[[], object]]) -> float:
    """Microseconds per call, from a CUDA graph of CALLS calls cycling through `calls`."""
    for fn in calls:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (REPLAYS * CALLS)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


class Shape:
    """Copies of one linear's weights in bf16 ([N, K], as F.linear takes them) and AWQ form."""

    def __init__(self, k: int, n: int):
        self.k, self.n = k, n
        self.int4_bytes = k * n // 2 + (k // GROUP) * n * 2 + (k // GROUP) * n // 2
        self.bf16_bytes = k * n * 2
        self.awq = [self._awq(seed) for seed in range(max(1, math.ceil(ROTATE_BYTES / self.int4_bytes)))]
        self.dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
                      for _ in range(max(1, math.ceil(ROTATE_BYTES / self.bf16_bytes)))]

    def _awq(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randint(0, 16, (self.k, self.n), generator=gen, device="cuda")
        z = torch.randint(0, 16, (self.k // GROUP, self.n), generator=gen, device="cuda")
        s = torch.rand(self.k // GROUP, self.n, generator=gen, device="cuda") * 0.02 + 0.01
        return pack(q, z, s)

    def check(self, m: int) -> str:
        x = torch.randn(m, self.k, device="cuda", dtype=torch.bfloat16)
        ref = w4a16_matmul_reference(x, *self.awq[0], GROUP)
        errs = [f"triton {rel_error(triton_w4a16.w4a16_matmul(x, *self.awq[0], GROUP), ref):.1e}"]
        kernel = w4a16_cuda.w4a16_gemv if m <= w4a16_cuda.MAX_M else w4a16_cuda.w4a16_gemm
        errs.append(f"cuda {rel_error(kernel(x, *self.awq[0], GROUP), ref):.1e}")
        return ", ".join(errs)

    def bf16_us(self, x: torch.Tensor) -> float:
        return time_us([lambda w=w: F.linear(x, w) for w in self.dense])

    def triton_us(self, x: torch.Tensor) -> float:
        return time_us([lambda a=a: triton_w4a16.w4a16_matmul(x, *a, GROUP) for a in self.awq])

    def cuda_us(self, x: torch.Tensor, splits: int = 0, block_rows: int = 0) -> float:
        """The GEMV up to MAX_M rows, the tensor-core GEMM (taking block_rows rows a block) past it."""
        outs = [torch.empty(x.shape[0], self.n, device="cuda", dtype=x.dtype) for _ in self.awq]
        if x.shape[0] <= w4a16_cuda.MAX_M:
            return time_us([lambda a=a, y=y: w4a16_cuda.w4a16_gemv(x, *a, GROUP, out=y, splits=splits)
                            for a, y in zip(self.awq, outs)])
        return time_us([lambda a=a, y=y: w4a16_cuda.w4a16_gemm(x, *a, GROUP, out=y, splits=splits,
                                                               block_rows=block_rows)
                        for a, y in zip(self.awq, outs)])

    def dequantize_us(self, x: torch.Tensor) -> float:
        """Prefill's way: the weight expanded (Triton), then cuBLAS."""
        return time_us([lambda a=a: x @ triton_w4a16.dequantize(*a, GROUP, x.dtype) for a in self.awq])


def gbps(nbytes: int, us: float) -> float:
    return nbytes / us / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="store_true", help="also time other Triton tiles and CUDA splits")
    parser.add_argument("--sweep-batches", type=int, nargs="+", default=[1, 4, 8, 64, 128], help="batches swept")
    parser.add_argument("--sweep-only", action="store_true", help="skip the tables, sweep only")
    parser.add_argument("--sweep-kernels", choices=["both", "cuda", "triton"], default="both")
    args = parser.parse_args()
    cuda_ok = w4a16_cuda.available()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"CUDA W4A16: {'yes' if cuda_ok else w4a16_cuda.unavailable_reason()}")
    shapes = {name: Shape(k, n) for name, (k, n) in LAYER.items()}
    if args.sweep_only:
        sweep(shapes, cuda_ok, args.sweep_batches, args.sweep_kernels)
        return
    for m in BATCHES:
        errors = "; ".join(f"{name} {s.check(m)}" for name, s in shapes.items())
        print(f"\nM = {m}  (errors vs reference: {errors})")
        print(f"{'linear':<8} {'K x N':>12} | {'bf16 us':>8} {'GB/s':>6} | {'triton us':>9} {'GB/s':>6} | "
              f"{'cuda us':>8} {'GB/s':>6}")
        totals = {"bf16": 0.0, "triton": 0.0, "cuda": 0.0}
        for name, s in shapes.items():
            x = torch.randn(m, s.k, device="cuda", dtype=torch.bfloat16)
            io = (m * s.k + m * s.n) * 2
            bf16, tri = s.bf16_us(x), s.triton_us(x)
            cu = s.cuda_us(x) if cuda_ok else float("nan")
            totals["bf16"] += bf16
            totals["triton"] += tri
            totals["cuda"] += cu
            print(f"{name:<8} {f'{s.k}x{s.n}':>12} | {bf16:8.1f} {gbps(s.bf16_bytes + io, bf16):6.0f} | "
                  f"{tri:9.1f} {gbps(s.int4_bytes + io, tri):6.0f} | {cu:8.1f} {gbps(s.int4_bytes + io, cu):6.0f}")
        best = min(totals["triton"], totals["cuda"]) if not math.isnan(totals["cuda"]) else totals["triton"]
        print(f"{'layer':<8} {'':>12} | {totals['bf16']:8.1f} {'':>6} | {totals['triton']:9.1f} {'':>6} | "
              f"{totals['cuda']:8.1f} {'':>6}   speed-up vs bf16: triton {totals['bf16'] / totals['triton']:.2f}x, "
              f"best W4A16 {totals['bf16'] / best:.2f}x")
    print("\nprefill's expansion (triton dequantize to fp16, then cuBLAS): us, GB/s (read 4-bit, write fp16)")
    for name, s in shapes.items():
        us = time_us([lambda a=a: triton_w4a16.dequantize(*a, GROUP, torch.float16) for a in s.awq])
        print(f"  {name:<8} {us:8.1f} {gbps(s.int4_bytes + s.k * s.n * 2, us):6.0f}")
    for m in (64, 128, 256):  # where prefill's expansion should take over from the GEMM
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        s = shapes["gate_up"]
        gemm = s.cuda_us(x) if cuda_ok else float("nan")
        print(f"  gate_up at M = {m}: expansion + cuBLAS {s.dequantize_us(x):.1f} us, CUDA GEMM {gemm:.1f} us, "
              f"bf16 {s.bf16_us(x):.1f} us")
    if args.sweep:
        sweep(shapes, cuda_ok, args.sweep_batches, args.sweep_kernels)


def sweep(shapes: dict[str, Shape], cuda_ok: bool, batches: list[int], kernels: str = "both") -> None:
    """Per shape and batch: each Triton tile config (GEMV_CONFIG at batch 1, else the bucket's
    entry of CONFIGS replaced) at each split target (programs per SM), and each CUDA split count
    (0 = automatic)."""
    saved, saved_gemv = dict(triton_w4a16.CONFIGS), triton_w4a16.GEMV_CONFIG
    saved_per_sm = triton_w4a16.PROGRAMS_PER_SM
    for m in batches:
        key = next(limit for limit in sorted(saved) if m <= limit)
        if m == 1:
            tiles = [triton_w4a16.TileConfig(1, *t) for t in SWEEP_GEMV]
        else:
            tiles = [triton_w4a16.TileConfig(*t, widen_by_load=by_load) for by_load in (False, True)
                     for t in SWEEP_TILES if min(m, 64) <= t[0] <= max(16, m)]
        print(f"\nsweep, M = {m} (now {saved_gemv if m == 1 else saved[key]})")
        for name, s in shapes.items():
            x = torch.randn(m, s.k, device="cuda", dtype=torch.bfloat16)
            row = []
            for tile in tiles if kernels != "cuda" else []:
                if m == 1:
                    triton_w4a16.GEMV_CONFIG = tile
                else:
                    triton_w4a16.CONFIGS[key] = tile
                label = f"triton {tile.block_m}x{tile.block_n}x{tile.block_k} w{tile.num_warps} s{tile.num_stages}"
                if tile.widen_by_load:
                    label += " by-load"
                for per_sm in SWEEP_PROGRAMS_PER_SM:
                    triton_w4a16.PROGRAMS_PER_SM = per_sm
                    try:
                        row.append((s.triton_us(x), f"{label} {per_sm}/SM"))
                    except triton.runtime.errors.OutOfResources:  # the tile does not fit this GPU
                        break
                triton_w4a16.PROGRAMS_PER_SM = saved_per_sm
            triton_w4a16.CONFIGS.update(saved)
            triton_w4a16.GEMV_CONFIG = saved_gemv
            if cuda_ok and kernels != "triton":
                for rows in SWEEP_BLOCK_ROWS if m > w4a16_cuda.MAX_M else [0]:
                    label = f"cuda rows={rows} " if rows else "cuda "
                    row += [(s.cuda_us(x, splits, rows), f"{label}splits={splits}") for splits in SWEEP_SPLITS]
            row.sort()
            print(f"  {name:<8} " + " | ".join(f"{label} {us:.1f}" for us, label in row[:7]))


if __name__ == "__main__":
    main()
