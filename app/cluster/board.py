"""A small named Ray actor where every replica posts its numbers each second.

Ray Serve's own status counts a deployment's replicas but does not show each one's queue or
speed; ``lmstation cluster status`` reads them here. A replica that stops posting (its process
died) drops off after ``FRESH_S``, so the board shows the replicas that are alive now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

BOARD_NAME = "lmstation-board"
NAMESPACE = "lmstation"
POST_EVERY_S = 1.0
FRESH_S = 5.0  # a busy replica's posts can come late; a dead one's stop


@dataclass(frozen=True)
class ReplicaReport:
    model: str
    replica: str  # Serve's replica id
    node_id: str
    node_ip: str
    pid: int
    running: int  # sequences the engine is generating now
    waiting: int  # accepted, not yet scheduled
    served: int  # requests finished since the replica started
    tokens_per_s: float  # generated over the last POST_EVERY_S


@ray.remote(num_cpus=0)
class Board:
    def __init__(self) -> None:
        self.summary: dict = {}  # what was deployed: address, models
        self.reports: dict[str, tuple[float, ReplicaReport]] = {}

    def publish(self, summary: dict) -> None:
        self.summary = summary

    def post(self, report: ReplicaReport) -> None:
        self.reports[report.replica] = (time.monotonic(), report)

    def read(self) -> tuple[dict, list[ReplicaReport]]:
        now = time.monotonic()
        self.reports = {k: (at, r) for k, (at, r) in self.reports.items() if now - at <= FRESH_S}
        return self.summary, sorted((r for _, r in self.reports.values()), key=lambda r: (r.model, r.replica))


def open_board(summary: dict) -> ray.actor.ActorHandle:
    """The board (started if none runs; detached: it outlives the command that deployed, and
    ``lmstation cluster shutdown`` ends it), showing ``summary``."""
    board = Board.options(name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    ray.get(board.publish.remote(summary))
    return board


def find_board() -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
