"""The paged KV cache tensors and how many blocks fit in memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.distributed.parallel_state import Shard
from app.engine.distributed.sharding import local_heads
from app.engine.kv_quant import CacheFormat
from app.engine.models.config import ModelConfig


@dataclass
class KVCache:
    """Per layer (key, value) tensors of shape [num_blocks, block_size, kv_heads, row width]: the
    head size for a float cache, quantized rows (uint8, see kv_quant) for an int8/int4 one."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    num_blocks: int
    block_size: int
    format: CacheFormat | None = None

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @classmethod
    def allocate(
        cls, cfg: ModelConfig, num_blocks: int, block_size: int, fmt: CacheFormat, device: torch.device,
        shard: Shard = Shard(),
    ) -> "KVCache":
        """shard: under tensor parallelism, the cache holds this rank's key/value heads."""
        shape = (cfg.num_layers, 2, num_blocks, block_size, local_heads(cfg.num_kv_heads, shard),
                 fmt.row_width(cfg.head_dim))
        storage = _zeroed(shape, fmt.dtype, device)
        return cls([(storage[i, 0], storage[i, 1]) for i in range(cfg.num_layers)], num_blocks, block_size, fmt)


def bytes_per_block(cfg: ModelConfig, block_size: int, fmt: CacheFormat, shard: Shard = Shard()) -> int:
    return 2 * cfg.num_layers * block_size * local_heads(cfg.num_kv_heads, shard) * fmt.row_bytes(cfg.head_dim)


def _zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled cache (masked attention must never meet NaN garbage). A large CPU allocation
    comes from fresh OS pages, which are zero already; leaving them untouched keeps start-up fast
    and costs RAM only as blocks get used."""
    numel = 1
    for n in shape:
        numel *= n
    if device.type == "cpu" and numel * torch.empty((), dtype=dtype).element_size() >= 64 * 2**20:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)
