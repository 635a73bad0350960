"""Where the offline workload's time goes: steps by kind (graph-replayed decodes, eager mixed
prefill+decode, prefill only), their count, tokens and wall time, and the host time outside the
model runner. Usage: python benchmarks/gpu_workload_profile.py [SHAPE] [NUM_REQUESTS] [MAX_NUM_SEQS] [PREFILL_INTERVAL]"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path


from app.engine import bench
from app.engine.bench_shapes import write_shape_folder


def main(shape: str, num_requests: int, max_num_seqs: int, prefill_interval: int | None) -> None:
    folder = write_shape_folder(shape, Path(tempfile.gettempdir()) / f"lmstation-shape-{shape}")
    spec = bench.BenchSpec(folder, device="cuda", dtype="bfloat16", load_format="random")
    stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0.0])  # steps, tokens, seconds
    host = [0.0]
    original_core = bench._core

    def instrumented_core(*args, **kwargs):
        if prefill_interval is not None:
            kwargs["prefill_interval"] = prefill_interval
        core = original_core(*args, **kwargs)
        runner_step, core_step = core.runner.step, core.step

        def timed_runner_step(batch):
            start = time.perf_counter()
            out = runner_step(batch)  # sampling reads the tokens back: the step has finished here
            kind = ("decode" if batch.num_decodes == len(batch.items)
                    else "mixed" if batch.num_decodes else "prefill")
            bucket = f"{kind} bs<={1 << (len(batch.items) - 1).bit_length()}"
            entry = stats[bucket]
            entry[0] += 1
            entry[1] += batch.num_tokens
            entry[2] += time.perf_counter() - start
            timed_runner_step.last = time.perf_counter() - start
            return out

        def timed_core_step():
            timed_runner_step.last = 0.0
            start = time.perf_counter()
            n = core_step()
            host[0] += time.perf_counter() - start - timed_runner_step.last
            return n

        core.runner.step, core.step = timed_runner_step, timed_core_step
        return core

    bench._core = instrumented_core
    result = bench.bench_workload(spec, num_requests, max_num_seqs)
    print(result.as_dict())
    total = sum(v[2] for v in stats.values())
    print(f"{'step kind':24}{'steps':>8}{'tokens':>10}{'seconds':>10}{'ms/step':>10}")
    for key in sorted(stats, key=lambda k: -stats[k][2]):
        n, tokens, secs = stats[key]
        print(f"{key:24}{n:8d}{tokens:10d}{secs:10.2f}{secs / n * 1e3:10.2f}")
    print(f"runner total {total:.2f} s; host outside the runner {host[0]:.2f} s; "
          f"workload {result.duration_s:.2f} s")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "llama-3-8b", int(args[1]) if len(args) > 1 else 1000,
         int(args[2]) if len(args) > 2 else 256, int(args[3]) if len(args) > 3 else None)
