"""Paged attention for prefill chunks: a flash-attention style tiled kernel over the paged cache.

q is a flat varlen batch; each sequence's new tokens are already in the cache and are its last
query_len positions, so query j of sequence i sits at position context_len - query_len + j and sees
cache positions 0..that position (and only the last `sliding_window` of them with a window). That
covers fresh prompts, chunked prefill and prefix-cache hits alike.

GQA: a program's BLOCK_M rows are (query, head) pairs of the G query heads of one KV head,
flattened query-major, so every K/V tile read serves all G heads; there is no padding for any G.
Grid (row blocks, sequence, kv head); the row blocks run last-first, the longest first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from app.engine import kv_quant
from app.engine.kernels.triton._common import cdiv, dot_in_fp32, interpreting
from app.engine.kernels.triton.kv_rows import load_quantized_rows, load_rows, tile_blocks

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    q, m_i, l_i, acc, start, qpos, hi, window, qk_scale,
    table, k_base, v_base, stride_kb, stride_ks, stride_vb, stride_vs, k_params, v_params, stride_ps,
    own_first, k_new_base, v_new_base, stride_knt, stride_vnt,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, SLIDING: tl.constexpr, DOT_FP32: tl.constexpr, BITS: tl.constexpr,
    UNIT_BITS: tl.constexpr,
):
    """One key tile [start, start + BLOCK_N) into the running softmax of every row. A quantized
    cache's rows at positions from own_first on (this chunk's own tokens) are taken from the exact
    keys and values the step computed (k_new / v_new rows from the chunk's first) instead; its
    integers are at k_base / v_base (slots stride_ks apart), its pairs at k_params / v_params
    (stride_ps apart)."""
    pos = start + tl.arange(0, BLOCK_N)
    in_range = pos < hi
    block = tile_blocks(table, start, pos, in_range, BLOCK_SIZE, BLOCK_N)
    # Unmasked off the diagonal: the whole tile lies below every row's, inside the context.
    k_off = block * stride_kb + (pos % BLOCK_SIZE) * stride_ks
    v_off = block * stride_vb + (pos % BLOCK_SIZE) * stride_vs
    if BITS == 0:
        k = load_rows(k_base, k_off, in_range, HEAD_DIM, CAUSAL)
        v = load_rows(v_base, v_off, in_range, HEAD_DIM, CAUSAL)
    else:
        param_off = block * stride_kb + (pos % BLOCK_SIZE) * stride_ps
        k = load_quantized_rows(k_base, k_off, k_params, param_off, in_range, HEAD_DIM, BITS, UNIT_BITS)
        v = load_quantized_rows(v_base, v_off, v_params, param_off, in_range, HEAD_DIM, BITS, UNIT_BITS)
        own = in_range & (pos >= own_first)
        d = tl.arange(0, HEAD_DIM)
        row = (pos - own_first).to(tl.int64)
        k_own = tl.load(k_new_base + row[:, None] * stride_knt + d[None, :], mask=own[:, None], other=0.0)
        v_own = tl.load(v_new_base + row[:, None] * stride_vnt + d[None, :], mask=own[:, None], other=0.0)
        k = tl.where(own[:, None], k_own.to(tl.float32), k)
        v = tl.where(own[:, None], v_own.to(tl.float32), v)
    k = k.to(q.dtype)  # (a quantized cache dequantizes to fp32; q is fp32 under DOT_FP32)
    v = v.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
    if CAUSAL:
        s = tl.where(pos[None, :] <= qpos[:, None], s, float("-inf"))
    if SLIDING:
        s = tl.where(pos[None, :] > qpos[:, None] - window, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # A row may see nothing in this tile (window or diagonal): keep its sums at zero, not NaN.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    prob = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(prob, axis=1)
    acc = acc * alpha[:, None] + tl.dot(prob.to(v.dtype), v, input_precision="ieee")
    return m_new, l_i, acc


# The tables, starts and lengths are row slices of the batch's (after its decodes): their
# alignment and the tables' width change every step, so neither may pick a compiled variant.
@triton.jit(do_not_specialize=["window", "stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "query_start_loc_ptr", "context_lens_ptr"])
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, context_lens_ptr, out_ptr,
    k_new_ptr, v_new_ptr,
    qk_scale, window,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, params_at, stride_ps,
    stride_bt, stride_ot, stride_oh,
    stride_knt, stride_knh, stride_vnt, stride_vnh,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SLIDING: tl.constexpr, DOT_FP32: tl.constexpr,
    BITS: tl.constexpr, UNIT_BITS: tl.constexpr,
):
    row_block = tl.num_programs(0) - 1 - tl.program_id(0)
    seq = tl.program_id(1).to(tl.int64)
    kvh = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq).to(tl.int32)
    q_len = tl.load(query_start_loc_ptr + seq + 1).to(tl.int32) - q_start
    ctx = tl.load(context_lens_ptr + seq).to(tl.int32)
    n_rows = q_len * G
    row0 = row_block * BLOCK_M
    if row0 >= n_rows:
        return

    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    qi = rows // G
    head = kvh * G + rows % G
    qpos = ctx - q_len + qi
    d = tl.arange(0, HEAD_DIM)
    q_off = (q_start + qi).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    pos_first = ctx - q_len + row0 // G  # the first row's position; the others are later
    hi = ctx - q_len + (tl.minimum(row0 + BLOCK_M, n_rows) - 1) // G + 1
    lo = 0
    if SLIDING:
        lo = (tl.maximum(pos_first - window + 1, 0) // BLOCK_N) * BLOCK_N
    mid = tl.maximum(((pos_first + 1) // BLOCK_N) * BLOCK_N, lo)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table = block_tables_ptr + seq * stride_bt
    k_base = k_cache_ptr + kvh * stride_kh
    v_base = v_cache_ptr + kvh * stride_vh
    k_params = k_cache_ptr + params_at + kvh * 4  # (quantized caches: kv_quant.block_parts)
    v_params = v_cache_ptr + params_at + kvh * 4
    own_first = ctx - q_len  # this chunk's tokens: their exact keys and values (quantized caches)
    k_new_base = k_new_ptr + q_start.to(tl.int64) * stride_knt + kvh * stride_knh
    v_new_base = v_new_ptr + q_start.to(tl.int64) * stride_vnt + kvh * stride_vnh
    # Below the first row's diagonal: no causal mask. From there up to the last row: masked.
    for start in range(lo, mid, BLOCK_N):
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, start, qpos, hi, window, qk_scale,
            table, k_base, v_base, stride_kb, stride_ks, stride_vb, stride_vs, k_params, v_params, stride_ps,
            own_first, k_new_base, v_new_base, stride_knt, stride_vnt,
            HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, SLIDING, DOT_FP32, BITS, UNIT_BITS,
        )
    for start in range(mid, hi, BLOCK_N):
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, start, qpos, hi, window, qk_scale,
            table, k_base, v_base, stride_kb, stride_ks, stride_vb, stride_vs, k_params, v_params, stride_ps,
            own_first, k_new_base, v_new_base, stride_knt, stride_vnt,
            HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, SLIDING, DOT_FP32, BITS, UNIT_BITS,
        )

    l_i = tl.where(l_i > 0, l_i, 1.0)
    o_off = (q_start + qi).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(out_ptr + o_off, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _tiles(dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head dim, from a sweep on an H100 (bf16,
    H=32, KVH=8, causal 4k, 4x1k and 512 over 8k context)."""
    if interpreting():
        return 32, 16, 4, 1
    if dim <= 64:
        return 64, 64, 4, 3
    if dim <= 128:
        return 64, 64, 4, 2
    return 64, 32, 4, 3


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    *,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    bits: int = 0,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of S sequences' new tokens over their paged context.

    q: [T, H, D] (unit last stride; rows indexed by query_start_loc, which need not start at 0);
    caches: [num_blocks, block_size, KVH, D]; block_tables: [S, max_blocks] int; query_start_loc:
    [S + 1] int32 cumulative; context_lens: [S] int (>= that sequence's query length);
    max_query_len: a host-side upper bound on the query lengths. Returns [T, H, D] in q's dtype
    (rows of q outside the S sequences are left unwritten in `out`). A uint8 cache holds int8/int4
    rows (app/engine/kv_quant.py); ``bits`` is for the recursive call that runs on them, q turned.
    With one, ``k_new`` / ``v_new`` [T, KVH, D] (this step's keys and values, rows as q's) are
    required: each chunk attends to its own tokens' exact ones, to earlier tokens' quantized rows.
    """
    tokens, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    assert heads % kv_heads == 0 and dim >= 16 and dim & (dim - 1) == 0, "H = G * KVH, D a power of two >= 16"
    if k_cache.dtype == torch.uint8 and not bits:  # rows hold k R and v R: turn q now, the output after
        turn = kv_quant.rotation(dim, q.device)
        if k_new is None or v_new is None:
            raise ValueError("a quantized cache's prefill needs the step's own keys and values (k_new, v_new)")
        turned = paged_prefill_attention((q.float() @ turn).to(q.dtype), k_cache, v_cache, block_tables,
                                         query_start_loc, context_lens, max_query_len, scale, sliding_window,
                                         block_m=block_m, block_n=block_n, bits=kv_quant.bits_of(k_cache, dim),
                                         k_new=(k_new.float() @ turn).to(q.dtype),
                                         v_new=(v_new.float() @ turn).to(q.dtype))
        result = (turned.float() @ turn).to(q.dtype)
        if out is None:
            return result
        row = torch.arange(tokens, device=q.device)[:, None, None]  # only the sequences' rows (device-side)
        ours = (row >= query_start_loc[0]) & (row < query_start_loc[-1])
        return out.copy_(torch.where(ours, result, out))
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    group = heads // kv_heads
    seqs = query_start_loc.shape[0] - 1
    if out is None:
        out = torch.empty((tokens, heads, dim), dtype=q.dtype, device=q.device)
    if seqs <= 0 or max_query_len <= 0:
        return out
    bm, bn, num_warps, num_stages = _tiles(dim)
    bm, bn = block_m or bm, block_n or bn
    k_new = q if k_new is None else k_new  # (float caches: unread)
    v_new = q if v_new is None else v_new
    if bits:  # a block's integers, [slot, head] rows of `data` bytes, then its pairs (kv_quant.block_parts)
        assert k_cache.stride() == v_cache.stride() and k_cache.is_contiguous(), "quantized caches: alike, contiguous"
        data = dim * bits // 8
        k_strides = v_strides = (k_cache.stride(0), kv_heads * data, data)
        params = (block_size * kv_heads * data, kv_heads * kv_quant.PARAM_BYTES)
    else:
        k_strides, v_strides, params = k_cache.stride()[:3], v_cache.stride()[:3], (0, 0)
    _prefill_kernel[(cdiv(max_query_len * group, bm), seqs, kv_heads)](
        q, k_cache, v_cache, block_tables, query_start_loc, context_lens, out, k_new, v_new,
        scale * LOG2E, sliding_window or 0,
        q.stride(0), q.stride(1), *k_strides, *v_strides, *params,
        block_tables.stride(0), out.stride(0), out.stride(1),
        k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        G=group, HEAD_DIM=dim, BLOCK_SIZE=block_size, BLOCK_M=bm, BLOCK_N=bn,
        SLIDING=sliding_window is not None, DOT_FP32=dot_in_fp32(q.dtype), BITS=bits,
        UNIT_BITS=kv_quant.Packing.of(dim, bits).unit_bits if bits else 0,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
