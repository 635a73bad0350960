"""The peer all-reduce kernel's protocol (distributed/peer_all_reduce.py) on the CPU, under
TRITON_INTERPRET=1: two ranks' buffers in one process, their calls run one after the other. The
rank that runs first cannot see the other's part yet, so its wait gives up (a small spin limit);
the one that runs second sums both, exactly, in rank order. Two calls, so both slots and both
orders are used. The GPU test (tests/gpu/test_peer_all_reduce_gpu.py) runs it for real."""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if sys.platform != "linux":  # the test extra installs Triton on Linux only; CI is Linux
    pytest.skip("Triton is installed on Linux only", allow_module_level=True)

from app.engine.distributed import peer_all_reduce  # noqa: E402

WORLD, FLAGS_BYTES = 2, 1024


@pytest.mark.skipif(torch.cuda.is_available(), reason="the one-process simulation needs the interpreter")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_the_second_rank_sums_both_parts(dtype):
    buffers = [torch.zeros(FLAGS_BYTES + 2 * WORLD * peer_all_reduce.MAX_BYTES, dtype=torch.uint8) for _ in range(WORLD)]
    addresses = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    counters = [torch.zeros(peer_all_reduce.MAX_PROGRAMS, dtype=torch.int32) for _ in range(WORLD)]
    abort = torch.zeros(1, dtype=torch.int32)
    n = 3000  # two programs, the second ragged
    block = peer_all_reduce.BLOCK_BYTES // dtype.itemsize
    g = torch.Generator().manual_seed(0)
    for order in ((0, 1), (1, 0)):
        parts = [torch.randn(n, generator=g).to(dtype) for _ in range(WORLD)]
        outs = [torch.empty_like(p) for p in parts]
        for rank in order:
            peer_all_reduce._one_shot_kernel[(-(-n // block),)](
                parts[rank], outs[rank], n, addresses, counters[rank], abort, rank, WORLD=WORLD,
                FLAGS_BYTES=FLAGS_BYTES, SLOT_BYTES=peer_all_reduce.MAX_BYTES, SPINS=2, BLOCK=block, PDL=False)
        second = order[1]
        assert torch.equal(outs[second], (parts[0].float() + parts[1].float()).to(dtype))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the one-process simulation needs the interpreter")
def test_the_second_rank_gathers_both_parts():
    """GATHER: the rank that runs second holds both ranks' parts, in rank order, bit for bit."""
    dtype = torch.bfloat16
    buffers = [torch.zeros(FLAGS_BYTES + 2 * WORLD * peer_all_reduce.MAX_BYTES, dtype=torch.uint8) for _ in range(WORLD)]
    addresses = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    counters = [torch.zeros(peer_all_reduce.MAX_PROGRAMS, dtype=torch.int32) for _ in range(WORLD)]
    abort = torch.zeros(1, dtype=torch.int32)
    n, block = 3000, peer_all_reduce.BLOCK_BYTES // dtype.itemsize
    g = torch.Generator().manual_seed(1)
    for order in ((0, 1), (1, 0)):
        parts = [torch.randn(n, generator=g).to(dtype) for _ in range(WORLD)]
        outs = [torch.zeros(WORLD, n, dtype=dtype) for _ in range(WORLD)]
        for rank in order:
            peer_all_reduce._one_shot_kernel[(-(-n // block),)](
                parts[rank], outs[rank], n, addresses, counters[rank], abort, rank, WORLD=WORLD,
                FLAGS_BYTES=FLAGS_BYTES, SLOT_BYTES=peer_all_reduce.MAX_BYTES, SPINS=2, BLOCK=block, PDL=False,
                GATHER=True)
        assert torch.equal(outs[order[1]], torch.stack(parts))
