"""Batch-1..16 CPU linear throughput over SmolLM2-135M's linear set (not a test).

Prints, per dtype and batch, ms for one full set of the model's linears (fused
qkv, o, fused gate_up, down x 30 layers + the tied lm_head) and the weight bytes
streamed per ms (GB/s) for: F.linear, oneDNN packed, and app.engine.kernels.cpu_linear.
Methods run in interleaved rounds and the best round counts, so a burst of load
from other processes on the machine hurts all of them alike rather than one.

    python benchmarks/cpu_linear_bench.py [--batches 1 4 16] [--dtypes bf16 fp32]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.engine.kernels import cpu_linear  # noqa: E402

HIDDEN, MLP, VOCAB, LAYERS = 576, 1536, 49152, 30
SHAPES = [(960, HIDDEN), (HIDDEN, HIDDEN), (2 * MLP, HIDDEN), (HIDDEN, MLP)] * LAYERS + [(VOCAB, HIDDEN)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def onednn_linear(weights: list[torch.Tensor], batch_hint: int) -> Callable[[dict[int, torch.Tensor]], None]:
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, batch_hint) for w in weights]

    def run(xs: dict[int, torch.Tensor]) -> None:
        for w, p in zip(weights, packed):
            torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10, help="full sets per timed round")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernel: {cpu_linear.backend()}"
          + (f" ({cpu_linear.unavailable_reason()})" if not cpu_linear.available() else ""))
    torch.manual_seed(0)
    for name in args.dtypes:
        dtype = DTYPES[name]
        weights = [torch.randn(o, i, dtype=dtype) * 0.02 for o, i in SHAPES]
        gbytes = sum(w.numel() * w.element_size() for w in weights) / 1e9
        ours = [cpu_linear.pack_weight(w) for w in weights]
        print(f"\n{name}: {len(weights)} linears, {gbytes * 1e3:.0f} MB per set; ms per set (GB/s)")
        header = f"{'batch':>5} | {'F.linear':>14} | {'oneDNN bs1':>14} | {'oneDNN bs16':>14} | {'cpu_linear':>14}"
        print(header + "\n" + "-" * len(header))
        for batch in args.batches:
            xs = {i: torch.randn(batch, i, dtype=dtype) for i in (HIDDEN, MLP)}
            methods: dict[str, Callable[[dict[int, torch.Tensor]], None]] = {
                "F.linear": lambda xs: [F.linear(xs[w.shape[1]], w) for w in weights],
                "oneDNN bs1": onednn_linear(weights, 1),
                "oneDNN bs16": onednn_linear(weights, 16),
                "cpu_linear": lambda xs: [cpu_linear.linear(xs[p.in_features], p) for p in ours],
            }
            best = dict.fromkeys(methods, float("inf"))
            with torch.inference_mode():
                for run in methods.values():
                    run(xs)
                for _ in range(args.rounds):
                    for key, run in methods.items():
                        start = time.perf_counter()
                        for _ in range(args.iters):
                            run(xs)
                        best[key] = min(best[key], (time.perf_counter() - start) / args.iters)
            cells = [f"{t * 1e3:6.2f} ({gbytes / t:4.1f})" for t in best.values()]
            print(f"{batch:>5} | " + " | ".join(f"{c:>14}" for c in cells), flush=True)
            del methods


if __name__ == "__main__":
    main()
