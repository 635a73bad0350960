"""Writes this step's keys and values into the paged cache at their slots: cast to a float
cache's dtype, or quantized into int8/int4 rows (layout and rounding in app/engine/kv_quant.py).

For a quantized cache the rows are first turned by the Hadamard matrix R in torch (one small
matmul for the step, the same op the reference runs, so both quantize bit-identical inputs);
the kernel then finds each row's range, rounds scale and minimum to fp16, and rounds to the
nearest integer, ties to even, with IEEE division, as torch does: its bytes equal the reference's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from app.engine import kv_quant
from app.engine.kernels.triton._common import gdc_launch_dependents, gdc_wait, next_pow2, pdl_launch


@triton.jit
def _levels(x, low, scale, levels):
    """The integers of x [heads, n] given each head's fp16-rounded minimum and scale [heads]."""
    y = tl.math.div_rn(x - low[:, None], tl.broadcast_to(scale[:, None], x.shape))
    q = tl.floor(y + 0.5)
    q = tl.where((q - y == 0.5) & (q % 2 != 0), q - 1.0, q)  # ties to even, as torch.round
    return tl.minimum(tl.maximum(q, 0.0), levels * 1.0).to(tl.uint8)


@triton.jit
def _quantize_rows(x_ptr, stride_xh, ints_ptr, params_ptr, h, heads, dim,
                   BLOCK_D: tl.constexpr, BITS: tl.constexpr, WIDTH: tl.constexpr, UNIT_BYTES: tl.constexpr):
    """Heads h of one token: turned fp32 rows at x_ptr -> their integers at ints_ptr (a row of
    dim * BITS / 8 bytes a head), packed as kv_quant.Packing (WIDTH units of UNIT_BYTES; field f
    of unit u holds element f * WIDTH + u), and their fp16 (scale, minimum) at params_ptr."""
    d = tl.arange(0, BLOCK_D)
    h_ok = h < heads
    x_rows = x_ptr + h[:, None] * stride_xh
    mask = h_ok[:, None] & (d < dim)[None, :]
    x = tl.load(x_rows + d[None, :], mask=mask, other=0.0)
    levels = (1 << BITS) - 1
    low = tl.minimum(tl.maximum(tl.min(tl.where(mask, x, float("inf")), axis=1), -65504.0), 65504.0)
    low = low.to(tl.float16).to(tl.float32)
    high = tl.max(tl.where(mask, x, float("-inf")), axis=1)
    scale = tl.math.div_rn(high - low, tl.full(low.shape, levels, tl.float32))
    scale = tl.minimum(tl.maximum(scale, 1e-6), 65504.0).to(tl.float16).to(tl.float32)
    rows = ints_ptr + h[:, None] * (dim * BITS // 8)
    if BITS == 8:  # element d: byte (d % W) * UNIT_BYTES + d // W
        tl.store(rows + ((d % WIDTH) * UNIT_BYTES + d // WIDTH)[None, :], _levels(x, low, scale, levels), mask=mask)
    else:  # byte j of unit u: fields 2j (low nibble) and 2j + 1, elements 2jW + u and that + W
        c = tl.arange(0, BLOCK_D // 2)
        j, u = c // WIDTH, c % WIDTH
        first = 2 * j * WIDTH + u
        pair_mask = h_ok[:, None] & (c < dim // 2)[None, :]
        lo = _levels(tl.load(x_rows + first[None, :], mask=pair_mask, other=0.0), low, scale, levels)
        hi = _levels(tl.load(x_rows + (first + WIDTH)[None, :], mask=pair_mask, other=0.0), low, scale, levels)
        tl.store(rows + (u * UNIT_BYTES + j)[None, :], lo | (hi << 4), mask=pair_mask)
    params = params_ptr.to(tl.pointer_type(tl.float16)) + 2 * h
    tl.store(params, scale.to(tl.float16), mask=h_ok)
    tl.store(params + 1, low.to(tl.float16), mask=h_ok)


@triton.jit
def _store_rows(x_ptr, stride_xh, row_ptr, stride_rh, h, heads, dim, BLOCK_D: tl.constexpr):
    """Heads h of one token, cast to the (float) cache's dtype."""
    d = tl.arange(0, BLOCK_D)
    mask = (h < heads)[:, None] & (d < dim)[None, :]
    x = tl.load(x_ptr + h[:, None] * stride_xh + d[None, :], mask=mask)
    tl.store(row_ptr + h[:, None] * stride_rh + d[None, :], x.to(row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    heads, dim,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BITS: tl.constexpr,
    WIDTH: tl.constexpr, UNIT_BYTES: tl.constexpr, PDL: tl.constexpr,
):
    """Program (token, block of heads). BITS 0: a float cache; 8 or 4: quantized rows."""
    if PDL:  # programmatic dependent launch: the next kernel may launch; k and v are the last one's
        gdc_launch_dependents()
        gdc_wait()
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    if slot >= 0:  # a negative slot is padding (CUDA-graph batches): nothing to write
        block, offset = slot // BLOCK_SIZE, slot % BLOCK_SIZE
        h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        if BITS == 0:
            k_rows = k_cache_ptr + block * stride_kcb + offset * stride_kcs
            v_rows = v_cache_ptr + block * stride_vcb + offset * stride_vcs
            _store_rows(k_ptr + t * stride_kt, stride_kh, k_rows, stride_kch, h, heads, dim, BLOCK_D)
            _store_rows(v_ptr + t * stride_vt, stride_vh, v_rows, stride_vch, h, heads, dim, BLOCK_D)
        else:  # a block: every (slot, head)'s integers, then every (slot, head)'s pair (kv_quant)
            data = heads * (dim * BITS // 8)  # a slot's integers
            k_block = k_cache_ptr + block * stride_kcb
            v_block = v_cache_ptr + block * stride_vcb
            _quantize_rows(k_ptr + t * stride_kt, stride_kh, k_block + offset * data,
                           k_block + BLOCK_SIZE * data + offset * heads * 4, h, heads, dim, BLOCK_D, BITS,
                           WIDTH, UNIT_BYTES)
            _quantize_rows(v_ptr + t * stride_vt, stride_vh, v_block + offset * data,
                           v_block + BLOCK_SIZE * data + offset * heads * 4, h, heads, dim, BLOCK_D, BITS,
                           WIDTH, UNIT_BYTES)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """k/v: [T, kv_heads, dim] (any token/head strides); caches: [num_blocks, block_size, kv_heads,
    dim], or uint8 [..., row width] holding int8/int4 rows (kv_quant.block_parts); slots: [T] int, slot = block *
    block_size + offset; a negative slot is padding and is skipped."""
    tokens, heads, dim = k.shape
    if not tokens:
        return
    bits, width, unit_bytes = 0, 1, 1
    if k_cache.dtype == torch.uint8:
        bits = kv_quant.bits_of(k_cache, dim)
        assert k_cache.is_contiguous() and v_cache.is_contiguous(), "a quantized cache's blocks: contiguous"
        pack = kv_quant.Packing.of(dim, bits)
        width, unit_bytes = pack.width, pack.unit_bits // 8
        turn = kv_quant.rotation(dim, k.device)
        k, v = k.float() @ turn, v.float() @ turn  # as kv_quant.quantize_rows: the same bits
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "cache needs a unit stride on its rows"
    block_d = next_pow2(dim)
    block_h = max(1, min(next_pow2(heads), 4096 // block_d))
    _write_kv_kernel[(tokens, triton.cdiv(heads, block_h))](
        k, v, k_cache, v_cache, slots, heads, dim,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        BLOCK_SIZE=k_cache.shape[1], BLOCK_H=block_h, BLOCK_D=block_d, BITS=bits, WIDTH=width,
        UNIT_BYTES=unit_bytes,
        num_warps=4 if block_h * block_d >= 1024 else 1, **pdl_launch(k.device),
    )
