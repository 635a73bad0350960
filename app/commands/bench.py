"""``lmstation bench``: engine speed, optionally side by side with HF transformers."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from app.engine import bench
from app.engine.bench_shapes import write_shape_folder
from app.library import ModelNotFound, resolve_model


def _spec(args: argparse.Namespace) -> bench.BenchSpec:
    if args.shape:
        folder = write_shape_folder(args.shape, Path(tempfile.gettempdir()) / f"lmstation-shape-{args.shape}")
        return bench.BenchSpec(folder, args.batch, args.input_len, args.output_len, args.device, args.dtype,
                               load_format="random", kv_cache_dtype=args.kv_cache_dtype)
    return bench.BenchSpec(resolve_model(args.model), args.batch, args.input_len, args.output_len, args.device,
                           args.dtype, kv_cache_dtype=args.kv_cache_dtype)


def run_bench(args: argparse.Namespace) -> int:
    try:
        spec = _spec(args)
    except (ModelNotFound, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results = [bench.bench_engine(spec)]
    if args.baseline == "hf":
        results.append(bench.bench_hf(spec, results[0].device, results[0].dtype))
    report: dict = {"batch": [r.as_dict() for r in results]}
    device = torch.device(results[0].device)
    if args.limits:
        bandwidth = bench.copy_bandwidth(device)
        # Each decode step reads every weight once: the batch-1 ceiling is bandwidth / weight bytes.
        limit = bandwidth / results[0].weight_bytes
        report["limits"] = {
            "copy_bytes_per_s": bandwidth, "weight_bytes": results[0].weight_bytes,
            "decode_limit_tokens_per_s": limit * spec.batch,
            "decode_of_limit": results[0].decode_tokens_per_s / (limit * spec.batch),
            "gemm_flops_per_s": bench.gemm_rate(device, getattr(torch, results[0].dtype)),
        }
    if args.ttft:
        report["ttft_ms"] = {"prompt_len": args.ttft, "lmstation": bench.bench_ttft(spec, args.ttft)}
    if args.workload:
        report["workload"] = bench.bench_workload(spec, args.workload).as_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(spec, results, report)
    return 0


def _print(spec: bench.BenchSpec, results: list[bench.BenchResult], report: dict) -> None:
    first = results[0]
    print(f"model {spec.model_dir.name} | {first.device} {first.dtype} | batch {spec.batch}, "
          f"{spec.input_len} in / {spec.output_len} out")
    print(f"{'':18}{'prefill tok/s':>15}{'decode tok/s':>15}{'output tok/s':>15}")
    for r in results:
        print(f"{r.name:18}{r.prefill_tokens_per_s:15.1f}{r.decode_tokens_per_s:15.1f}{r.output_tokens_per_s:15.1f}")
    if len(results) == 2:
        ours, base = results
        print(f"{'ratio':18}{ours.prefill_tokens_per_s / base.prefill_tokens_per_s:14.2f}x"
              f"{ours.decode_tokens_per_s / base.decode_tokens_per_s:14.2f}x"
              f"{ours.output_tokens_per_s / base.output_tokens_per_s:14.2f}x")
    for key in ("limits", "ttft_ms", "workload"):
        if key in report:
            print(f"{key}: {json.dumps(report[key])}")
