"""Torch reference ops: the CPU path, the fallback, and the oracle every fast kernel is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from app.engine import kv_quant
from app.engine.attention_metadata import AttentionMetadata


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32, scaled in the input dtype (as the HF models do)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds the residual, then normalises; returns (normalised, new residual)."""
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, the product taken in place: out of place, over the two strided halves,
    CPU torch's multiply took as long as the SiLU itself (2048 x 1536 bf16: 1.1 vs 0.1 ms)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the two halves of each head (the HF "rotate_half" layout). x: [T, heads, dim]; cos/sin: [T, dim/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rotary_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates queries and keys of the same tokens."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """Stores each token's key/value at its slot (block * block_size + offset): as they are, cast
    to the cache's float dtype, or quantized into rows for an int8/int4 (uint8) cache."""
    num_kv_heads = k.shape[-2]
    for x, cache in ((k, k_cache), (v, v_cache)):
        if cache.dtype == torch.uint8:
            kv_quant.store_rows(cache, slots, kv_quant.quantize_rows(x, kv_quant.bits_of(cache, x.shape[-1])))
        else:
            cache.view(-1, num_kv_heads, cache.shape[-1]).index_copy_(0, slots, x.to(cache.dtype))


def _from_cache(blocks: torch.Tensor, head_dim: int, dtype: torch.dtype, turned: bool = False) -> torch.Tensor:
    """Cache blocks [..., block_size, kv_heads, row width] as the model's keys or values
    [..., block_size, kv_heads, head_dim]: dequantized (still turned by R where ``turned``), or
    cast to the model's dtype."""
    if blocks.dtype == torch.uint8:
        return kv_quant.dequantize_rows(kv_quant.rows_of_blocks(blocks), head_dim, dtype, turned)
    return blocks.to(dtype)


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int, like: torch.Tensor) -> torch.Tensor:
    """The first `length` cached tokens of one sequence: [length, kv_heads, dim], in ``like``'s
    dtype and head size."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    return _from_cache(cache[block_table[:num_blocks]], like.shape[-1], like.dtype).flatten(0, 1)[:length]


def _window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Which keys each query may see: causal, and within the sliding window if there is one."""
    mask = key_pos[None, :] <= query_pos[:, None]
    if window is not None:
        mask &= key_pos[None, :] > query_pos[:, None] - window
    return mask


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Attention of each sequence's new tokens over its cached context (written already) plus itself.

    q: [T, heads, dim]; k/v: [T, kv_heads, dim] (this step's tokens, already in the cache).
    Decodes (one token each, first in the batch) run as one padded batch; prefill chunks one by one.
    """
    out = torch.empty_like(q)
    nd = meta.num_decodes
    if nd:
        out[:nd] = _decode_attention(q[:nd], k_cache, v_cache, meta, scale, sliding_window)
    for i in range(nd, meta.num_seqs):
        start, qlen, ctx = meta.query_starts[i], meta.query_lens[i], meta.context_lens[i]
        qs = q[start : start + qlen]
        # The chunk's own keys and values as computed; earlier tokens' from the cache (for a
        # quantized cache, the rows dequantized: only those tokens' are approximations).
        ks, vs = k[start : start + qlen].to(qs.dtype), v[start : start + qlen].to(qs.dtype)
        if ctx > qlen:
            past = ctx - qlen
            ks = torch.cat([_gather_context(k_cache, meta.block_tables[i], past, qs), ks])
            vs = torch.cat([_gather_context(v_cache, meta.block_tables[i], past, qs), vs])
        if ctx == qlen and (sliding_window is None or ctx <= sliding_window):
            mask, causal = None, True
        else:
            query_pos = torch.arange(ctx - qlen, ctx, device=q.device)
            mask, causal = _window_mask(query_pos, torch.arange(ctx, device=q.device), sliding_window), False
        # [1, heads, tokens, dim]: with the batch dimension, CPU torch runs its flash-attention
        # kernel; 3-D inputs fall back to the math path (~1.4x slower on the starter model).
        out[start : start + qlen] = F.scaled_dot_product_attention(
            qs.transpose(0, 1)[None], ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
            attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True,
        )[0].transpose(0, 1)
    return out


def _decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One query per sequence over its padded context. Plain batched matmuls: for a single
    query row they beat the CPU flash-attention kernel several times over. Over a quantized
    cache the keys and values stay turned by R (kv_quant): the query is turned instead, and the
    output turned back, two small products a step instead of two per cached row."""
    nd, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    turn = kv_quant.rotation(head_dim, q.device) if k_cache.dtype == torch.uint8 else None
    if turn is not None:
        q = (q.float() @ turn).to(q.dtype)
    lens = meta.decode_context_lens  # tensor [nd]
    num_blocks = -(-max(meta.context_lens[:nd]) // block_size)
    table = meta.block_tables[:nd, :num_blocks]
    turned = turn is not None
    keys = _from_cache(k_cache[table], head_dim, q.dtype, turned).flatten(1, 2).transpose(1, 2)  # [nd, kvh, S, dim]
    values = _from_cache(v_cache[table], head_dim, q.dtype, turned).flatten(1, 2).transpose(1, 2)
    grouped = q.view(nd, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() * scale  # [nd, kv_heads, group, S]
    key_pos = torch.arange(keys.shape[2], device=q.device)
    hidden = key_pos[None, :] >= lens[:, None]
    if sliding_window is not None:
        hidden |= key_pos[None, :] < (lens[:, None] - sliding_window)
    scores.masked_fill_(hidden[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    out = torch.matmul(probs, values).view(nd, num_heads, head_dim)
    return out if turn is None else (out.float() @ turn).to(q.dtype)
