"""The peer sums' kernels (distributed/peer_all_reduce.py, and the sums fused into the decode
layer in kernels/triton/fused_decode.py) on the CPU, under TRITON_INTERPRET=1: two ranks'
buffers in one process, their kernels run one after the other.

One-shot all-reduce: the rank that runs first cannot see the other's part yet, so its wait gives
up (a small spin limit); the one that runs second sums both, exactly, in rank order. Fused sums:
both ranks deliver their parts first, then each sums them as the next kernel would. The GPU tests
(tests/gpu/test_peer_all_reduce_gpu.py, test_tensor_parallel_gpu.py) run them for real."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if sys.platform != "linux":  # the test extra installs Triton on Linux only; CI is Linux
    pytest.skip("Triton is installed on Linux only", allow_module_level=True)

from app.engine.distributed import peer_all_reduce  # noqa: E402
from app.engine.distributed.peer_all_reduce import PeerAllReduce  # noqa: E402
from app.engine.kernels.triton import fused_decode  # noqa: E402
from app.engine.kernels.triton.fused_decode import DecodeStep, PeerPart  # noqa: E402

# With a GPU the Triton interpreter is off, and tests/gpu/test_peer_all_reduce_gpu.py runs the kernels for real.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="a GPU is present: tests/gpu/test_peer_all_reduce_gpu.py runs these kernels "
                                       "there; this one-process simulation needs the CPU interpreter")
WORLD = 2


def two_ranks() -> list[PeerAllReduce]:
    buffers = [torch.zeros(PeerAllReduce.layout(WORLD)[3], dtype=torch.uint8) for _ in range(WORLD)]
    addresses = [b.data_ptr() for b in buffers]
    return [PeerAllReduce(rank, WORLD, buffers[rank], addresses) for rank in range(WORLD)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_one_shot_the_second_rank_sums_both_parts(dtype, monkeypatch):
    monkeypatch.setattr(peer_all_reduce, "SPIN_LIMIT", 2)
    ranks = two_ranks()
    g = torch.Generator().manual_seed(0)
    for order in ((0, 1), (1, 0)):  # two calls: both slots, both orders
        parts = [torch.randn(3000, generator=g).to(dtype) for _ in range(WORLD)]  # two programs, one ragged
        outs = [None, None]
        for rank in order:
            outs[rank] = ranks[rank](parts[rank])
        assert torch.equal(outs[order[1]], (parts[0].float() + parts[1].float()).to(dtype))


def _linear(k: int, n: int, g: torch.Generator, dtype: torch.dtype) -> SimpleNamespace:
    weight = (torch.randn(n, k, generator=g) * 0.1).to(dtype)
    return SimpleNamespace(weight=weight, bias=None, in_features=k, out_features=n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_fused_sums(dtype, monkeypatch):
    """Each rank's row-parallel linear delivers its part into both ranks' slot; summing it there
    gives the one-shot all-reduce's result on both ranks; the gate/up kernel reading the parts
    gives what it gives on that sum; a second round in the same slot counts on."""
    monkeypatch.setattr(fused_decode, "SPIN_LIMIT", 2)  # a wait that would hang fails the test instead
    ranks = two_ranks()
    hidden, k, inter = 64, 48, 96
    g = torch.Generator().manual_seed(1)
    like = torch.empty(1, hidden, dtype=dtype)
    for _ in range(2):
        linears = [_linear(k, hidden, g, dtype) for _ in range(WORLD)]
        xs = [torch.randn(1, k, generator=g).to(dtype) for _ in range(WORLD)]
        for rank in range(WORLD):
            part = fused_decode._linear(linears[rank], fused_decode._weights(linears[rank]), xs[rank],
                                        PeerPart(ranks[rank], 0, like))
            assert isinstance(part, PeerPart)
        partials = [fused_decode._linear(linears[r], fused_decode._weights(linears[r]), xs[r]) for r in range(WORLD)]
        expected = (partials[0].float() + partials[1].float()).to(dtype)
        for rank in (1, 0):
            assert torch.equal(DecodeStep.finish(PeerPart(ranks[rank], 0, like)), expected)

        gate_up = _linear(hidden, 2 * inter, g, dtype)
        layer = SimpleNamespace(mlp=SimpleNamespace(gate_up_proj=gate_up),
                                weights={"gate_up": fused_decode._weights(gate_up)},
                                post_norm=SimpleNamespace(weight=(1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype),
                                                          eps=1e-6))
        residual = torch.randn(1, hidden, generator=g).to(dtype)
        act, new_residual = fused_decode._gate_up(layer, PeerPart(ranks[0], 0, like), residual)
        ref_act, ref_residual = fused_decode._gate_up(layer, expected, residual)
        assert torch.equal(act, ref_act) and torch.equal(new_residual, ref_residual)
