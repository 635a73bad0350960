"""Quantized KV cache rows (int8 / int4, asymmetric, per token and head), the torch reference.

A cache row holds one token's key (or value) for one head. Quantized, it is ``head_dim`` bytes
(int8) or ``head_dim / 2`` (int4) of integers, and the row's scale and minimum as two fp16 values
(4 bytes). The cache stays one tensor per layer and side, [blocks, block_size, kv_heads, row
width] as for float caches, so every consumer still receives (k_cache, v_cache); a uint8 cache
means a quantized one. Inside a block, though, the bytes are not row after row: first the
integers of every (slot, head) row in that order, then their (scale, minimum) pairs in the same
order (``block_parts``). So each row's integers start 16-byte aligned (a 4-byte pair after each
would leave 132-byte rows, 4-byte aligned), and kernels load them 16 bytes at a time.

The integers are packed in planes (``Packing``): the row is read as W little-endian units of U
bits (the widest that leave W >= 32 units), and field f (bits f*b .. f*b + b - 1) of unit u
holds element f*W + u. So shifting and masking a tile of units yields elements f*W .. f*W + W - 1
of every row: a contiguous slice that attention kernels multiply with the same slice of the query,
with no shuffling back into element order.

What is quantized is the row turned by an orthonormal Hadamard matrix R (block-diagonal over the
power-of-two parts of the head size; R = R^T): y = x R, y ≈ q * scale + min, x = y R. The turn
spreads a few large channels (keys have them) over all, so one scale per row loses less: on the
starter model int4 raised held-out perplexity 14% without it and 5% with it. Attention kernels
need not turn every cached row back: q·k = (qR)·(kR), and a weighted sum of values turned is the
sum turned, so they can turn the query once and the output once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from app.engine.config import KV_CACHE_DTYPES

PARAM_BYTES = 4  # scale and minimum, fp16 each


@dataclass(frozen=True)
class CacheFormat:
    """How keys and values are stored: ``dtype`` float, or uint8 rows of ``bits``-bit integers."""

    dtype: torch.dtype
    bits: int = 16

    @classmethod
    def of(cls, name: str, model_dtype: torch.dtype) -> "CacheFormat":
        """From EngineConfig.kv_cache_dtype: "auto" is the model's dtype."""
        if name not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {name!r}")
        if name == "auto":
            return cls(model_dtype, torch.finfo(model_dtype).bits)
        if name in ("int8", "int4"):
            return cls(torch.uint8, int(name[3:]))
        dtype = getattr(torch, name)
        return cls(dtype, torch.finfo(dtype).bits)

    @property
    def quantized(self) -> bool:
        return self.dtype == torch.uint8

    def row_width(self, head_dim: int) -> int:
        """Elements of the cache's last dimension."""
        if not self.quantized:
            return head_dim
        if self.bits == 4 and head_dim % 2:
            raise ValueError("an int4 KV cache needs an even head size")
        return head_dim * self.bits // 8 + PARAM_BYTES

    def row_bytes(self, head_dim: int) -> int:
        return self.row_width(head_dim) * torch.empty((), dtype=self.dtype).element_size()

    @property
    def name(self) -> str:
        return f"int{self.bits}" if self.quantized else str(self.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Packing:
    """How a row's integers lie in units: ``width`` units (W) of ``unit_bits`` (U), ``planes``
    (U / bits) fields each; field f of unit u holds element f * W + u."""

    unit_bits: int
    width: int
    planes: int

    @classmethod
    def of(cls, head_dim: int, bits: int) -> "Packing":
        """The widest units that leave W >= 32 (else >= 16): the kernels' dots take planes of 16
        elements or more, and planes of 32 were the fastest on an H100 (int4 rows of 128 in
        16-bit units: 251 us a decode call; in 8-bit units, planes of 64: 286; in 32-bit units,
        planes of 16: 654; docs/benchmarks.md)."""
        total = head_dim * bits
        fits = [u for u in (32, 16, 8) if total % u == 0]
        unit = next((u for u in fits if total // u >= 32), None) or next((u for u in fits if total // u >= 16), 8)
        return cls(unit, total // unit, unit // bits)


def bits_of(cache: torch.Tensor, head_dim: int) -> int:
    """A quantized cache's bits, told by its row width."""
    return 8 if cache.shape[-1] == head_dim + PARAM_BYTES else 4


@cache
def rotation(head_dim: int, device: torch.device) -> torch.Tensor:
    """R [head_dim, head_dim], fp32: Sylvester-Hadamard blocks of the head size's power-of-two
    parts (64 -> one block; 96 -> 64 and 32), each scaled to be orthonormal; symmetric."""
    out = torch.zeros(head_dim, head_dim)
    at = 0
    for size in (1 << b for b in reversed(range(head_dim.bit_length())) if head_dim >> b & 1):
        block = torch.ones(1, 1)
        while block.shape[0] < size:
            block = torch.cat([torch.cat([block, block], 1), torch.cat([block, -block], 1)], 0)
        out[at : at + size, at : at + size] = block / size**0.5
        at += size
    return out.to(device)


def block_parts(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of quantized cache blocks [..., block_size, kv_heads, row width] (each block
    contiguous): their integers [..., block_size, kv_heads, data bytes] and their (scale,
    minimum) pairs [..., block_size, kv_heads, 4]."""
    block_size, kv_heads, width = blocks.shape[-3:]
    flat = blocks.flatten(-3)
    split = block_size * kv_heads * (width - PARAM_BYTES)
    return (flat[..., :split].unflatten(-1, (block_size, kv_heads, width - PARAM_BYTES)),
            flat[..., split:].unflatten(-1, (block_size, kv_heads, PARAM_BYTES)))


def rows_of_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Quantized cache blocks -> their rows [..., block_size, kv_heads, row width], each row's
    integers then its scale and minimum (quantize_rows' layout)."""
    return torch.cat(block_parts(blocks), dim=-1)


def blocks_of_rows(rows: torch.Tensor) -> torch.Tensor:
    """rows [..., block_size, kv_heads, row width] as quantize_rows gives them -> cache blocks."""
    return torch.cat([rows[..., :-PARAM_BYTES].flatten(-3), rows[..., -PARAM_BYTES:].flatten(-3)], -1).view(rows.shape)


def store_rows(cache: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """Writes rows [T, kv_heads, row width] at slots (block * block_size + offset) of a quantized
    cache [blocks, block_size, kv_heads, row width]."""
    assert cache.is_contiguous(), "block_parts must be views of the cache itself"
    ints, params = block_parts(cache)
    block, offset = slots // cache.shape[1], slots % cache.shape[1]
    ints[block, offset] = rows[..., :-PARAM_BYTES]
    params[block, offset] = rows[..., -PARAM_BYTES:]


def quantize_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x [..., head_dim] (any float dtype) -> uint8 rows [..., row width] of x R. The scale and
    minimum are rounded to fp16 first, and the integers computed with them, so dequantize_rows
    gives back exactly what the kernels compute."""
    levels = (1 << bits) - 1
    x = x.float() @ rotation(x.shape[-1], x.device)
    low, high = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    low = low.clamp(-65504, 65504).half()
    scale = ((high - low.float()) / levels).clamp(min=1e-6, max=65504).half()
    q = torch.round((x - low.float()) / scale.float()).clamp(0, levels).to(torch.uint8)
    pack = Packing.of(x.shape[-1], bits)
    q = q.unflatten(-1, (pack.planes, pack.width)).transpose(-1, -2)  # [..., unit, field]
    if bits == 4:  # fields 2j, 2j + 1 share byte j of a unit: low nibble, high nibble
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    q = q.flatten(-2)
    params = torch.cat([scale, low], dim=-1).view(torch.uint8)  # 2 fp16 -> 4 bytes
    return torch.cat([q, params], dim=-1)


def dequantize_rows(rows: torch.Tensor, head_dim: int, dtype: torch.dtype, turned: bool = False) -> torch.Tensor:
    """uint8 rows [..., row width] -> [..., head_dim] of ``dtype``: x, or x R where ``turned``."""
    bits = bits_of(rows, head_dim)
    data, params = rows[..., :-PARAM_BYTES], rows[..., -PARAM_BYTES:].contiguous().view(torch.float16).float()
    pack = Packing.of(head_dim, bits)
    data = data.unflatten(-1, (pack.width, -1))  # [..., unit, byte]
    if bits == 4:
        data = torch.stack([data & 0xF, data >> 4], dim=-1).flatten(-2)
    data = data.transpose(-1, -2).flatten(-2)  # element f * W + u = field f of unit u
    y = data.float() * params[..., :1] + params[..., 1:]
    return (y if turned else y @ rotation(head_dim, rows.device)).to(dtype)
