"""On a box with 2 GPUs: parallel_state.all_reduce gives every rank the same sum, bit for bit,
through the peer buffers (one-shot, up to MAX_BYTES) and through NCCL above that, eagerly and
replayed from a CUDA graph with new inputs; gather_columns stacks the ranks' columns (peer buffers
or NCCL); a wait for a rank that never comes ends on abort."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.engine.distributed import parallel_state
from app.engine.distributed.parallel_state import Shard

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]

WORLD = 2
HIDDEN = 4096
PEER_ROWS = 512 * 1024 // (2 * HIDDEN)  # the most bf16 rows of HIDDEN the peer buffers take
ROWS = (1, 7, PEER_ROWS, PEER_ROWS + 1)


def _inputs(rows: int, seed: int, dtype=torch.bfloat16) -> list[torch.Tensor]:
    """Every rank's input for one call (each rank can compute the expected sum)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, HIDDEN, generator=g).to(dtype) for _ in range(WORLD)]


def _check(got: torch.Tensor, parts: list[torch.Tensor], exact: bool, what: str) -> None:
    expected = sum(p.float() for p in parts)  # rank order, in fp32, as the peer kernel sums
    if exact:
        assert torch.equal(got.cpu(), expected.to(got.dtype)), what
    error = ((got.float().cpu() - expected).norm() / expected.norm()).item()
    assert error <= 1e-2, f"{what}: relative error {error}"


def _rank(rank: int, port: int, errors) -> None:
    status = 0
    try:
        device = torch.device("cuda", rank)
        store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=False, timeout=parallel_state.TIMEOUT)
        parallel_state.init_group(Shard(rank, WORLD), device, store)
        parallel_state.enable_peer_all_reduce(device)
        assert parallel_state.all_reduce_kind().startswith("one-shot peer"), parallel_state.all_reduce_kind()
        for i, rows in enumerate(ROWS):
            parts = _inputs(rows, i)
            _check(parallel_state.all_reduce(parts[rank].to(device)), parts, rows <= PEER_ROWS, f"{rows} rows")
        parts = _inputs(5, 50, torch.float32)
        _check(parallel_state.all_reduce(parts[rank].to(device)), parts, True, "float32")
        for rows, cols in ((1, 64128), (3, 1000), (PEER_ROWS + 1, HIDDEN)):  # a split vocabulary's logits; NCCL's size
            parts = [p[:, :cols] for p in _inputs(rows, 60 + rows, torch.bfloat16)] if cols <= HIDDEN else [
                torch.randn(rows, cols, generator=torch.Generator().manual_seed(70 + r)).to(torch.bfloat16)
                for r in range(WORLD)]
            got = parallel_state.gather_columns(parts[rank].to(device))
            assert torch.equal(got.cpu(), torch.cat(parts, dim=1)), f"gather {rows}x{cols}"

        # Captured into a graph (as decode steps are) and replayed on new inputs.
        x = torch.zeros(3, HIDDEN, dtype=torch.bfloat16, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            parallel_state.all_reduce(x)  # warm-up (compiles) off the default stream, as torch advises
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = parallel_state.all_reduce(x)
        for seed in (100, 101, 102):
            parts = _inputs(3, seed)
            x.copy_(parts[rank])
            graph.replay()
            _check(y, parts, True, f"graph replay {seed}")

        # Rank 1 stops taking part: rank 0's wait ends once aborted (as group.py does when a rank dies).
        if rank == 0:
            threading.Timer(1.0, parallel_state.abort_group).start()
            started = time.monotonic()
            parallel_state.all_reduce(torch.ones(8, dtype=torch.bfloat16, device=device))
            torch.cuda.synchronize(device)
            assert time.monotonic() - started < 30
        else:
            torch.cuda.synchronize(device)
    except BaseException as exc:
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        status = 1
    finally:  # as the engine's ranks do: an NCCL group whose peer aborted is not destroyed
        errors.close()
        errors.join_thread()
        os._exit(status)


def test_peer_all_reduce_over_two_gpus() -> None:
    store = dist.TCPStore("127.0.0.1", 0, WORLD + 1, is_master=True, wait_for_workers=False)
    context = mp.get_context("spawn")
    errors = context.Queue()
    processes = [context.Process(target=_rank, args=(r, store.port, errors)) for r in range(WORLD)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(240)
        if p.is_alive():
            p.kill()
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert [p.exitcode for p in processes] == [0, 0], messages
