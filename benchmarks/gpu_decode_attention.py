"""Paged decode attention alone, per KV-cache dtype, in one run: the time of one layer's call
(the query and output turns of a quantized cache included), replayed from a CUDA graph, and the
cache bandwidth it reaches; with --sweep, the quantized kernel's tile, warps and stages.

Usage: python benchmarks/gpu_decode_attention.py [--batch 64] [--context 4096] [--heads 32]
       [--kv-heads 8] [--head-dim 128] [--sweep]
"""

from __future__ import annotations

import argparse

import torch

from app.engine import kv_quant
from app.engine.kernels.triton import decode_attention


def timed(fn, replays: int = 50) -> float:
    """Microseconds per call, from a CUDA graph of the call replayed."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / replays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    blocks = args.batch * args.context // args.block_size
    tables = torch.randperm(blocks, device=dev).view(args.batch, -1).int()
    lens = torch.full((args.batch,), args.context, dtype=torch.int32, device=dev)
    q = torch.randn(args.batch, args.heads, args.head_dim, dtype=torch.bfloat16, device=dev)
    shape = (blocks, args.block_size, args.kv_heads, args.head_dim)
    k = torch.randn(shape, dtype=torch.bfloat16, device=dev)
    v = torch.randn(shape, dtype=torch.bfloat16, device=dev)
    scale = args.head_dim**-0.5
    results: dict[str, float] = {}
    exact = None
    cases = [("bf16", 0, None), ("int8", 8, None), ("int4", 4, None)]
    if args.sweep:  # the other packings of the rows (kv_quant.Packing's unit widths)
        cases += [("int8", 8, 16), ("int4", 4, 32), ("int4", 4, 8)]
    chosen = kv_quant.Packing.of
    for name, bits, unit in cases:
        if unit:
            name = f"{name}, {unit}-bit units"
            kv_quant.Packing.of = classmethod(lambda cls, d, b, u=unit: cls(u, d * b // u, u // b))
        kc, vc = (k, v) if not bits else (kv_quant.blocks_of_rows(kv_quant.quantize_rows(k, bits)),
                                          kv_quant.blocks_of_rows(kv_quant.quantize_rows(v, bits)))
        out = torch.empty_like(q)

        def call(kc=kc, vc=vc, out=out):
            decode_attention.paged_decode_attention(q, kc, vc, tables, lens, scale, max_context_len=args.context,
                                                    out=out)

        us = timed(call)
        if exact is None:
            exact = out.float().clone()
        drift = ((out.float() - exact).norm() / exact.norm()).item()
        cache_bytes = kc.numel() * kc.element_size() * 2
        results[name] = us
        print(f"{name}: {us:8.1f} us a call, {cache_bytes / us / 1e3:6.0f} GB/s of cache, "
              f"{results['bf16'] / us:.2f}x bf16, output vs bf16 cache {drift:.3e}", flush=True)
        if bits and args.sweep and not unit:
            original = decode_attention._launch_config
            for tile, warps, stages in ((32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 4, 3),
                                        (64, 2, 3), (32, 2, 3)):
                decode_attention._launch_config = lambda *_, t=(tile, warps, stages): t
                try:
                    print(f"  {name} tile {tile:3d}, {warps} warps, {stages} stages: {timed(call):8.1f} us",
                          flush=True)
                except Exception as exc:  # noqa: BLE001 (a config that does not fit is reported, not fatal)
                    print(f"  {name} tile {tile}, {warps} warps, {stages} stages: {type(exc).__name__}", flush=True)
                finally:
                    decode_attention._launch_config = original
        kv_quant.Packing.of = chosen
        del kc, vc

if __name__ == "__main__":
    main()
