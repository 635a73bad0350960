"""``lmstation bench``: engine speed, optionally side by side with HF transformers."""

from __future__ import annotations

import argparse
import json
import sys

from app.engine.bench import BenchSpec, bench_engine, bench_hf
from app.library import ModelNotFound, resolve_model


def run_bench(args: argparse.Namespace) -> int:
    try:
        model_dir = resolve_model(args.model)
    except (ModelNotFound, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    spec = BenchSpec(model_dir, args.batch, args.input_len, args.output_len, args.device, args.dtype)
    results = [bench_engine(spec)]
    if args.baseline == "hf":
        results.append(bench_hf(spec, results[0].device, results[0].dtype))
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return 0
    first = results[0]
    print(f"model {model_dir.name} | {first.device} {first.dtype} | batch {spec.batch}, "
          f"{spec.input_len} in / {spec.output_len} out")
    print(f"{'':18}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for r in results:
        print(f"{r.name:18}{r.prefill_tokens_per_s:15.1f}{r.decode_tokens_per_s:15.1f}")
    if len(results) == 2:
        ours, base = results
        print(f"{'ratio':18}{ours.prefill_tokens_per_s / base.prefill_tokens_per_s:14.2f}x"
              f"{ours.decode_tokens_per_s / base.decode_tokens_per_s:14.2f}x")
    return 0
