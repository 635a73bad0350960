"""Decoder layers for one-sequence decode steps in five launches instead of eleven.

At batch 1 a small model's decode step is bound by how many kernels run, not by bandwidth: each
launch costs a few microseconds whatever it does. Here each linear is a GEMV-style kernel that
also does the small ops around it:

  1. qkv:       residual add + RMSNorm prologue; bias, q/k norm, rotary, KV-cache write epilogue
  2. attention: the split-K paged decode kernel
  3. o_proj:    plain
  4. gate_up:   residual add + RMSNorm prologue; SiLU(gate) * up epilogue
  5. down:      plain

Prologue: every program first sums each row's squares over the whole input (a few KB from L2),
then normalises its K tiles on the fly; program 0 also stores x + residual, the next residual.
Rounding follows the unfused path: the sum, the normalised input, each linear's output and the
activation are rounded to the model dtype where the separate kernels round them.

This is the chat case (one conversation at a time). Several sequences take the per-op path: at
2-16 rows cuBLAS's GEMMs beat these GEMVs (benchmarks/gpu_fused_decode_sweep.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from app.engine.kernels.triton._common import (
    gdc_launch_dependents, gdc_wait, interpreting, next_pow2, pdl_launch, sm_count,
)
from app.engine.kernels.triton.decode_attention import paged_decode_attention


@triton.jit
def _load_input(x_ptr, res_ptr, k, K, HAS_RES: tl.constexpr):
    """x (+ residual, rounded to x's dtype) at columns k, as fp32."""
    x = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
    if HAS_RES:
        x = (x + tl.load(res_ptr + k, mask=k < K, other=0.0).to(tl.float32)).to(x_ptr.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _inv_rms(x_ptr, res_ptr, res_out_ptr, K, eps, HAS_RES: tl.constexpr, BLOCK_K: tl.constexpr):
    """1 / rms of x + residual; program 0 stores that sum to res_out."""
    squares = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = _load_input(x_ptr, res_ptr, k, K, HAS_RES)
        if HAS_RES:
            # Masks are built elementwise: newer interpreters reject a vector & scalar mask.
            first = k * 0 + tl.program_id(0) == 0
            tl.store(res_out_ptr + k, x.to(res_out_ptr.dtype.element_ty), mask=(k < K) & first)
        squares += x * x
    return tl.rsqrt(tl.sum(squares, axis=0) / K + eps)


@triton.jit
def _load_weights(w_ptr, rows_a, rows_b, k, K, N):
    """Two [BLOCK_R, BLOCK_K] tiles of a row-major [N, K] weight; rows past N and columns past K
    read as zero (no traffic)."""
    k_ok = (k < K)[None, :]
    w_a = tl.load(w_ptr + rows_a[:, None] * K + k[None, :], mask=(rows_a < N)[:, None] & k_ok, other=0.0)
    w_b = tl.load(w_ptr + rows_b[:, None] * K + k[None, :], mask=(rows_b < N)[:, None] & k_ok, other=0.0)
    return w_a, w_b


@triton.jit
def _matvec_pair(x_ptr, res_ptr, res_out_ptr, norm_ptr, eps, w_ptr, rows_a, rows_b, K, N,
                 NORM: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                 PDL: tl.constexpr):
    """(W[rows_a] @ x', W[rows_b] @ x') in fp32, [BLOCK_R] each, where x' is x or RMSNorm(x +
    residual) * norm weight (program 0 storing x + residual to res_out). Rows at or past N read
    as zero.

    The first weight tiles load before waiting on the previous kernel (PDL: programmatic dependent
    launch), so they stream in while it finishes; each later tile loads one step ahead. Products
    accumulate elementwise and reduce once at the end (no shuffles in the loop)."""
    w_a, w_b = _load_weights(w_ptr, rows_a, rows_b, tl.arange(0, BLOCK_K), K, N)
    if PDL:
        gdc_wait()
    if NORM:
        inv = _inv_rms(x_ptr, res_ptr, res_out_ptr, K, eps, HAS_RES, BLOCK_K)
    part_a = tl.zeros([BLOCK_R, BLOCK_K], tl.float32)
    part_b = tl.zeros([BLOCK_R, BLOCK_K], tl.float32)
    dtype = w_ptr.dtype.element_ty
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = _load_input(x_ptr, res_ptr, k, K, HAS_RES)
        if NORM:
            weight = tl.load(norm_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            x = (x * inv).to(dtype).to(tl.float32) * weight
        x = x.to(dtype).to(tl.float32)[None, :]
        part_a += w_a.to(tl.float32) * x
        part_b += w_b.to(tl.float32) * x
        w_a, w_b = _load_weights(w_ptr, rows_a, rows_b, k + BLOCK_K, K, N)
    return tl.sum(part_a, axis=1), tl.sum(part_b, axis=1)


@triton.jit
def _linear_out(acc, b_ptr, rows, N, HAS_BIAS: tl.constexpr):
    """A linear's output as the unfused path has it: + bias, rounded to the model dtype (fp32
    values). b_ptr is the bias, or (without one) any tensor of the model dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    return acc.to(b_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _qkv_kernel(
    x_ptr, res_ptr, res_out_ptr, norm_ptr, w_ptr, b_ptr, q_norm_ptr, k_norm_ptr,
    cos_ptr, sin_ptr, slots_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, K, eps,
    HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, QK_NORM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """Program = BLOCK_R column pairs (j, j + HALF) of one head of q, k or v. The cache is
    [blocks, BLOCK_SIZE, HKV, 2 * HALF], contiguous."""
    if PDL:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    per_head = HALF // BLOCK_R
    head = pid // per_head
    j = (pid % per_head) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = (HQ + 2 * HKV) * 2 * HALF
    dtype = w_ptr.dtype.element_ty
    lo_rows = head * 2 * HALF + j
    hi_rows = lo_rows + HALF
    lo, hi = _matvec_pair(x_ptr, res_ptr, res_out_ptr, norm_ptr, eps, w_ptr, lo_rows, hi_rows, K, n,
                          True, HAS_RES, BLOCK_R, BLOCK_K, PDL)
    lo = _linear_out(lo, b_ptr, lo_rows, n, HAS_BIAS)
    hi = _linear_out(hi, b_ptr, hi_rows, n, HAS_BIAS)
    if head < HQ + HKV:  # q or k: (per-head norm), then rotary
        if QK_NORM:  # BLOCK_R == HALF: the program holds the whole head
            head_inv = tl.rsqrt((tl.sum(lo * lo, axis=0) + tl.sum(hi * hi, axis=0)) / (2 * HALF) + eps)
            if head < HQ:
                w_lo = tl.load(q_norm_ptr + j).to(tl.float32)
                w_hi = tl.load(q_norm_ptr + HALF + j).to(tl.float32)
            else:
                w_lo = tl.load(k_norm_ptr + j).to(tl.float32)
                w_hi = tl.load(k_norm_ptr + HALF + j).to(tl.float32)
            lo = ((lo * head_inv).to(dtype).to(tl.float32) * w_lo).to(dtype).to(tl.float32)
            hi = ((hi * head_inv).to(dtype).to(tl.float32) * w_hi).to(dtype).to(tl.float32)
        c = tl.load(cos_ptr + j).to(tl.float32)
        s = tl.load(sin_ptr + j).to(tl.float32)
        lo, hi = lo * c - hi * s, hi * c + lo * s
    if head < HQ:
        q = q_out_ptr + head * 2 * HALF + j
        tl.store(q, lo.to(q_out_ptr.dtype.element_ty))
        tl.store(q + HALF, hi.to(q_out_ptr.dtype.element_ty))
    else:
        slot = tl.load(slots_ptr).to(tl.int64)
        ok = j * 0 + slot >= 0  # a negative slot is CUDA-graph padding: write nowhere
        if head < HQ + HKV:
            dst = k_cache_ptr + (slot * HKV + head - HQ) * 2 * HALF + j
        else:
            dst = v_cache_ptr + (slot * HKV + head - HQ - HKV) * 2 * HALF + j
        tl.store(dst, lo.to(k_cache_ptr.dtype.element_ty), mask=ok)
        tl.store(dst + HALF, hi.to(k_cache_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _gate_up_kernel(
    x_ptr, res_ptr, res_out_ptr, norm_ptr, w_ptr, b_ptr, out_ptr, K, inter, eps,
    HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """Program = BLOCK_R activations: gate rows n and up rows inter + n."""
    if PDL:
        gdc_launch_dependents()
    n = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    up_rows = tl.where(n < inter, inter + n, 2 * inter)  # past the end: masked, like n itself
    gate, up = _matvec_pair(x_ptr, res_ptr, res_out_ptr, norm_ptr, eps, w_ptr, n, up_rows, K, 2 * inter,
                            True, True, BLOCK_R, BLOCK_K, PDL)
    gate = _linear_out(gate, b_ptr, n, inter, HAS_BIAS)
    up = _linear_out(up, b_ptr, up_rows, 2 * inter, HAS_BIAS)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n < inter)


@triton.jit
def _linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, K, N,
    HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """Program = 2 * BLOCK_R consecutive outputs of W @ x (+ bias)."""
    if PDL:
        gdc_launch_dependents()
    rows_a = tl.program_id(0) * 2 * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_b = rows_a + BLOCK_R
    a, b = _matvec_pair(x_ptr, x_ptr, x_ptr, x_ptr, 0.0, w_ptr, rows_a, rows_b, K, N,
                        False, False, BLOCK_R, BLOCK_K, PDL)
    tl.store(out_ptr + rows_a, _linear_out(a, b_ptr, rows_a, N, HAS_BIAS).to(out_ptr.dtype.element_ty),
             mask=rows_a < N)
    tl.store(out_ptr + rows_b, _linear_out(b, b_ptr, rows_b, N, HAS_BIAS).to(out_ptr.dtype.element_ty),
             mask=rows_b < N)


# ---- host side -------------------------------------------------------------------------------

# Launch shapes: the best or within 10% of it at every starter and Llama-3-8B linear shape in
# benchmarks/gpu_fused_decode_sweep.py (H100, bf16).
TILES = {"programs_per_sm": 4, "tile_elements": 4096, "num_warps": 4}


def _tiles(out_pairs: int, k: int, device: torch.device, block_r: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_K, num_warps) for `out_pairs` output row pairs over `k` inputs: enough
    programs to give every SM a few, and W tiles (held in registers) of about tile_elements.
    A given block_r is kept."""
    wanted = out_pairs // (TILES["programs_per_sm"] * sm_count(device))
    block_r = block_r or max(2, min(16, next_pow2(max(1, wanted))))
    block_k = min(next_pow2(k), max(16, TILES["tile_elements"] // block_r))
    if interpreting():
        block_k = min(block_k, 64)  # several K steps even on tiny test shapes
    return block_r, block_k, TILES["num_warps"]


@dataclass
class DecodeStep:
    """One decode step's inputs for its single sequence, shared by every layer."""

    cos: torch.Tensor  # [1, head_dim / 2]
    sin: torch.Tensor
    slots: torch.Tensor  # [1] cache slot of the new token (negative: padding)
    block_tables: torch.Tensor  # [1, max_blocks]
    context_lens: torch.Tensor  # [1]


def decode_step(cos, sin, slots, block_tables, context_lens) -> DecodeStep | None:
    """The step, or None for a batch of several sequences: cuBLAS's GEMMs serve those better
    than these GEMVs, and the per-op path runs them."""
    if cos.shape[0] != 1:
        return None
    return DecodeStep(cos.contiguous(), sin.contiguous(), slots, block_tables, context_lens)


class DecodeLayer:
    """One DecoderLayer's weights and cache, checked once, for :func:`run`."""

    def __init__(self, layer, k_cache: torch.Tensor, v_cache: torch.Tensor):
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        if any(lin.weight is None or not lin.weight.is_contiguous() for lin in linears):
            raise ValueError("the fused decode layer needs dense row-major linear weights")
        half = attn.head_dim // 2
        if attn.head_dim & (attn.head_dim - 1) or half < 2:
            raise ValueError("the fused decode layer needs a power-of-two head size")
        if k_cache.shape[2] != attn.num_kv_heads or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
            raise ValueError("the KV cache does not fit the fused decode layer")
        self.attn, self.mlp = attn, mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.k_cache, self.v_cache = k_cache, v_cache
        self.half = half


def _qkv(layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, residual: torch.Tensor | None):
    attn = layer.attn
    heads = attn.num_heads + 2 * attn.num_kv_heads
    qk_norm = attn.q_norm is not None
    block_r = layer.half if qk_norm else None  # q/k norm: a program holds whole heads
    block_r, block_k, warps = _tiles(heads * layer.half, x.shape[1], x.device, block_r)
    block_r = min(block_r, layer.half)
    q = torch.empty((1, attn.num_heads, attn.head_dim), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x) if residual is not None else x
    w, bias = attn.qkv_proj.weight, attn.qkv_proj.bias
    _qkv_kernel[(heads * (layer.half // block_r),)](
        x, residual if residual is not None else x, res_out, layer.input_norm.weight, w,
        bias if bias is not None else w, attn.q_norm.weight if qk_norm else w, attn.k_norm.weight if qk_norm else w,
        step.cos, step.sin, step.slots, q, layer.k_cache, layer.v_cache, x.shape[1], layer.input_norm.eps,
        HQ=attn.num_heads, HKV=attn.num_kv_heads, HALF=layer.half,
        HAS_RES=residual is not None, HAS_BIAS=bias is not None, QK_NORM=qk_norm,
        BLOCK_R=block_r, BLOCK_K=block_k, num_warps=warps, **pdl_launch(x.device),
    )
    return q, res_out


def _linear(linear, x: torch.Tensor) -> torch.Tensor:
    w, bias = linear.weight, linear.bias
    block_r, block_k, warps = _tiles(w.shape[0] // 2, w.shape[1], x.device)
    out = torch.empty((1, w.shape[0]), dtype=x.dtype, device=x.device)
    _linear_kernel[(triton.cdiv(w.shape[0], 2 * block_r),)](
        x, w, bias if bias is not None else w, out, w.shape[1], w.shape[0],
        HAS_BIAS=bias is not None, BLOCK_R=block_r, BLOCK_K=block_k, num_warps=warps, **pdl_launch(x.device),
    )
    return out


def _gate_up(layer: DecodeLayer, x: torch.Tensor, residual: torch.Tensor):
    w, bias = layer.mlp.gate_up_proj.weight, layer.mlp.gate_up_proj.bias
    inter = w.shape[0] // 2
    block_r, block_k, warps = _tiles(inter, w.shape[1], x.device)
    out = torch.empty((1, inter), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x)
    _gate_up_kernel[(triton.cdiv(inter, block_r),)](
        x, residual, res_out, layer.post_norm.weight, w, bias if bias is not None else w, out,
        x.shape[1], inter, layer.post_norm.eps,
        HAS_BIAS=bias is not None, BLOCK_R=block_r, BLOCK_K=block_k, num_warps=warps, **pdl_launch(x.device),
    )
    return out, res_out


def run(layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, residual: torch.Tensor | None):
    """DecoderLayer.forward for a one-sequence decode step: (mlp output, residual). Under tensor
    parallelism the layer holds this rank's heads and MLP slice, and the row-parallel outputs
    are summed over the ranks before the next norm (and the next layer) reads them."""
    if residual is None:  # the whole hidden state: maybe a 4-bit layer's fp32 stream (w4a16_decode)
        x = x.to(layer.input_norm.weight.dtype)
    x = x.contiguous()
    q, residual = _qkv(layer, step, x, residual)
    attn, down = layer.attn, layer.mlp.down_proj
    out = paged_decode_attention(q, layer.k_cache, layer.v_cache, step.block_tables, step.context_lens, attn.scale,
                                 attn.sliding_window)
    hidden = _linear(attn.o_proj, out.view(1, -1))
    if attn.o_proj.reduce is not None:
        hidden = attn.o_proj.reduce(hidden)
    act, residual = _gate_up(layer, hidden, residual)
    out = _linear(down, act)
    return (out if down.reduce is None else down.reduce(out)), residual
