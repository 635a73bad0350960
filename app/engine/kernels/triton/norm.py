"""RMSNorm, alone or fused with the residual add, over the last dim of [T, hidden] or [T, heads, dim]."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from app.engine.kernels.triton._common import gdc_launch_dependents, gdc_wait, next_pow2, pdl_launch


@triton.jit(do_not_specialize=["n_rows"])
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    n_rows, heads, n_cols, eps,
    stride_xt, stride_xh, stride_rt, stride_rh,
    HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # the next kernel may launch now (and start on its weights); x is the last one's output
        gdc_launch_dependents()
        gdc_wait()
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < n_cols)[None, :]
    rows64 = rows.to(tl.int64)
    t, h = rows64 // heads, rows64 % heads
    x = tl.load(x_ptr + (t * stride_xt + h * stride_xh)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out_offs = rows64[:, None] * n_cols + cols[None, :]
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + (t * stride_rt + h * stride_rh)[:, None] + cols[None, :], mask=mask, other=0.0)
        # The sum is rounded to the residual's dtype first: the norm sees what the next layer will.
        s = (x + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + out_offs, s, mask=mask)
        x = s.to(tl.float32)
        in_dtype = res_out_ptr.dtype.element_ty
    else:
        in_dtype = x_ptr.dtype.element_ty
    inv = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    normed = (x * inv[:, None]).to(in_dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_offs, (w[None, :] * normed).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(x, heads, stride per token, stride per head): a 2D or 3D x with a unit last stride as it is,
    anything else as contiguous rows."""
    if x.stride(-1) == 1 and x.dim() == 2:
        return x, 1, x.stride(0), 0
    if x.stride(-1) == 1 and x.dim() == 3:
        return x, x.shape[1], x.stride(0), x.stride(1)
    x = x.reshape(-1, x.shape[-1]).contiguous()
    return x, 1, x.stride(0), 0


def _launch(x, residual, weight, eps):
    shape, n = x.shape, x.shape[-1]
    weight = weight.contiguous()
    xr, heads, sxt, sxh = _rows(x)
    n_rows = xr.numel() // n
    in_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    out = torch.empty(shape, dtype=torch.promote_types(weight.dtype, in_dtype), device=x.device)
    res_out = torch.empty(shape, dtype=in_dtype, device=x.device) if residual is not None else out
    if residual is not None:
        rr, rheads, srt, srh = _rows(residual)
        if rheads != heads:  # laid out differently (one 3D, one flat): both as contiguous rows
            xr, heads, sxt, sxh = _rows(x.reshape(-1, n).contiguous())
            rr, _, srt, srh = _rows(residual.reshape(-1, n).contiguous())
    else:
        rr, srt, srh = xr, 0, 0
    block_n = next_pow2(n)
    block_m = max(1, min(16, 2048 // block_n))
    num_warps = 1 if block_n * block_m <= 256 else 4 if block_n * block_m <= 4096 else 8
    if n_rows:
        _rms_norm_kernel[(triton.cdiv(n_rows, block_m),)](
            xr, rr, weight, out, res_out, n_rows, heads, n, eps, sxt, sxh, srt, srh,
            HAS_RESIDUAL=residual is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
            **pdl_launch(x.device),
        )
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) over the last dim, computed in fp32 and rounded to x's dtype before the
    weight (as the reference). x: [T, hidden] or [T, heads, dim], any strides; returns a new tensor."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass; the sum is rounded to the input dtype."""
    return _launch(x, residual, weight, eps)
