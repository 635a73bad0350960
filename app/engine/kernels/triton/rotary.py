"""Rotary position embedding, HF "rotate_half" layout, for q (and k) in one launch.

x: [T, heads, head_dim], any token/head strides (a view of a fused qkv output works as is);
cos/sin: [T, head_dim/2]. Out: (x1*cos - x2*sin, x2*cos + x1*sin) for halves x1, x2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from app.engine.kernels.triton._common import gdc_launch_dependents, gdc_wait, next_pow2, pdl_launch


@triton.jit
def _rotate_heads(
    x_ptr, out_ptr, t, head_block, heads, stride_xt, stride_xh, stride_ot, stride_oh, c, s,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    h = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_HALF)
    mask = (h < heads)[:, None] & (d < HALF)[None, :]
    src = x_ptr + t * stride_xt + h[:, None] * stride_xh + d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = out_ptr + t * stride_ot + h[:, None] * stride_oh + d[None, :]
    tl.store(dst, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, q_out_ptr, k_ptr, k_out_ptr, cos_ptr, sin_ptr,
    q_heads, k_heads, q_blocks,
    stride_qt, stride_qh, stride_qot, stride_qoh,
    stride_kt, stride_kh, stride_kot, stride_koh,
    stride_ct, stride_st,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # programmatic dependent launch: the next kernel may launch; q and k are the last one's
        gdc_launch_dependents()
        gdc_wait()
    t = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    d = tl.arange(0, BLOCK_HALF)
    c = tl.load(cos_ptr + t * stride_ct + d, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
    s = tl.load(sin_ptr + t * stride_st + d, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
    # Programs [0, q_blocks) take q's heads, the rest k's.
    if hb < q_blocks:
        _rotate_heads(q_ptr, q_out_ptr, t, hb, q_heads, stride_qt, stride_qh, stride_qot, stride_qoh, c, s,
                      HALF, BLOCK_H, BLOCK_HALF)
    else:
        _rotate_heads(k_ptr, k_out_ptr, t, hb - q_blocks, k_heads, stride_kt, stride_kh, stride_kot, stride_koh,
                      c, s, HALF, BLOCK_H, BLOCK_HALF)


def _prepare(x: torch.Tensor, cos: torch.Tensor, inplace: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if x.stride(-1) != 1:
        if inplace:
            raise ValueError("in-place rotary needs a unit stride on the last dim")
        x = x.contiguous()
    out = x if inplace else torch.empty(x.shape, dtype=torch.promote_types(x.dtype, cos.dtype), device=x.device)
    return x, out


def apply_rotary_qk(
    q: torch.Tensor, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotates q [T, Hq, D] and k [T, Hk, D] (same T and D; k may be None) in one launch.

    Returns new contiguous tensors (dtype promoted with cos's, as the reference), or q and k
    themselves, rotated in place, with inplace=True."""
    tokens, q_heads, dim = q.shape
    half = dim // 2
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin.stride(-1) != 1:
        sin = sin.contiguous()
    q, q_out = _prepare(q, cos, inplace)
    if k is not None:
        k, k_out = _prepare(k, cos, inplace)
        k_heads = k.shape[1]
    else:
        k, k_out, k_heads = q, q_out, 0
    block_half = next_pow2(half)
    block_h = max(1, min(next_pow2(max(q_heads, k_heads)), 4096 // block_half))
    q_blocks, k_blocks = triton.cdiv(q_heads, block_h), triton.cdiv(k_heads, block_h)
    if tokens:
        _rotary_kernel[(tokens, q_blocks + k_blocks)](
            q, q_out, k, k_out, cos, sin,
            q_heads, k_heads, q_blocks,
            q.stride(0), q.stride(1), q_out.stride(0), q_out.stride(1),
            k.stride(0), k.stride(1), k_out.stride(0), k_out.stride(1),
            cos.stride(0), sin.stride(0),
            HALF=half, BLOCK_H=block_h, BLOCK_HALF=block_half,
            num_warps=4 if block_h * block_half >= 1024 else 1, **pdl_launch(q.device),
        )
    return q_out, (k_out if k_heads else None)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Rotates x [T, heads, D] with cos/sin [T, D/2]; see apply_rotary_qk."""
    return apply_rotary_qk(x, None, cos, sin, inplace)[0]
