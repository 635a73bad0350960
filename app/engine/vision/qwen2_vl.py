"""Qwen2-VL's vision transformer: images at their own resolution, as a grid of patches.

The image processor cuts each picture (resized to multiples of patch x merge size) into
``temporal_patch_size`` x ``patch_size``² patches, already flattened and ordered so that each
``merge`` x ``merge`` block of neighbouring patches is consecutive; ``grid`` gives each image's
(frames, rows, columns) of patches. The tower embeds patches with a 3-D convolution, rotates
queries and keys by the patch's row and column (2-D rotary over the whole head: rows in the
first half of each rotation pair, columns in the second), attends within each frame of each
image only, and finally merges each block of merge² patches into one token of the language
model's width (LayerNorm, Linear, GELU, Linear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.vision.clip import activation


@dataclass(frozen=True)
class Qwen2VisionConfig:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    out_hidden: int  # the language model's width
    patch_size: int = 14
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    hidden_act: str = "quick_gelu"
    rope_theta: float = 10000.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Qwen2VisionConfig":
        rope = raw.get("rope_parameters") or {}
        return cls(embed_dim=raw["embed_dim"], depth=raw["depth"], num_heads=raw["num_heads"],
                   mlp_ratio=raw.get("mlp_ratio", 4), out_hidden=raw["hidden_size"], patch_size=raw.get("patch_size", 14),
                   temporal_patch_size=raw.get("temporal_patch_size", 2), in_channels=raw.get("in_channels", 3),
                   spatial_merge_size=raw.get("spatial_merge_size", 2), hidden_act=raw.get("hidden_act", "quick_gelu"),
                   rope_theta=rope.get("rope_theta", 10000.0))


def patch_positions(grid: list[tuple[int, int, int]], merge: int) -> torch.Tensor:
    """Each patch's (row, column) in its image, in the processor's order: [patches, 2]."""
    rows = []
    for t, h, w in grid:
        r = torch.arange(h)[:, None].expand(h, w)
        c = torch.arange(w)[None, :].expand(h, w)
        block = [x.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).flatten() for x in (r, c)]
        rows.append(torch.stack(block, dim=-1).repeat(t, 1))
    return torch.cat(rows)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class _Attention(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        n, d = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, d // self.heads).unbind(1)  # [n, heads, head_dim]
        q, k = ((t.float() * cos + _rotate_half(t.float()) * sin).to(x.dtype) for t in (q, k))
        out = [F.scaled_dot_product_attention(*(t.transpose(0, 1) for t in parts)).transpose(0, 1)
               for parts in zip(*(t.split(lengths) for t in (q, k, v)))]  # each frame of each image apart
        return self.proj(torch.cat(out).reshape(n, d))


class _Mlp(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(cfg.embed_dim, hidden), nn.Linear(hidden, cfg.embed_dim)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = _Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = _Mlp(cfg)

    def forward(self, x, cos, sin, lengths):
        x = x + self.attn(self.norm1(x), cos, sin, lengths)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.shape = (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        kernel = self.shape[1:]
        self.proj = nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel, kernel, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.view(-1, *self.shape).to(self.proj.weight.dtype)
        return self.proj(x).flatten(1)


class _Merger(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        width = cfg.embed_dim * cfg.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, cfg.out_hidden))
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.width))


class Qwen2VisionTower(nn.Module):
    """Flattened patches [patches, C * T * P * P] of images with ``grid`` (frames, rows, columns)
    each -> [patches / merge², out_hidden]: the language model's image tokens, image by image."""

    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = _PatchEmbed(cfg)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.merger = _Merger(cfg)
        head_dim = cfg.embed_dim // cfg.num_heads
        quarter = head_dim // 2  # rows and columns each take half of the rotation pairs
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, quarter, 2).float() / quarter),
                             persistent=False)

    def forward(self, patches: torch.Tensor, grid: list[tuple[int, int, int]]) -> torch.Tensor:
        x = self.patch_embed(patches)
        positions = patch_positions(grid, self.config.spatial_merge_size).to(x.device)
        angles = (positions[..., None].float() * self.inv_freq).flatten(1)  # [n, head_dim / 2]: rows, columns
        angles = torch.cat([angles, angles], dim=-1)[:, None, :]  # both halves of each pair, every head
        cos, sin = angles.cos(), angles.sin()
        lengths = [h * w for t, h, w in grid for _ in range(t)]
        for block in self.blocks:
            x = block(x, cos, sin, lengths)
        return self.merger(x)
