"""Paged attention for decodes (one query per sequence), split-K ("flash decoding").

Grid (sequence, kv head, partition slot): each program takes the G = H / KVH query heads that share
one KV head (one [G, D] tile, padded to 16 rows for the tensor cores) over one partition of the
context, so each K/V element is read once per step. With more than one partition slot, programs
write a normalised partial output and its log-sum-exp, and a second small kernel merges them.

Each row sizes its own partitions on the device from its own length: about `wanted` partitions
(enough programs to fill every SM), each a multiple of the key tile within [min_partition,
max_partition]. So a short row is not cut into slivers because another row (or a CUDA graph's
capacity) is long, and a long row is split whatever max_context_len says. The grid depends only on
host ints (batch size, max_context_len): nothing synchronises with the host, and a captured graph
stays right for any lengths up to max_context_len; slots past a row's partitions exit at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from app.engine import kv_quant
from app.engine.kernels.triton._common import (
    cdiv, dot_in_fp32, gdc_launch_dependents, gdc_wait, next_pow2, pdl_launch, sm_count,
)
from app.engine.kernels.triton.kv_rows import load_params, load_rows, load_units, plane, plane_fp16, tile_blocks

LOG2E = 1.4426950408889634
MIN_PARTITION = 64  # tokens; shorter partitions cost more in merging than they gain in parallelism
MAX_PARTITION = 1024  # bounds the straggler when one long row meets many short ones
PROGRAMS_PER_SM = 2  # split rows until about this many programs per SM are busy (H100 sweep)


@triton.jit
def _partition_of(span, wanted, min_partition, max_partition, BLOCK_N: tl.constexpr):
    """Tokens per partition for a row with `span` visible keys."""
    size = tl.cdiv(tl.cdiv(span, wanted), BLOCK_N) * BLOCK_N
    return tl.minimum(tl.maximum(size, min_partition), max_partition)


@triton.jit
def _program(context_lens_ptr, window, wanted, min_partition, max_partition,
             SLIDING: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    """A partition program's (row, kv head, partition slot) and keys [lo, hi). Launched early
    (programmatic dependent launch), it first lets the next kernel launch and waits for q."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    p = tl.program_id(2)
    length = tl.load(context_lens_ptr + b).to(tl.int32)
    first = 0
    if SLIDING:
        first = tl.maximum(length - window, 0)
    # Partitions start at the first visible key: with a window, the grid needs slots for the
    # window only, however long the context.
    size = _partition_of(length - first, wanted, min_partition, max_partition, BLOCK_N)
    lo = first + p * size
    return b, kvh, p, lo, tl.minimum(lo + size, length)


