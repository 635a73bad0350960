"""``lmstation cluster serve|status|shutdown``: LM Station engines as Ray Serve replicas across
machines (docs/scale-out.md). Ray comes with the optional extra, so it is imported only here,
when a cluster command runs."""

from __future__ import annotations

import argparse
import json
import sys


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="serve models from a Ray cluster (pip install 'lmstation[cluster]')")
    commands = cluster.add_subparsers(dest="cluster_command", required=True)
    serve = commands.add_parser("serve", help="deploy the models of a cluster file behind one OpenAI-compatible "
                                "endpoint, and return once every replica runs")
    serve.add_argument("config", help="the cluster file (YAML; see docs/scale-out.md)")
    status = commands.add_parser("status", help="deployments, replicas, queues and tokens/s")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    commands.add_parser("shutdown", help="stop the deployment (Ray itself keeps running: `ray stop` ends it)")
    for command in commands.choices.values():
        command.add_argument("--address", help="the Ray cluster's head, HOST:PORT (default: the cluster "
                             "`ray start` left on this machine, or $RAY_ADDRESS)")


def run_cluster(args: argparse.Namespace) -> int:
    try:
        from app.cluster import deploy
        from app.cluster.config import ClusterConfigError, load_config
        from app.cluster.status import cluster_status, format_status
    except ModuleNotFoundError as exc:  # the extra is not installed
        print(f"error: the cluster commands need Ray Serve (no module {exc.name!r}): "
              "pip install 'lmstation[cluster]'", file=sys.stderr)
        return 1
    try:
        if args.cluster_command == "serve":
            config = load_config(args.config)  # a mistake in it is refused before anything connects
            deploy.connect(args.address)
            names = ", ".join(m.name for m in config.models)
            print(f"Deploying {names}...", file=sys.stderr, flush=True)
            deploy.deploy(config)
            print(f"Serving {names} at {config.base_url}; `lmstation cluster status` shows the replicas, "
                  "`lmstation cluster shutdown` stops them.", file=sys.stderr)
        elif args.cluster_command == "status":
            deploy.connect(args.address)
            status = cluster_status()
            print(json.dumps(status.as_dict(), indent=1) if args.json else format_status(status))
        else:
            deploy.connect(args.address)
            stopped = deploy.shutdown()
            print(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.", file=sys.stderr)
    except (ClusterConfigError, deploy.ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
