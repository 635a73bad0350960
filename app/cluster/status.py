"""``lmstation cluster status``: the application and its deployments as Serve reports them, and
each live replica's queue and speed as the replicas post them on the board."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import ray
from ray import serve

from app.cluster.board import ReplicaReport, find_board
from app.cluster.config import DEFAULT_APP


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    status: str  # Serve's: HEALTHY, UPDATING, UNHEALTHY, ...
    replicas: dict[str, int]  # replica state -> count (RUNNING, STARTING, ...)
    message: str


@dataclass(frozen=True)
class ClusterStatus:
    app: str
    url: str | None
    app_status: str  # Serve's: RUNNING, DEPLOYING, DEPLOY_FAILED, ...; NOT_STARTED when absent
    deployments: list[DeploymentStatus]
    replicas: list[ReplicaReport]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def cluster_status() -> ClusterStatus:
    board = find_board()
    summary, replicas = ray.get(board.read.remote()) if board is not None else ({}, [])
    app = summary.get("app", DEFAULT_APP)
    overview = serve.status().applications.get(app)
    deployments = [] if overview is None else [
        DeploymentStatus(name, d.status.value, dict(d.replica_states), d.message)
        for name, d in sorted(overview.deployments.items())]
    return ClusterStatus(app, summary.get("url"), "NOT_STARTED" if overview is None else overview.status.value,
                         deployments, replicas)


def format_status(status: ClusterStatus) -> str:
    lines = [f"application {status.app}: {status.app_status}" + (f" at {status.url}" if status.url else "")]
    if status.deployments:
        lines.append("")
        lines.append(f"{'deployment':<32} {'status':<10} replicas")
        for d in status.deployments:
            counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(d.replicas.items()))
            lines.append(f"{d.name:<32} {d.status:<10} {counts}" + (f"  ({d.message})" if d.message else ""))
    if status.replicas:
        lines.append("")
        lines.append(f"{'model':<32} {'replica':<10} {'node':<16} {'pid':>7} {'running':>7} {'waiting':>7} "
                     f"{'served':>7} {'tok/s':>8}")
        for r in status.replicas:
            lines.append(f"{r.model:<32} {r.replica:<10} {r.node_ip:<16} {r.pid:>7} {r.running:>7} {r.waiting:>7} "
                         f"{r.served:>7} {r.tokens_per_s:>8.1f}")
    return "\n".join(lines)
