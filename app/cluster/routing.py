"""Which replica serves a request: the one that served its conversation before, when it has room.

A conversation's later turns start with its earlier ones, so the replica that served it holds
those tokens in its prefix cache and skips their prefill. Ray Serve lets a deployment choose
replicas with its own ``RequestRouter`` (a public API, alpha in Ray 2.60); this one runs inside
the ingress's deployment handles. "Room" is Serve's own measure: a replica whose ongoing requests
are below ``max_ongoing_requests``. A new conversation, or one whose replica is full, goes to the
least loaded replica, counting the requests Serve knows each holds and those this router has just
sent its way (Serve counts a request once it is sent: a burst of requests chosen in the same
instant would otherwise all go to one replica).

Serve copies this module by value into each process that holds a handle (so a router need not be
installed there); the request type it recognises therefore lives in ``request.py``, imported by
reference, the same class the ingress builds requests from.
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from app.cluster.request import ReplicaRequest

ON_THE_WAY_S = 30.0


class ConversationAffinityRouter(RequestRouter):
    def initialize_state(self, max_conversations: int = 100_000) -> None:
        """``max_conversations``: how many conversations' replicas are remembered (least recent forgotten)."""
        self._homes: OrderedDict[str, ReplicaID] = OrderedDict()
        self._max_conversations = max_conversations
        # request -> (the replica chosen for it, the request, when): chosen here, not yet accepted there
        self._on_the_way: dict[str, tuple[ReplicaID, PendingRequest, float]] = {}

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        # Only after every rank was full does Serve wait before asking again (backing off)
        pending_request.routing_context.should_backoff = True
        home, load = self._homes.get(_conversation(pending_request)), self._load()
        ranked = sorted(candidate_replicas, key=lambda r: (r.replica_id != home, load[r.replica_id], random.random()))
        self._on_the_way[pending_request.metadata.internal_request_id] = (
            ranked[0].replica_id, pending_request, time.monotonic())
        return [ranked[:1], ranked[1:]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: object) -> None:
        self._on_the_way.pop(pending_request.metadata.internal_request_id, None)
        conversation = _conversation(pending_request)
        if conversation:
            self._homes[conversation] = replica_id
            self._homes.move_to_end(conversation)
            while len(self._homes) > self._max_conversations:
                self._homes.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for conversation in [c for c, home in self._homes.items() if home == replica_id]:
            del self._homes[conversation]

    def _load(self) -> Counter[ReplicaID]:
        """Requests per replica: those Serve knows it has (its queue-length cache) and those on their
        way to it (a request waiting longer than ON_THE_WAY_S for room no longer counts)."""
        now = time.monotonic()
        self._on_the_way = {request: entry for request, entry in self._on_the_way.items()
                            if not entry[1].future.cancelled() and now - entry[2] < ON_THE_WAY_S}
        load = Counter(replica for replica, _, _ in self._on_the_way.values())
        for replica in self.curr_replicas:
            load[replica] += self.replica_queue_len_cache.get(replica) or 0
        return load


def _conversation(pending_request: PendingRequest | None) -> str:
    args = pending_request.args if pending_request is not None else []
    return args[0].conversation if args and isinstance(args[0], ReplicaRequest) else ""
