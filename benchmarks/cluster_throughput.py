"""The seeded workload of benchmarks/server_throughput.py (random-token prompts of ShareGPT-like
lengths, greedy, end-of-sequence ignored, all requests in flight at once through the official
openai client) served by an ``lmstation cluster`` deployment of one replica, then of two, in one
run: output tokens per second of each, and their ratio. Prefix caching is off, so the second run
finds nothing of the first in the cache.

Without --address it starts a one-machine Ray cluster on 127.0.0.1 with the CPUs two replicas
need (``--cpus-per-replica`` each) and stops it afterwards; with --address it uses that cluster
(GPUs where it has them: one per replica, or --tensor-parallel).

Usage: python benchmarks/cluster_throughput.py [MODEL] [--requests 32] [--max-input 256]
       [--max-output 32] [--cpus-per-replica 1] [--tensor-parallel 1] [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import socket


from server_throughput import through_openai, workload  # the same workload and client

from app.library import resolve_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-input", type=int, default=256)
    parser.add_argument("--max-output", type=int, default=32)
    parser.add_argument("--cpus-per-replica", type=float, default=1)
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument("--address", help="an existing Ray cluster (default: a local one, stopped afterwards)")
    args = parser.parse_args()
    model_dir = resolve_model(args.model)
    from transformers import AutoTokenizer

    requests = workload(AutoTokenizer.from_pretrained(model_dir), args)
    if args.address is None:
        # Keeps the local cluster on 127.0.0.1 (read when ray is imported; see tests/cluster/conftest.py)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from app.cluster import deploy
    from app.cluster.board import NAMESPACE
    from app.cluster.config import parse_config

    if args.address is None:
        ray.init(num_cpus=int(2 * args.cpus_per_replica), include_dashboard=False, namespace=NAMESPACE,
                 log_to_driver=False)
    else:
        deploy.connect(args.address)
    device = "GPU" if ray.cluster_resources().get("GPU", 0) > 0 else "CPU"
    port, results = free_port(), {}
    try:
        for replicas in (1, 2):
            config = parse_config({"port": port, "models": [{
                "model": str(model_dir), "replicas": replicas, "cpus_per_replica": args.cpus_per_replica,
                "tensor_parallel": args.tensor_parallel, "enable_prefix_caching": False,
                "max_num_seqs": max(args.requests, 1), "max_ongoing_requests": max(args.requests, 1)}]})
            deploy.deploy(config)  # the second pass adds a replica beside the first
            through_openai(config.base_url, model_dir.name, requests[:4])  # warm-up
            results[replicas] = through_openai(config.base_url, model_dir.name, requests)
    finally:
        deploy.shutdown()
        ray.shutdown()
    print(f"{model_dir.name} on {device}, {args.requests} requests, {results[1][1]} output tokens, "
          f"{args.cpus_per_replica:g} CPUs per replica")
    for replicas, (seconds, tokens) in results.items():
        label = f"{replicas} replica{'s' if replicas > 1 else ''}"
        print(f"{label:<10}: {tokens / seconds:8.1f} output tok/s ({seconds:.2f} s)")
    one, two = (results[n][1] / results[n][0] for n in (1, 2))
    print(f"2 replicas / 1 replica: {two / one:.2f}x")


if __name__ == "__main__":
    main()
