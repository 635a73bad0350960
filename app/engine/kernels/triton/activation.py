"""SwiGLU's gate: silu(gate) * up for gate_up = [gate | up] along the last dim."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from app.engine.kernels.triton._common import next_pow2


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2I] -> [..., I], computed in fp32, rounded once to the input dtype."""
    *lead, two_i = gate_up.shape
    n = two_i // 2
    x = gate_up.reshape(-1, two_i)
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows = x.shape[0]
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, next_pow2(n))
    if rows and n:
        _silu_mul_kernel[(rows, triton.cdiv(n, block))](
            x, out, n, x.stride(0), out.stride(0), BLOCK=block, num_warps=4 if block >= 512 else 1
        )
    return out.view(*lead, n)
