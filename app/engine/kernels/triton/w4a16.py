"""W4A16 matmul: y = x @ W with W stored as AWQ 4-bit weights (Hugging Face "gemm" layout; see
app/engine/kernels/w4a16_reference.py), dequantised inside the kernel.

A program owns a [BLOCK_M, BLOCK_N] tile of y and walks (a slice of) K in BLOCK_K steps; BLOCK_K
divides the group size, so each step has one row of zeros and scales. Each step loads the int32
words of a [BLOCK_K, BLOCK_N // 8] weight tile, widens each to its 8 columns (tl.interleave), and
shifts and masks by the AWQ nibble order. The zero point and the scale are applied to the product,
not to each weight:

    sum_k x[m, k] (q[k, n] - z[n]) s[n] = s[n] (sum_k x[m, k] (C + q[k, n]) - (C + z[n]) sum_k x[m, k])

where C + q is made by or-ing q into the bits of C (128 in bf16, 1024 in fp16, whose last mantissa
bit is worth 1), so the tile reaches tl.dot in the activation dtype, exactly, with one integer op
per weight and no conversions; the correction costs a few ops per output element and step. (C
makes the fp32 sums larger than the result, costing a few bits of their 24: far below the
output's rounding; measured errors against the fp32 reference are about 1e-4.)

- Prefill and large batches: the tile is reused by BLOCK_M rows of x.
- Small batches (2 <= M <= 16): one 16-row tile of x (tensor cores need 16 rows; the padding
  costs nothing there: the weight bytes, K * N / 2, dominate).
- Batch 1 (the chat case): a GEMV kernel without tensor cores, about 1.7x faster than the GEMM
  kernel there on an H100 (which likely spends its time moving the widened tile through shared
  memory into tl.dot's operand layout). It takes the 8 nibbles of each word as 8 planes of the
  loaded [BLOCK_K, BLOCK_N // 8] tile (column AWQ_ORDER[i] of each word is nibble i), keeps fp32
  sums per plane element, and reduces them over K once at the end: every op is elementwise on
  the tile as loaded, with no widening and no layout change. The weight is made in fp32 here:
  or-ing q into the bits of 2**23 gives the float 2**23 + q, and subtracting the zero point's
  2**23 + z leaves q - z exactly.

Both split K when the output tiles alone cannot keep every SM busy: each program writes an fp32
partial and a small second kernel sums the partials in a fixed order (deterministic, no atomics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from app.engine.kernels.triton._common import (
    cdiv, dot_in_fp32, gdc_launch_dependents, gdc_wait, pdl_launch, sm_count,
)
from app.engine.kernels.w4a16_reference import check_shapes

__all__ = ["CONFIGS", "GEMV_CONFIG", "LaunchPlan", "TileConfig", "dequantize", "launch_plan", "w4a16_matmul"]

PROGRAMS_PER_SM = 2  # split K until about this many programs per SM are busy
_FLOAT_2_23 = tl.constexpr(0x4B000000)  # bits of 2.0 ** 23
# (C, bits of C) per activation dtype: C + q for q in 0..15 is exact, its low bits are q.
_OFFSETS = {torch.bfloat16: (128.0, 0x4300), torch.float16: (1024.0, 0x6400)}


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    block_k: int  # at most; lowered to divide the group size
    num_warps: int
    num_stages: int
    # GEMM: how each word reaches its 8 columns: widened in registers (tl.interleave), or loaded
    # once per column (the same word 8 times, served by L1), which needs no layout change. (Eight
    # narrow dots a step, one per nibble plane, measured slower than either on an H100.)
    widen_by_load: bool = False


# From an H100 sweep over Llama-3-8B's linears at M = 1, 4, 8 and 64, bf16 (benchmarks/gpu_w4a16.py
# --sweep); the entries past 64 rows are unswept.
GEMV_CONFIG = TileConfig(1, 256, 64, 4, 3)  # batch 1
CONFIGS: dict[int, TileConfig] = {  # GEMM, by the largest batch each serves (first key >= M)
    16: TileConfig(16, 256, 128, 4, 3),
    32: TileConfig(32, 128, 128, 4, 3),
    64: TileConfig(64, 128, 128, 4, 3),
    128: TileConfig(128, 128, 64, 8, 3),
    1 << 62: TileConfig(128, 256, 64, 8, 3),
}


@triton.jit
def _widen(words):
    """[R, C] int32 words -> [R, 8 * C], each word repeated for its 8 columns."""
    words = tl.interleave(words, words)
    words = tl.interleave(words, words)
    return tl.interleave(words, words)


@triton.jit
def _w4a16_kernel(
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, out_ptr,
    M, N, K, group_size, stride_xm, stride_om, k_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
    DOT_FP32: tl.constexpr, OFFSET: tl.constexpr, OFFSET_BITS: tl.constexpr, WIDEN_BY_LOAD: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (m tile, n tile, K slice). With SPLIT, out is the fp32 partials [slices, M, N];
    else y itself."""
    if PDL:  # launched early (programmatic dependent launch): let the next kernel launch, wait for x
        gdc_launch_dependents()
        gdc_wait()
    pid_k = tl.program_id(2)
    words_per_row = N // 8
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    words = tl.program_id(1) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    # Column j of a word sits in nibble (j // 2) + 4 * (j % 2) (the AWQ order 0 2 4 6 1 3 5 7).
    shifts = ((cols % 8) // 2 + (cols % 2) * 4) * 4
    row_ok = rows < M
    col_ok = cols < N
    word_ok = words < words_per_row
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None], other=0.0)
        group = k0 // group_size
        scales = tl.load(scales_ptr + group * N + cols, mask=col_ok, other=0.0).to(tl.float32)
        if WIDEN_BY_LOAD:
            col_words = cols // 8
            packed = tl.load(qweight_ptr + k[:, None] * words_per_row + col_words[None, :], mask=col_ok[None, :],
                             other=0)
            q = (packed >> shifts[None, :]) & 0xF
            z = (tl.load(qzeros_ptr + group * words_per_row + col_words, mask=col_ok, other=0)[None, :]
                 >> shifts[None, :]) & 0xF
        else:
            packed = tl.load(qweight_ptr + k[:, None] * words_per_row + words[None, :], mask=word_ok[None, :],
                             other=0)
            packed_zeros = tl.load(qzeros_ptr + group * words_per_row + words, mask=word_ok, other=0)
            q = (_widen(packed) >> shifts[None, :]) & 0xF
            z = (_widen(packed_zeros[None, :]) >> shifts[None, :]) & 0xF
        if DOT_FP32:  # fp32 activations, or the interpreter (whose bf16 arithmetic is broken)
            sums = tl.dot(x.to(tl.float32), q.to(tl.float32) + OFFSET, input_precision="ieee")
        else:
            w = (q | OFFSET_BITS).to(tl.int16).to(x_ptr.dtype.element_ty, bitcast=True)  # OFFSET + q
            sums = tl.dot(x, w)
        x_sums = tl.sum(x.to(tl.float32), axis=1)
        acc += (sums - x_sums[:, None] * (z.to(tl.float32) + OFFSET)) * scales[None, :]

    mask = row_ok[:, None] & col_ok[None, :]
    if SPLIT:
        part = out_ptr + pid_k.to(tl.int64) * M * N + rows.to(tl.int64)[:, None] * N + cols[None, :]
        tl.store(part, acc, mask=mask)
    else:
        y = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
        tl.store(y, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _plane(packed, packed_zeros, scale_ptrs, word_ok, x, i: tl.constexpr):
    """x * W for nibble i of every word of the tile (column 2 * (i % 4) + i // 4 of its 8):
    [BLOCK_K, words], fp32."""
    q = ((packed >> (4 * i)) & 0xF) | _FLOAT_2_23
    z = ((packed_zeros >> (4 * i)) & 0xF) | _FLOAT_2_23
    s = tl.load(scale_ptrs + (2 * (i % 4) + i // 4), mask=word_ok, other=0.0).to(tl.float32)
    w = (q.to(tl.float32, bitcast=True) - z.to(tl.float32, bitcast=True)[None, :]) * s[None, :]
    return x[:, None] * w


@triton.jit
def _store_plane(sums, out_ptr, words, word_ok, i: tl.constexpr):
    """Plane i's sums [BLOCK_K, words], reduced over K, to its columns of y (or of a partial)."""
    y = tl.sum(sums, axis=0).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + words * 8 + (2 * (i % 4) + i // 4), y, mask=word_ok)


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, out_ptr, N, K, group_size, k_per_split,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """Program (0, n tile, K slice) for one row of x. With several slices, out is the fp32
    partials [slices, 1, N]; else y itself (pid_k == 0)."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    pid_k = tl.program_id(2)
    words_per_row = N // 8
    words = tl.program_id(1) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    word_ok = words < words_per_row
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    a0 = tl.zeros([BLOCK_K, BLOCK_N // 8], tl.float32)
    a1 = tl.zeros_like(a0)
    a2 = tl.zeros_like(a0)
    a3 = tl.zeros_like(a0)
    a4 = tl.zeros_like(a0)
    a5 = tl.zeros_like(a0)
    a6 = tl.zeros_like(a0)
    a7 = tl.zeros_like(a0)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + k).to(tl.float32)
        packed = tl.load(qweight_ptr + k[:, None] * words_per_row + words[None, :], mask=word_ok[None, :], other=0)
        group = k0 // group_size
        packed_zeros = tl.load(qzeros_ptr + group * words_per_row + words, mask=word_ok, other=0)
        scale_ptrs = scales_ptr + group * N + words * 8
        a0 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 0)
        a1 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 1)
        a2 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 2)
        a3 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 3)
        a4 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 4)
        a5 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 5)
        a6 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 6)
        a7 += _plane(packed, packed_zeros, scale_ptrs, word_ok, x, 7)
    out = out_ptr + pid_k.to(tl.int64) * N  # the slice's partial; y itself when not split
    _store_plane(a0, out, words, word_ok, 0)
    _store_plane(a1, out, words, word_ok, 1)
    _store_plane(a2, out, words, word_ok, 2)
    _store_plane(a3, out, words, word_ok, 3)
    _store_plane(a4, out, words, word_ok, 4)
    _store_plane(a5, out, words, word_ok, 5)
    _store_plane(a6, out, words, word_ok, 6)
    _store_plane(a7, out, words, word_ok, 7)


@triton.jit
def _sum_slices_kernel(part_ptr, out_ptr, M, N, slices, stride_om, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """y = the sum of the fp32 partials over K slices, in slice order, rounded once."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(slices):
        acc += tl.load(part_ptr + s * M * N + offs, mask=ok, other=0.0)
    tl.store(out_ptr + (offs // N) * stride_om + offs % N, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dequantize_plane(packed, packed_zeros, scale_ptrs, ok, i: tl.constexpr):
    """W for nibble i of every word of the tile: [BLOCK_K, BLOCK_W], fp32."""
    q = ((packed >> (4 * i)) & 0xF).to(tl.float32)
    z = ((packed_zeros >> (4 * i)) & 0xF).to(tl.float32)
    s = tl.load(scale_ptrs + (2 * (i % 4) + i // 4), mask=ok, other=0.0).to(tl.float32)
    return (q - z) * s


@triton.jit
def _dequantize_kernel(qweight_ptr, qzeros_ptr, scales_ptr, w_ptr, K, N, group_size,
                       BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr):
    """W [K, N] = (q - z) * s for a [BLOCK_K, BLOCK_W words] tile: the 8 nibble planes of the
    tile as loaded, put in column order by interleaving (column c of a word is plane
    (c % 2) * 4 + c // 2), so whole rows are stored contiguously."""
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    words = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    words_per_row = N // 8
    ok = (k < K)[:, None] & (words < words_per_row)[None, :]
    packed = tl.load(qweight_ptr + k.to(tl.int64)[:, None] * words_per_row + words[None, :], mask=ok, other=0)
    group = (k // group_size)[:, None]
    zeros = tl.load(qzeros_ptr + group * words_per_row + words[None, :], mask=ok, other=0)
    scale_ptrs = scales_ptr + group * N + words[None, :] * 8
    p0 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 0)
    p1 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 1)
    p2 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 2)
    p3 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 3)
    p4 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 4)
    p5 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 5)
    p6 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 6)
    p7 = _dequantize_plane(packed, zeros, scale_ptrs, ok, 7)
    even = tl.interleave(tl.interleave(p0, p2), tl.interleave(p1, p3))
    odd = tl.interleave(tl.interleave(p4, p6), tl.interleave(p5, p7))
    w = tl.interleave(even, odd).to(w_ptr.dtype.element_ty)
    columns = tl.program_id(1) * BLOCK_W * 8 + tl.arange(0, BLOCK_W * 8)
    ok = (k < K)[:, None] & (columns < N)[None, :]
    tl.store(w_ptr + k.to(tl.int64)[:, None] * N + columns[None, :], w, mask=ok)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
               dtype: torch.dtype) -> torch.Tensor:
    """The AWQ weight as a dense [K, N] matrix of ``dtype``: for products with many rows of x
    (prefill), where one pass over the weight to expand it costs less than the GEMM kernel's
    in-loop dequantisation, and cuBLAS then runs at its full rate."""
    k, n = check_shapes(qweight, qzeros, scales, group_size)
    w = torch.empty((k, n), dtype=dtype, device=qweight.device)
    block_k, block_w = 32, 32
    _dequantize_kernel[(cdiv(k, block_k), cdiv(n // 8, block_w))](
        qweight, qzeros, scales, w, k, n, group_size, BLOCK_K=block_k, BLOCK_W=block_w, num_warps=4,
    )
    return w


@dataclass(frozen=True)
class LaunchPlan:
    gemv: bool  # the batch-1 GEMV kernel, else the GEMM one
    config: TileConfig
    block_k: int
    grid: tuple[int, int, int]  # (m tiles, n tiles, K slices)
    k_per_split: int  # rows of K per slice, a multiple of block_k


def launch_plan(
    m: int, n: int, k: int, group_size: int, device: torch.device, split_k: int | None = None
) -> LaunchPlan:
    """Kernel, tile config and grid for a [m, k] x [k, n] product. K is split when the output tiles
    alone leave SMs idle (decode); `split_k` forces a number of slices (tests, sweeps). Host ints only."""
    gemv = m == 1
    config = GEMV_CONFIG if gemv else next(c for limit, c in sorted(CONFIGS.items()) if m <= limit)
    block_k = min(config.block_k, group_size & -group_size)  # a power of two dividing the group
    if block_k < 16:
        raise ValueError(f"group_size {group_size} must be a multiple of 16")
    tiles = cdiv(m, config.block_m) * cdiv(n, config.block_n)
    k_tiles = k // block_k
    if split_k is None:
        split_k = cdiv(PROGRAMS_PER_SM * sm_count(device), tiles)
    per_split = cdiv(k_tiles, max(1, min(split_k, k_tiles)))
    slices = cdiv(k_tiles, per_split)  # no empty slice
    grid = (cdiv(m, config.block_m), cdiv(n, config.block_n), slices)
    return LaunchPlan(gemv, config, block_k, grid, per_split * block_k)


def w4a16_matmul(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
    *, out: torch.Tensor | None = None, split_k: int | None = None,
) -> torch.Tensor:
    """y = x @ W for x [..., K] (fp16 or bf16; fp32 also works) and an AWQ weight (qweight int32
    [K, N // 8], qzeros int32 [K // G, N // 8], scales fp16 [K // G, N], all contiguous).
    Returns [..., N] in x's dtype; `out` ([M, N] view-compatible, unit last stride) is written
    when given. group_size must be a multiple of 16 (AWQ uses 32, 64 or 128)."""
    k, n = check_shapes(qweight, qzeros, scales, group_size)
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {k}")
    assert qweight.is_contiguous() and qzeros.is_contiguous() and scales.is_contiguous()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = out.view(m, n) if out is not None else torch.empty((m, n), dtype=x.dtype, device=x.device)
    assert y.stride(-1) == 1
    if m == 0:
        return y.view(*lead, n)
    plan = launch_plan(m, n, k, group_size, x.device, split_k)
    split = plan.grid[2] > 1
    target = torch.empty((plan.grid[2], m, n), dtype=torch.float32, device=x.device) if split else y
    dot_fp32 = dot_in_fp32(x.dtype)
    offset, offset_bits = _OFFSETS.get(x.dtype, (0.0, 0))  # fp32: no offset (tl.dot takes q itself)
    c = plan.config
    pdl = pdl_launch(x.device)
    if plan.gemv:
        _w4a16_gemv_kernel[plan.grid](
            x2, qweight, qzeros, scales, target, n, k, group_size, plan.k_per_split,
            BLOCK_N=c.block_n, BLOCK_K=plan.block_k, num_warps=c.num_warps, num_stages=c.num_stages, **pdl,
        )
    else:
        _w4a16_kernel[plan.grid](
            x2, qweight, qzeros, scales, target, m, n, k, group_size, x2.stride(0), y.stride(0), plan.k_per_split,
            BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=plan.block_k, SPLIT=split, DOT_FP32=dot_fp32,
            OFFSET=offset, OFFSET_BITS=offset_bits, WIDEN_BY_LOAD=c.widen_by_load,
            num_warps=c.num_warps, num_stages=c.num_stages, **pdl,
        )
    if split:
        block = 1024
        _sum_slices_kernel[(cdiv(m * n, block),)](
            target, y, m, n, plan.grid[2], y.stride(0), BLOCK=block, num_warps=4, **pdl,
        )
    return y.view(*lead, n)
