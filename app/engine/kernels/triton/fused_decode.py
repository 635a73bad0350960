"""Decoder layers for small decode batches (up to 16 sequences) in five launches instead of eleven.

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
Batch rows are padded to 16 for tl.dot; a single row takes a reduction instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from app.engine.kernels.triton._common import dot_in_fp32, gdc_launch_dependents, gdc_wait, interpreting, next_pow2, pdl_launch, sm_count
from app.engine.kernels.triton.decode_attention import paged_decode_attention

MAX_BATCH = 16


@triton.jit
def _load_input(x_ptr, res_ptr, m, k, M, K, stride_x, stride_r, HAS_RES: tl.constexpr):
    """x (+ residual, rounded to x's dtype) for rows m, columns k, as fp32."""
    mask = (m < M)[:, None] & (k < K)[None, :]
    x = tl.load(x_ptr + m[:, None] * stride_x + k[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + m[:, None] * stride_r + k[None, :], mask=mask, other=0.0).to(tl.float32)
        x = (x + r).to(x_ptr.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _inv_rms(x_ptr, res_ptr, res_out_ptr, store_res, m, M, K, stride_x, stride_r, eps,
             HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """1 / rms of each row of x + residual; stores that sum to res_out where store_res."""
    squares = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = _load_input(x_ptr, res_ptr, m, k, M, K, stride_x, stride_r, HAS_RES)
        if HAS_RES:
            mask = (m < M)[:, None] & (k < K)[None, :] & store_res
            tl.store(res_out_ptr + m[:, None] * K + k[None, :], x.to(res_out_ptr.dtype.element_ty), mask=mask)
        squares += tl.sum(x * x, axis=1)
    return tl.rsqrt(squares / K + eps)


@triton.jit
def _load_weights(w_ptr, rows_a, rows_b, k, K, N, stride_w):
    """Two [BLOCK_R, BLOCK_K] weight tiles; rows past N and columns past K read as zero (no traffic)."""
    k_ok = (k < K)[None, :]
    w_a = tl.load(w_ptr + rows_a[:, None] * stride_w + k[None, :], mask=(rows_a < N)[:, None] & k_ok, other=0.0)
    w_b = tl.load(w_ptr + rows_b[:, None] * stride_w + k[None, :], mask=(rows_b < N)[:, None] & k_ok, other=0.0)
    return w_a, w_b


@triton.jit
def _matvec_pair(x_ptr, res_ptr, res_out_ptr, norm_ptr, eps, w_ptr, rows_a, rows_b, m, M, K, N,
                 stride_x, stride_r, stride_w,
                 NORM: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr, PDL: tl.constexpr):
    """(x' @ W[rows_a]^T, x' @ W[rows_b]^T) in fp32, [BLOCK_M, BLOCK_R] each, where x' is x or
    RMSNorm(x + residual) * norm weight (program 0 storing x + residual to res_out). Rows at or
    past N read as zero.

    The first weight tiles load before waiting on the previous kernel (PDL: programmatic dependent
    launch), so they stream in while it finishes; each later tile loads one step ahead. One batch
    row: products accumulate elementwise and reduce once at the end (no shuffles in the loop)."""
    w_a, w_b = _load_weights(w_ptr, rows_a, rows_b, tl.arange(0, BLOCK_K), K, N, stride_w)
    if PDL:
        gdc_wait()
    if NORM:
        inv = _inv_rms(x_ptr, res_ptr, res_out_ptr, tl.program_id(0) == 0, m, M, K, stride_x, stride_r, eps,
                       HAS_RES, BLOCK_M, BLOCK_K)
    if BLOCK_M >= 16:
        acc_a = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
        acc_b = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    else:
        part_a = tl.zeros([BLOCK_R, BLOCK_K], tl.float32)
        part_b = tl.zeros([BLOCK_R, BLOCK_K], tl.float32)
    dtype = w_ptr.dtype.element_ty
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = _load_input(x_ptr, res_ptr, m, k, M, K, stride_x, stride_r, HAS_RES)
        if NORM:
            weight = tl.load(norm_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            x = ((x * inv[:, None]).to(dtype).to(tl.float32) * weight[None, :])
        if BLOCK_M >= 16:
            if DOT_FP32:
                xd = x.to(dtype).to(tl.float32)
                wa = w_a.to(tl.float32)
                wb = w_b.to(tl.float32)
            else:
                xd = x.to(dtype)
                wa = w_a
                wb = w_b
            acc_a = tl.dot(xd, tl.trans(wa), acc_a, input_precision="ieee")
            acc_b = tl.dot(xd, tl.trans(wb), acc_b, input_precision="ieee")
        else:
            xd = x.to(dtype).to(tl.float32)  # [1, BLOCK_K]
            part_a += w_a.to(tl.float32) * xd
            part_b += w_b.to(tl.float32) * xd
        w_a, w_b = _load_weights(w_ptr, rows_a, rows_b, k + BLOCK_K, K, N, stride_w)
    if BLOCK_M < 16:
        acc_a = tl.sum(part_a, axis=1)[None, :]
        acc_b = tl.sum(part_b, axis=1)[None, :]
    return acc_a, acc_b


@triton.jit
def _linear_out(acc, b_ptr, rows, N, HAS_BIAS: tl.constexpr):
    """A linear's output as the unfused path has it: + bias, rounded to the model dtype (fp32
    values). b_ptr is the bias, or (without one) any tensor of the model dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[None, :]
    return acc.to(b_ptr.dtype.element_ty).to(tl.float32)


@triton.jit(do_not_specialize=["M"])
def _qkv_kernel(
    x_ptr, res_ptr, res_out_ptr, norm_ptr, w_ptr, b_ptr, q_norm_ptr, k_norm_ptr,
    cos_ptr, sin_ptr, slots_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
    M, K, eps, stride_x, stride_r, stride_w, stride_cos, stride_sin, stride_q,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, QK_NORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program = BLOCK_R column pairs (j, j + HALF) of one head of q, k or v."""
    pid = tl.program_id(0)
    per_head = HALF // BLOCK_R
    head = pid // per_head
    j = (pid % per_head) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = tl.arange(0, BLOCK_M)
    n = (HQ + 2 * HKV) * 2 * HALF
    dtype = w_ptr.dtype.element_ty
    if PDL:
        gdc_launch_dependents()
    lo_rows = head * 2 * HALF + j
    hi_rows = lo_rows + HALF
    lo, hi = _matvec_pair(x_ptr, res_ptr, res_out_ptr, norm_ptr, eps, w_ptr, lo_rows, hi_rows, m, M, K, n,
                          stride_x, stride_r, stride_w, True, HAS_RES, BLOCK_M, BLOCK_R, BLOCK_K, DOT_FP32, PDL)
    lo = _linear_out(lo, b_ptr, lo_rows, n, HAS_BIAS)
    hi = _linear_out(hi, b_ptr, hi_rows, n, HAS_BIAS)
    m_ok = m < M
    if head < HQ + HKV:  # q or k: (per-head norm), then rotary
        if QK_NORM:  # BLOCK_R == HALF: the program holds the whole head
            head_inv = tl.rsqrt((tl.sum(lo * lo, axis=1) + tl.sum(hi * hi, axis=1)) / (2 * HALF) + eps)
            if head < HQ:
                w_lo = tl.load(q_norm_ptr + j).to(tl.float32)
                w_hi = tl.load(q_norm_ptr + HALF + j).to(tl.float32)
            else:
                w_lo = tl.load(k_norm_ptr + j).to(tl.float32)
                w_hi = tl.load(k_norm_ptr + HALF + j).to(tl.float32)
            lo = ((lo * head_inv[:, None]).to(dtype).to(tl.float32) * w_lo[None, :]).to(dtype).to(tl.float32)
            hi = ((hi * head_inv[:, None]).to(dtype).to(tl.float32) * w_hi[None, :]).to(dtype).to(tl.float32)
        c = tl.load(cos_ptr + m[:, None] * stride_cos + j[None, :], mask=m_ok[:, None], other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + m[:, None] * stride_sin + j[None, :], mask=m_ok[:, None], other=0.0).to(tl.float32)
        lo, hi = lo * c - hi * s, hi * c + lo * s
    if head < HQ:
        q = q_out_ptr + m[:, None] * stride_q + head * 2 * HALF + j[None, :]
        tl.store(q, lo.to(q_out_ptr.dtype.element_ty), mask=m_ok[:, None])
        tl.store(q + HALF, hi.to(q_out_ptr.dtype.element_ty), mask=m_ok[:, None])
    else:
        slot = tl.load(slots_ptr + m, mask=m_ok, other=-1).to(tl.int64)
        ok = (m_ok & (slot >= 0))[:, None]  # a negative slot is CUDA-graph padding: write nowhere
        block, offset = slot // BLOCK_SIZE, slot % BLOCK_SIZE
        if head < HQ + HKV:
            dst = k_cache_ptr + (block * stride_kb + offset * stride_ks + (head - HQ) * stride_kh)[:, None] + j[None, :]
        else:
            dst = v_cache_ptr + (block * stride_vb + offset * stride_vs + (head - HQ - HKV) * stride_vh)[:, None] + j[None, :]
        tl.store(dst, lo.to(k_cache_ptr.dtype.element_ty), mask=ok)
        tl.store(dst + HALF, hi.to(k_cache_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["M"])
def _gate_up_kernel(
    x_ptr, res_ptr, res_out_ptr, norm_ptr, w_ptr, b_ptr, out_ptr,
    M, K, inter, eps, stride_x, stride_r, stride_w, stride_o,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr, PDL: tl.constexpr,
):
    """Program = BLOCK_R activations: gate rows n and up rows inter + n."""
    pid = tl.program_id(0)
    m = tl.arange(0, BLOCK_M)
    n = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    dtype = w_ptr.dtype.element_ty
    if PDL:
        gdc_launch_dependents()
    up_rows = tl.where(n < inter, inter + n, 2 * inter)  # past the end: masked, like n itself
    gate, up = _matvec_pair(x_ptr, res_ptr, res_out_ptr, norm_ptr, eps, w_ptr, n, up_rows, m, M, K, 2 * inter,
                            stride_x, stride_r, stride_w, True, True, BLOCK_M, BLOCK_R, BLOCK_K, DOT_FP32, PDL)
    gate = _linear_out(gate, b_ptr, n, inter, HAS_BIAS)
    up = _linear_out(up, b_ptr, up_rows, 2 * inter, HAS_BIAS)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + m[:, None] * stride_o + n[None, :], y.to(out_ptr.dtype.element_ty),
             mask=(m < M)[:, None] & (n < inter)[None, :])


@triton.jit(do_not_specialize=["M"])
def _linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, K, N, stride_x, stride_w, stride_o,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr, PDL: tl.constexpr,
):
    """Program = 2 * BLOCK_R consecutive output columns of x @ W^T (+ bias)."""
    pid = tl.program_id(0)
    m = tl.arange(0, BLOCK_M)
    rows_a = pid * 2 * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_b = rows_a + BLOCK_R
    dtype = w_ptr.dtype.element_ty
    if PDL:
        gdc_launch_dependents()
    a, b = _matvec_pair(x_ptr, x_ptr, x_ptr, x_ptr, 0.0, w_ptr, rows_a, rows_b, m, M, K, N, stride_x, 0, stride_w,
                        False, False, BLOCK_M, BLOCK_R, BLOCK_K, DOT_FP32, PDL)
    a = _linear_out(a, b_ptr, rows_a, N, HAS_BIAS)
    b = _linear_out(b, b_ptr, rows_b, N, HAS_BIAS)
    m_ok = (m < M)[:, None]
    tl.store(out_ptr + m[:, None] * stride_o + rows_a[None, :], a.to(out_ptr.dtype.element_ty),
             mask=m_ok & (rows_a < N)[None, :])
    tl.store(out_ptr + m[:, None] * stride_o + rows_b[None, :], b.to(out_ptr.dtype.element_ty),
             mask=m_ok & (rows_b < N)[None, :])


# ---- host side -------------------------------------------------------------------------------

# Launch shapes, from benchmarks/gpu_fused_decode_sweep.py on an H100 (bf16, batch 1): short
# rows (K <= 2048) want small tiles and 8 warps, long ones larger tiles and 4.
TILES = {"programs_per_sm": 4, "tile_elements": None, "num_warps": None}


def _tiles(rows: int, out_pairs: int, k: int, device: torch.device, block_r: int | None = None):
    """(BLOCK_M, BLOCK_R, BLOCK_K, num_warps) for `rows` batch rows and `out_pairs` output row
    pairs over `k` inputs: enough programs to give every SM a few, and W tiles (held in
    registers) of a size that suits the row length. A given block_r is kept."""
    short = k <= 2048
    tile_elements = TILES["tile_elements"] or (2048 if short else 4096)
    num_warps = TILES["num_warps"] or (8 if short else 4)
    if rows == 1:
        block_m = 1
        wanted = out_pairs // (TILES["programs_per_sm"] * sm_count(device))
        block_r = block_r or max(2, min(16, next_pow2(max(1, wanted))))
    else:
        block_m, block_r = 16, block_r or 16  # tl.dot's smallest tile
    block_k = min(next_pow2(k), max(16, tile_elements // block_r))
    if interpreting():
        block_k = min(block_k, 64)  # several K steps even on tiny test shapes
    return block_m, block_r, block_k, num_warps


@dataclass
class DecodeStep:
    """One decode step's per-token inputs, shared by every layer."""

    cos: torch.Tensor  # [M, head_dim / 2]
    sin: torch.Tensor
    slots: torch.Tensor  # [M] cache slot of each new token (negative: padding)
    block_tables: torch.Tensor  # [M, max_blocks]
    context_lens: torch.Tensor  # [M]


def decode_step(cos, sin, slots, block_tables, context_lens) -> DecodeStep | None:
    """The step, or None when the batch is too large for these kernels (the per-op path serves)."""
    if cos.shape[0] > MAX_BATCH:
        return None
    return DecodeStep(cos.contiguous(), sin.contiguous(), slots, block_tables, context_lens)


class DecodeLayer:
    """One DecoderLayer's weights and cache, checked once, for :func:`run`."""

    def __init__(self, layer, k_cache: torch.Tensor, v_cache: torch.Tensor):
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        if any(lin.weight is None or lin.weight.stride(-1) != 1 for lin in linears):
            raise ValueError("the fused decode layer needs dense row-major linear weights")
        half = attn.head_dim // 2
        if attn.head_dim & (attn.head_dim - 1) or half < 16:
            raise ValueError("the fused decode layer needs a power-of-two head size of at least 32")
        if k_cache.shape[2] != attn.num_kv_heads or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
            raise ValueError("the KV cache does not fit the fused decode layer")
        self.attn, self.mlp = attn, mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.k_cache, self.v_cache = k_cache, v_cache
        self.half = half


def _qkv(layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, residual: torch.Tensor | None):
    attn, rows = layer.attn, x.shape[0]
    heads = attn.num_heads + 2 * attn.num_kv_heads
    qk_norm = attn.q_norm is not None
    block_r = layer.half if qk_norm else None  # q/k norm: a program holds whole heads
    block_m, block_r, block_k, warps = _tiles(rows, heads * layer.half, x.shape[1], x.device, block_r)
    block_r = min(block_r, layer.half)
    q = torch.empty((rows, attn.num_heads, attn.head_dim), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x) if residual is not None else x
    w, bias = attn.qkv_proj.weight, attn.qkv_proj.bias
    kc, vc = layer.k_cache, layer.v_cache
    _qkv_kernel[(heads * (layer.half // block_r),)](
        x, residual if residual is not None else x, res_out, layer.input_norm.weight, w,
        bias if bias is not None else w, attn.q_norm.weight if qk_norm else w, attn.k_norm.weight if qk_norm else w,
        step.cos, step.sin, step.slots, q, kc, vc,
        rows, x.shape[1], layer.input_norm.eps, x.stride(0), residual.stride(0) if residual is not None else 0,
        w.stride(0), step.cos.stride(0), step.sin.stride(0), q.stride(0),
        kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
        HQ=attn.num_heads, HKV=attn.num_kv_heads, HALF=layer.half, BLOCK_SIZE=kc.shape[1],
        HAS_RES=residual is not None, HAS_BIAS=bias is not None, QK_NORM=qk_norm,
        BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k, DOT_FP32=dot_in_fp32(x.dtype), num_warps=warps,
        **pdl_launch(x.device),
    )
    return q, res_out


def _linear(linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.shape[0]
    w, bias = linear.weight, linear.bias
    block_m, block_r, block_k, warps = _tiles(rows, w.shape[0] // 2, w.shape[1], x.device)
    out = torch.empty((rows, w.shape[0]), dtype=x.dtype, device=x.device)
    _linear_kernel[(triton.cdiv(w.shape[0], 2 * block_r),)](
        x, w, bias if bias is not None else w, out, rows, w.shape[1], w.shape[0], x.stride(0), w.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k,
        DOT_FP32=dot_in_fp32(x.dtype), num_warps=warps, **pdl_launch(x.device),
    )
    return out


def _gate_up(layer: DecodeLayer, x: torch.Tensor, residual: torch.Tensor):
    rows = x.shape[0]
    w, bias = layer.mlp.gate_up_proj.weight, layer.mlp.gate_up_proj.bias
    inter = w.shape[0] // 2
    block_m, block_r, block_k, warps = _tiles(rows, inter, w.shape[1], x.device)
    out = torch.empty((rows, inter), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x)
    _gate_up_kernel[(triton.cdiv(inter, block_r),)](
        x, residual, res_out, layer.post_norm.weight, w, bias if bias is not None else w, out,
        rows, x.shape[1], inter, layer.post_norm.eps, x.stride(0), residual.stride(0), w.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k,
        DOT_FP32=dot_in_fp32(x.dtype), num_warps=warps, **pdl_launch(x.device),
    )
    return out, res_out


def run(layer: DecodeLayer, step: DecodeStep, x: torch.Tensor, residual: torch.Tensor | None):
    """DecoderLayer.forward for a decode-only step: (mlp output, residual)."""
    x = x.contiguous()
    q, residual = _qkv(layer, step, x, residual)
    attn = layer.attn
    out = paged_decode_attention(q, layer.k_cache, layer.v_cache, step.block_tables, step.context_lens, attn.scale,
                                 attn.sliding_window)
    hidden = _linear(attn.o_proj, out.view(x.shape[0], -1))
    act, residual = _gate_up(layer, hidden, residual)
    return _linear(layer.mlp.down_proj, act), residual