@triton.jit(do_not_specialize=["window", "num_slots", "wanted", "stride_bt"])
def _decode_partition_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale, window, num_slots, wanted, min_partition, max_partition,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt, stride_ob, stride_oh,
    G: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, SLIDING: tl.constexpr, SPLIT: tl.constexpr, DOT_FP32: tl.constexpr,
    PDL: tl.constexpr,
):
    b, kvh, p, lo, hi = _program(context_lens_ptr, window, wanted, min_partition, max_partition,
                                 SLIDING, BLOCK_N, PDL)
    if SPLIT:
        if lo >= hi:  # nothing of this row here; the merge knows and skips it
            return

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, HEAD_DIM)
    head = kvh * G + g
    g_ok = g < G
    q = tl.load(q_ptr + b * stride_qb + head[:, None] * stride_qh + d[None, :], mask=g_ok[:, None], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, HEAD_DIM], tl.float32)
    table = block_tables_ptr + b * stride_bt
    k_base = k_cache_ptr + kvh * stride_kh
    v_base = v_cache_ptr + kvh * stride_vh
    # Tiles start BLOCK_N-aligned (so a tile never straddles two cache blocks when BLOCK_N <=
    # BLOCK_SIZE); each one holds at least one visible key, so the running max is finite after it.
    for start in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        visible = (pos >= lo) & (pos < hi)
        block = tile_blocks(table, start, pos, visible, BLOCK_SIZE, BLOCK_N)
        k = load_rows(k_base, block * stride_kb + (pos % BLOCK_SIZE) * stride_ks, visible, HEAD_DIM, True)
        v = load_rows(v_base, block * stride_vb + (pos % BLOCK_SIZE) * stride_vs, visible, HEAD_DIM, True)
        k = k.to(q.dtype)  # (q is fp32 under DOT_FP32)
        v = v.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        s = tl.where(visible[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        prob = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(prob, axis=1)
        acc = acc * alpha[:, None] + tl.dot(prob.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    if SPLIT:
        row = (b * tl.num_programs(1) * G + head) * num_slots + p
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], acc / l_i[:, None], mask=g_ok[:, None])
        tl.store(part_lse_ptr + row, m_i + tl.log2(l_i), mask=g_ok)
    else:
        l_i = tl.where(l_i > 0, l_i, 1.0)  # an empty context (never in practice) gives zeros
        o = out_ptr + b * stride_ob + head[:, None] * stride_oh + d[None, :]
        tl.store(o, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=g_ok[:, None])


@triton.jit
def _plane_operand(units, f: tl.constexpr, BITS: tl.constexpr, FP16_OPERANDS: tl.constexpr, DOT_FP32: tl.constexpr):
    """Plane f as a dot operand: fp16 holding 1024 + n (no conversion instruction), or n."""
    if FP16_OPERANDS:
        x = plane_fp16(units, f, BITS)
    else:
        x = plane(units, f, BITS).to(tl.float32)
    if DOT_FP32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _query_slice(q_rows, g_ok, f: tl.constexpr, WIDTH: tl.constexpr, q_scale,
                 FP16_OPERANDS: tl.constexpr, DOT_FP32: tl.constexpr):
    """Query columns f * W .. f * W + W - 1, the elements plane f holds, as the dot's operand."""
    x = tl.load(q_rows + f * WIDTH + tl.arange(0, WIDTH)[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
    if FP16_OPERANDS:
        x = (x * q_scale).to(tl.float16)
    if DOT_FP32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _weigh_plane(acc, alpha, weights, units, f: tl.constexpr, BITS: tl.constexpr,
                 FP16_OPERANDS: tl.constexpr, DOT_FP32: tl.constexpr):
    v = _plane_operand(units, f, BITS, FP16_OPERANDS, DOT_FP32)
    return acc * alpha[:, None] + tl.dot(weights, v, input_precision="ieee")


@triton.jit
def _store_plane(out_rows, acc, shift, l_i, g_ok, f: tl.constexpr, WIDTH: tl.constexpr):
    """Output columns f * W .. of the heads at out_rows: the plane's weighted sum plus the term
    that every column shares."""
    o = (acc + shift[:, None]) / l_i[:, None]
    col = f * WIDTH + tl.arange(0, WIDTH)
    tl.store(out_rows + col[None, :], o.to(out_rows.dtype.element_ty), mask=g_ok[:, None])


@triton.jit(do_not_specialize=["window", "num_slots", "wanted", "stride_bt"])
def _decode_planes_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale, window, num_slots, wanted, min_partition, max_partition,
    stride_qb, stride_qh,
    stride_cb, stride_is, params_at, stride_ps,
    stride_bt, stride_ob, stride_oh,
    G: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, SLIDING: tl.constexpr, SPLIT: tl.constexpr, DOT_FP32: tl.constexpr,
    FP16_OPERANDS: tl.constexpr, BITS: tl.constexpr, UNIT_BITS: tl.constexpr, PDL: tl.constexpr,
):
    """_decode_partition_kernel over int8/int4 rows, plane by plane (kv_rows), with the rows'
    scales and minimums applied around the dots rather than to every element: a score is
    scale * (q·n) + min * Σq over the integers n, and the values' scales weigh the probabilities
    before their dot while their minimums add one term to every output column. With fp16
    operands the integers enter as 1024 + n, and 1024 x the other operand's sum is taken back.
    Both caches' blocks (kv_quant.block_parts) lie stride_cb bytes apart; in a block, the slots'
    integers stride_is bytes apart from its start, their pairs stride_ps apart from params_at."""
    b, kvh, p, lo, hi = _program(context_lens_ptr, window, wanted, min_partition, max_partition,
                                 SLIDING, BLOCK_N, PDL)
    if SPLIT:
        if lo >= hi:  # nothing of this row here; the merge knows and skips it
            return
    PLANES: tl.constexpr = UNIT_BITS // BITS
    WIDTH: tl.constexpr = HEAD_DIM // PLANES

    g = tl.arange(0, G_PAD)
    head = kvh * G + g
    g_ok = g < G
    q_rows = q_ptr + b * stride_qb + head[:, None] * stride_qh
    q = tl.load(q_rows + tl.arange(0, HEAD_DIM)[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
    q_scale = 1.0
    offset = 0.0
    if FP16_OPERANDS:  # q scaled by a power of two to a top of 2^14: fp16 keeps its precision, never overflows
        top = tl.max(tl.max(tl.abs(q), axis=1), axis=0)
        q_scale = tl.where(top > 0, tl.exp2(14.0 - tl.ceil(tl.log2(tl.maximum(top, 1e-30)))), 1.0)
        q = (q * q_scale).to(tl.float16).to(tl.float32)
        offset = 1024.0
    q_sum = tl.sum(q, axis=1)  # of the operands as the dots see them

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    shift = tl.zeros([G_PAD], tl.float32)  # sum over keys of p * (min - offset * scale): every column's
    acc0 = tl.zeros([G_PAD, WIDTH], tl.float32)
    acc1 = tl.zeros([G_PAD, WIDTH], tl.float32)
    acc2 = tl.zeros([G_PAD, WIDTH], tl.float32)
    acc3 = tl.zeros([G_PAD, WIDTH], tl.float32)
    acc4 = tl.zeros([G_PAD, WIDTH], tl.float32)
    acc5 = tl.zeros([G_PAD, WIDTH], tl.float32)
    acc6 = tl.zeros([G_PAD, WIDTH], tl.float32)
    acc7 = tl.zeros([G_PAD, WIDTH], tl.float32)
    table = block_tables_ptr + b * stride_bt
    DATA: tl.constexpr = HEAD_DIM * BITS // 8  # a row's integers, bytes
    k_ints, v_ints = k_cache_ptr + kvh * DATA, v_cache_ptr + kvh * DATA
    k_params, v_params = k_cache_ptr + params_at + kvh * 4, v_cache_ptr + params_at + kvh * 4
    for start in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        visible = (pos >= lo) & (pos < hi)
        block = tile_blocks(table, start, pos, visible, BLOCK_SIZE, BLOCK_N)
        int_off = block * stride_cb + (pos % BLOCK_SIZE) * stride_is
        param_off = block * stride_cb + (pos % BLOCK_SIZE) * stride_ps
        k_units = load_units(k_ints, int_off, visible, WIDTH, UNIT_BITS)
        k_scale, k_low = load_params(k_params, param_off, visible)
        s = tl.zeros([G_PAD, BLOCK_N], tl.float32)
        for f in tl.static_range(PLANES):
            s = tl.dot(_query_slice(q_rows, g_ok, f, WIDTH, q_scale, FP16_OPERANDS, DOT_FP32),
                       tl.trans(_plane_operand(k_units, f, BITS, FP16_OPERANDS, DOT_FP32)),
                       acc=s, input_precision="ieee")
        s = (k_scale[None, :] * (s - offset * q_sum[:, None]) + k_low[None, :] * q_sum[:, None]) * (qk_scale / q_scale)
        s = tl.where(visible[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        prob = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(prob, axis=1)

        v_units = load_units(v_ints, int_off, visible, WIDTH, UNIT_BITS)
        v_scale, v_low = load_params(v_params, param_off, visible)
        weights = prob * v_scale[None, :]
        if FP16_OPERANDS:
            weights = weights.to(tl.float16)
        shift = shift * alpha + tl.sum(prob * v_low[None, :] - offset * weights.to(tl.float32), axis=1)
        if DOT_FP32:
            weights = weights.to(tl.float32)
        acc0 = _weigh_plane(acc0, alpha, weights, v_units, 0, BITS, FP16_OPERANDS, DOT_FP32)
        if PLANES >= 2:
            acc1 = _weigh_plane(acc1, alpha, weights, v_units, 1, BITS, FP16_OPERANDS, DOT_FP32)
        if PLANES >= 4:
            acc2 = _weigh_plane(acc2, alpha, weights, v_units, 2, BITS, FP16_OPERANDS, DOT_FP32)
            acc3 = _weigh_plane(acc3, alpha, weights, v_units, 3, BITS, FP16_OPERANDS, DOT_FP32)
        if PLANES == 8:
            acc4 = _weigh_plane(acc4, alpha, weights, v_units, 4, BITS, FP16_OPERANDS, DOT_FP32)
            acc5 = _weigh_plane(acc5, alpha, weights, v_units, 5, BITS, FP16_OPERANDS, DOT_FP32)
            acc6 = _weigh_plane(acc6, alpha, weights, v_units, 6, BITS, FP16_OPERANDS, DOT_FP32)
            acc7 = _weigh_plane(acc7, alpha, weights, v_units, 7, BITS, FP16_OPERANDS, DOT_FP32)
        m_i = m_new

    if SPLIT:
        row = (b * tl.num_programs(1) * G + head) * num_slots + p
        out_rows = part_out_ptr + row[:, None] * HEAD_DIM
        tl.store(part_lse_ptr + row, m_i + tl.log2(l_i), mask=g_ok)
    else:
        l_i = tl.where(l_i > 0, l_i, 1.0)
        out_rows = out_ptr + b * stride_ob + head[:, None] * stride_oh
    _store_plane(out_rows, acc0, shift, l_i, g_ok, 0, WIDTH)
    if PLANES >= 2:
        _store_plane(out_rows, acc1, shift, l_i, g_ok, 1, WIDTH)
    if PLANES >= 4:
        _store_plane(out_rows, acc2, shift, l_i, g_ok, 2, WIDTH)
        _store_plane(out_rows, acc3, shift, l_i, g_ok, 3, WIDTH)
    if PLANES == 8:
        _store_plane(out_rows, acc4, shift, l_i, g_ok, 4, WIDTH)
        _store_plane(out_rows, acc5, shift, l_i, g_ok, 5, WIDTH)
        _store_plane(out_rows, acc6, shift, l_i, g_ok, 6, WIDTH)
        _store_plane(out_rows, acc7, shift, l_i, g_ok, 7, WIDTH)


@triton.jit(do_not_specialize=["window", "num_slots", "wanted"])
def _decode_merge_kernel(
    part_out_ptr, part_lse_ptr, context_lens_ptr, out_ptr,
    window, num_slots, wanted, min_partition, max_partition, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, SLIDING: tl.constexpr,
    PDL: tl.constexpr,
):
    """Merges one (row, head)'s partial outputs by their log-sum-exp (base 2)."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    length = tl.load(context_lens_ptr + b).to(tl.int32)
    first = 0
    if SLIDING:
        first = tl.maximum(length - window, 0)
    span = length - first
    used = tl.cdiv(span, _partition_of(span, wanted, min_partition, max_partition, BLOCK_N))
    row0 = (b * tl.num_programs(1) + h) * num_slots
    d = tl.arange(0, HEAD_DIM)
    top = tl.full([BLOCK_P], float("-inf"), tl.float32)
    for c in range(0, used, BLOCK_P):
        i = c + tl.arange(0, BLOCK_P)
        top = tl.maximum(top, tl.load(part_lse_ptr + row0 + i, mask=i < used, other=float("-inf")))
    best = tl.max(top, axis=0)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    total = tl.zeros([BLOCK_P], tl.float32)
    for c in range(0, used, BLOCK_P):
        i = c + tl.arange(0, BLOCK_P)
        ok = i < used
        lse = tl.load(part_lse_ptr + row0 + i, mask=ok, other=float("-inf"))
        w = tl.where(ok, tl.exp2(lse - best), 0.0)
        o = tl.load(part_out_ptr + (row0 + i)[:, None] * HEAD_DIM + d[None, :], mask=ok[:, None], other=0.0)
        acc += tl.sum(w[:, None] * o, axis=0)
        total += w
    norm = tl.sum(total, axis=0)
    result = tl.where(norm > 0, acc / tl.where(norm > 0, norm, 1.0), 0.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, result.to(out_ptr.dtype.element_ty))


def _launch_config(dim: int, bits: int = 0) -> tuple[int, int, int]:
    """(key tile, num_warps, num_stages) for a head dim; measured on an H100 (bf16, batch 1 and 64,
    contexts 4k-32k): the spread between sane choices is under 10%. Quantized rows (head size
    128, batch 64, 4k contexts; benchmarks/gpu_decode_attention.py --sweep): 64 keys on 2 warps
    took int8 263 us and int4 210, against 292 and 251 on 4 warps; 8 warps took twice as long."""
    if bits:
        return 64, 2, 3
    if dim <= 64:
        return 128, 4, 3
    if dim <= 128:
        return 64, 4, 2
    return 64, 8, 2


def split_plan(
    batch: int, kv_heads: int, span: int, device: torch.device, partition: int | None = None, tile: int = 64
) -> tuple[int, int, int, int]:
    """(wanted, min_partition, max_partition, slots): rows aim at `wanted` partitions, so that
    batch * kv_heads * wanted programs keep about PROGRAMS_PER_SM on every SM; `slots` (the grid's
    partition dim) is the most any row of up to `span` visible keys can need. A fixed `partition`
    makes every row use exactly that size. Host ints only."""
    if partition is not None:
        return 1, partition, partition, cdiv(span, partition)
    wanted = cdiv(PROGRAMS_PER_SM * sm_count(device), max(1, batch * kv_heads))
    low = max(MIN_PARTITION, tile)
    high = max(MAX_PARTITION, low)
    slots = max(min(wanted, cdiv(span, low)), cdiv(span, high), 1)
    return wanted, low, high, slots


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    max_context_len: int | None = None,
    partition: int | None = None,
    out: torch.Tensor | None = None,
    bits: int = 0,
) -> torch.Tensor:
    """Attention of one query per sequence over its cached keys 0..len-1 (the last `sliding_window`
    of them with a window). A uint8 cache holds int8/int4 rows (app/engine/kv_quant.py); ``bits``
    is for the recursive call that runs on them, with q turned.

    q: [B, H, D] (unit last stride); caches: [num_blocks, block_size, KVH, D]; block_tables:
    [B, max_blocks] int32/int64; context_lens: [B] int (>= 1). max_context_len: an upper bound on
    context_lens (default: the block tables' capacity); only the grid depends on it (and the
    workspace, B * H * slots * D floats). partition: a fixed number of tokens per partition (a
    multiple of 16) instead of the per-row sizing. Returns [B, H, D] in q's dtype.
    """
    batch, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    assert heads % kv_heads == 0 and dim >= 16 and dim & (dim - 1) == 0, "H = G * KVH, D a power of two >= 16"
    if k_cache.dtype == torch.uint8 and not bits:  # int8/int4 rows hold k R and v R: turn q now, the output after
        turn = kv_quant.rotation(dim, q.device)
        turned = paged_decode_attention((q.float() @ turn).to(q.dtype), k_cache, v_cache, block_tables,
                                        context_lens, scale, sliding_window, max_context_len=max_context_len,
                                        partition=partition, bits=kv_quant.bits_of(k_cache, dim))
        result = (turned.float() @ turn).to(q.dtype)
        return result if out is None else out.copy_(result)
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    assert partition is None or (partition > 0 and partition % 16 == 0), "partition: a multiple of 16 tokens"
    group = heads // kv_heads
    if out is None:
        out = torch.empty((batch, heads, dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    if max_context_len is None:
        max_context_len = block_tables.shape[1] * block_size
    window = sliding_window if sliding_window is not None and sliding_window < max_context_len else None
    span = max_context_len if window is None else window
    tile, num_warps, num_stages = _launch_config(dim, bits)
    block_n = tile if partition is None else min(partition & -partition, tile)
    wanted, low, high, slots = split_plan(batch, kv_heads, span, q.device, partition, block_n)
    split = slots > 1
    if split:
        part_out = torch.empty((batch, heads, slots, dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, heads, slots), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused
    if bits:
        assert k_cache.stride() == v_cache.stride() and k_cache.is_contiguous(), "quantized caches: alike, contiguous"
        data = dim * bits // 8
        kernel, cache_strides = _decode_planes_kernel, (
            k_cache.stride(0), kv_heads * data, block_size * kv_heads * data, kv_heads * kv_quant.PARAM_BYTES)
        quantized = {"BITS": bits, "UNIT_BITS": kv_quant.Packing.of(dim, bits).unit_bits,
                     "FP16_OPERANDS": q.dtype != torch.float32}
    else:
        kernel, cache_strides, quantized = _decode_partition_kernel, (
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2)), {}
    kernel[(batch, kv_heads, slots)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_out, part_lse,
        scale * LOG2E, window or 0, slots, wanted, low, high,
        q.stride(0), q.stride(1), *cache_strides,
        block_tables.stride(0), out.stride(0), out.stride(1),
        G=group, G_PAD=max(16, next_pow2(group)), HEAD_DIM=dim, BLOCK_SIZE=block_size,
        BLOCK_N=block_n, SLIDING=window is not None, SPLIT=split, DOT_FP32=dot_in_fp32(q.dtype),
        num_warps=num_warps, num_stages=num_stages, **quantized, **pdl_launch(q.device),
    )
    if split:
        _decode_merge_kernel[(batch, heads)](
            part_out, part_lse, context_lens, out, window or 0, slots, wanted, low, high,
            out.stride(0), out.stride(1),
            HEAD_DIM=dim, BLOCK_N=block_n, BLOCK_P=16, SLIDING=window is not None,
            num_warps=1 if dim <= 64 else 2, **pdl_launch(q.device),
        )
    return out
