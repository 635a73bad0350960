"""Self-attention over the paged KV cache, GQA-aware, with optional q/k norm (Qwen3) and sliding window."""

from __future__ import annotations

import torch
from torch import nn

from app.engine.attention_metadata import AttentionMetadata
from app.engine.distributed.parallel_state import Shard
from app.engine.distributed.sharding import local_heads
from app.engine.kernels import Ops
from app.engine.layers.linear import linear_class
from app.engine.layers.norm import RMSNorm
from app.engine.models.config import ModelConfig


class Attention(nn.Module):
    """Under tensor parallelism: this rank's heads (see distributed.sharding); o_proj sums the
    ranks' outputs."""

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, shard: Shard = Shard()):
        super().__init__()
        self.num_heads = local_heads(cfg.num_heads, shard)
        self.num_kv_heads = local_heads(cfg.num_kv_heads, shard)
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * cfg.head_dim
        self.kv_size = self.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.sliding_window = cfg.sliding_window
        self.ops = ops
        projection = linear_class(cfg.quantization.group_size if cfg.quantization else None)
        self.qkv_proj = projection(cfg.hidden_size, self.q_size + 2 * self.kv_size, cfg.qkv_bias, ops, dtype, device)
        # A row-parallel bias is added once, by rank 0 (see sharding.dense_index).
        self.o_proj = projection(self.q_size, cfg.hidden_size, cfg.o_bias and shard.rank == 0, ops, dtype, device,
                             reduce=shard.reduce)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops, dtype, device)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops, dtype, device)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.ops.apply_rotary_qk(q, k, cos, sin)
        k_cache, v_cache = kv_cache
        self.ops.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = self.ops.paged_attention(q, k, v, k_cache, v_cache, meta, self.scale, self.sliding_window)
        return self.o_proj(out.reshape(tokens, self.q_size))
