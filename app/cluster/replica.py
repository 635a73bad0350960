"""One Ray Serve replica of a model: one LM Station Engine, its weights and KV cache, in one
process on one machine (with all the GPUs of its tensor-parallel split).

Requests arrive from the ingress as ``ReplicaRequest`` and stream their engine deltas back (plain
dataclasses, pickled by Ray). A replica whose engine lost its model (a tensor-parallel rank died)
fails Serve's health check, and Serve replaces it, as it does a replica whose process died.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator

import ray
from ray import serve

from app.cluster.board import POST_EVERY_S, ReplicaReport, find_board
from app.cluster.config import ModelDeployment
from app.cluster.request import ReplicaRequest
from app.engine import Delta, Engine
from app.library import resolve_model
from app.server.backend import EngineBackend, ServedModel


class EngineReplica:
    def __init__(self, deployment: ModelDeployment):
        self._stop = threading.Event()
        # Ray sets OMP_NUM_THREADS to the replica's CPUs, so torch (and csrc/cpu) use that many threads
        self.engine = Engine()
        stats = self.engine.load(deployment.engine_config(resolve_model(deployment.model))).result()
        self.backend = EngineBackend(self.engine)
        self.model = ServedModel(deployment.name, stats["max_model_len"])
        self.served = 0  # requests finished, however they ended
        self.replica_id = serve.get_replica_context().replica_tag
        threading.Thread(target=self._post_reports, name="lmstation-board", daemon=True).start()

    def describe(self) -> ServedModel:
        return self.model

    async def generate(self, request: ReplicaRequest) -> AsyncIterator[Delta]:
        """The request's deltas as the engine makes them; cancelled by the ingress when its client leaves."""
        reply = self.backend.submit(self.model, request.gen, prompt=request.prompt, messages=request.messages)
        try:
            while True:
                delta = await reply.next()
                yield delta
                if delta.finished:
                    return
        finally:
            reply.cancel()
            self.served += 1

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes it replace the replica."""
        stats = self.engine.stats()
        if stats.get("state") == "empty":
            raise RuntimeError(f"the engine lost its model: {stats.get('error', 'unloaded')}")

    def __del__(self) -> None:
        """Serve stopping the replica (scale-down, shutdown): the engine frees its memory first."""
        self._stop.set()
        self.engine.shutdown()

    def _post_reports(self) -> None:
        board = find_board()
        node_id, node_ip = ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
        last_tokens, last_at = 0, time.monotonic()
        while board is not None and not self._stop.wait(POST_EVERY_S):
            stats, now = self.engine.stats(), time.monotonic()
            tokens = stats.get("generated_tokens", last_tokens)
            board.post.remote(ReplicaReport(
                model=self.model.name, replica=self.replica_id, node_id=node_id, node_ip=node_ip, pid=os.getpid(),
                running=stats.get("running", 0), waiting=stats.get("waiting", 0), served=self.served,
                tokens_per_s=(tokens - last_tokens) / (now - last_at)))
            last_tokens, last_at = tokens, now
