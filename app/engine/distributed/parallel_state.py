"""Which part of the model this process holds, and the collectives between the ranks.

One process per rank; rank 0 is the engine's own. The ranks form torch.distributed's default
group: NCCL between GPUs, gloo on the CPU (and where NCCL is missing, e.g. on Windows).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from app.engine.distributed.peer_all_reduce import PeerAllReduce

# Longest a collective waits for the other ranks: long enough for a rank compiling kernels on
# its first steps. A rank that dies is noticed at once (group.py); this bounds one that hangs.
TIMEOUT = timedelta(minutes=10)
_teardown = threading.Lock()  # the engine thread and group.py's watchdog may both end the group
_store: dist.Store | None = None  # the group's rendezvous, for exchanging peer buffers
_peer: PeerAllReduce | None = None  # small sums through peer memory, once the ranks agreed
# "nccl" turns the peer all-reduce off, for comparing the two (benchmarks/gpu_tensor_parallel.py).
# An environment variable, so the spawned ranks see the same.
ALL_REDUCE_ENV = "LMSTATION_ALL_REDUCE"


@dataclass(frozen=True)
class Shard:
    """This process's part of the model: rank ``rank`` of ``world`` (world 1: all of it)."""

    rank: int = 0
    world: int = 1

    @property
    def reduce(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What a row-parallel layer applies to its partial output: the sum over the ranks."""
        return all_reduce if self.world > 1 else None


def rank_device(device: torch.device, rank: int, gpus: tuple[int, ...] = ()) -> torch.device:
    """Rank r's device: gpus[r] where the GPUs are named, else the r-th GPU from the engine's;
    or the CPU."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", gpus[rank] if gpus else (device.index or 0) + rank)


def configure_environment(rank: int) -> None:
    """Settings NCCL reads when it starts. NVLink multicast (NVLS, and symmetric memory's
    multicast) stays off: the GPU machines this runs on do not allow it. Rank 0 lives in the
    app's process, which neither a timed-out collective nor a stalled NCCL watchdog may tear
    down (torch's default reactions): group.py notices dead or hung ranks and aborts the group."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
    if rank == 0:
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"
        os.environ["TORCH_NCCL_ENABLE_MONITORING"] = "0"


def init_group(shard: Shard, device: torch.device, store: dist.Store) -> None:
    """Joins the group (blocks until every rank has); ``store`` is rank 0's TCPStore."""
    global _store
    _store = store
    configure_environment(shard.rank)
    nccl = device.type == "cuda" and dist.is_nccl_available()
    if nccl:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if nccl else "gloo", store=store, rank=shard.rank, world_size=shard.world, timeout=TIMEOUT,
        device_id=device if nccl else None,  # NCCL: connect now, not inside a CUDA graph capture
    )


def enable_peer_all_reduce(device: torch.device) -> None:
    """Collective: every rank calls it once its part of the model is loaded. Maps the peer
    buffers and checks a sum through them; the ranks then agree, so all use them or none does
    (where GPUs cannot reach each other's memory, e.g. without peer access, NCCL serves)."""
    global _peer
    if device.type != "cuda" or dist.get_backend() != "nccl" or os.environ.get(ALL_REDUCE_ENV) == "nccl":
        return
    peer = None
    try:
        from app.engine.distributed.peer_all_reduce import PeerAllReduce

        peer = PeerAllReduce(_store, dist.get_rank(), dist.get_world_size(), device)
    except Exception:  # no peer access between these GPUs (or no Triton): NCCL serves
        pass
    # Agreed before the probe: a rank waits in it for every other one.
    if _everyone(peer is not None, device):
        world = dist.get_world_size()
        probe = torch.full((3000,), dist.get_rank() + 1.0, dtype=torch.bfloat16, device=device)
        summed = bool((peer(probe) == world * (world + 1) / 2).all())
        _peer = peer if _everyone(summed, device) else None


def _everyone(ok: bool, device: torch.device) -> bool:
    """Whether ok holds on every rank (a collective)."""
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_reduce_kind() -> str:
    """Which all-reduce the ranks use, for the stats."""
    if _peer is not None:
        from app.engine.distributed.peer_all_reduce import MAX_BYTES

        return f"one-shot peer all-reduce up to {MAX_BYTES // 1024} KiB, then nccl"
    return dist.get_backend() if dist.is_initialized() else "none"


def destroy_group() -> None:
    global _peer, _store
    with _teardown:
        _peer = _store = None
        if dist.is_initialized():
            dist.destroy_process_group()


def abort_group() -> None:
    """Ends collectives that wait for a dead rank, from any thread (NCCL; gloo's end on their
    own once the dead rank's sockets close)."""
    with _teardown:
        if _peer is not None:
            _peer.abort()
        if dist.is_initialized() and dist.get_backend() == "nccl":
            dist.distributed_c10d._abort_process_group()


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sums x over the ranks: a new tensor through the peer buffer when x fits it, else x
    itself, summed in place by NCCL. Both capture into CUDA graphs."""
    peer = _peer
    if peer is not None and peer.fits(x):
        return peer(x)
    dist.all_reduce(x)
    return x


def gather_columns(x: torch.Tensor) -> torch.Tensor:
    """Every rank's [rows, cols] slice side by side, on every rank: [rows, world * cols]."""
    rows, world = x.shape[0], dist.get_world_size()
    x = x.contiguous()
    peer = _peer
    if peer is not None and peer.fits(x):
        parts = peer.gather(x)
    else:
        parts = torch.empty((world * rows, x.shape[1]), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(parts, x)
    return parts.view(world, rows, -1).transpose(0, 1).reshape(rows, -1)


def broadcast(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's x, in place on every rank."""
    dist.broadcast(x, src=0)
    return x
