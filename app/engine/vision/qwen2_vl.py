"""Qwen2-VL's and Qwen2.5-VL's vision transformer: images at their own resolution, as a grid of patches.

The image processor cuts each picture (resized to multiples of patch x merge size) into
``temporal_patch_size`` x ``patch_size``² patches, already flattened and ordered so that each
``merge`` x ``merge`` block of neighbouring patches is consecutive; ``grid`` gives each image's
(frames, rows, columns) of patches. The tower embeds patches with a 3-D convolution, rotates
queries and keys by the patch's row and column (2-D rotary over the whole head: rows in the
first half of each rotation pair, columns in the second), attends within each frame of each
image only, and finally merges each block of merge² patches into one token of the language
model's width (LayerNorm, Linear, GELU, Linear).

Qwen2.5-VL's tower differs in three ways: RMSNorm for LayerNorm, a gated SiLU MLP, and window
attention: most blocks attend only within windows of ``window_size`` pixels (``full_blocks``
attend over the whole frame), for which the patches are put in window order (whole merge
blocks moved) before the blocks and the merged tokens put back after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.vision.layers import Mlp, RMSNorm, activation


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
    # Qwen2.5-VL
    rms_norm: bool = False
    gated_mlp_size: int | None = None  # a gated MLP of this width instead of the plain one
    window_size: int | None = None  # pixels; None: every block attends over the whole frame
    full_blocks: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Qwen2VisionConfig":
        rope = raw.get("rope_parameters") or {}
        common = dict(depth=raw["depth"], num_heads=raw["num_heads"], patch_size=raw.get("patch_size", 14),
                      temporal_patch_size=raw.get("temporal_patch_size", 2), in_channels=raw.get("in_channels", 3),
                      spatial_merge_size=raw.get("spatial_merge_size", 2), rope_theta=rope.get("rope_theta", 10000.0))
        if "out_hidden_size" in raw:  # Qwen2.5-VL: hidden_size is the tower's own width
            return cls(embed_dim=raw["hidden_size"], mlp_ratio=1, out_hidden=raw["out_hidden_size"],
                       hidden_act=raw.get("hidden_act", "silu"), rms_norm=True,
                       gated_mlp_size=raw["intermediate_size"], window_size=raw.get("window_size"),
                       full_blocks=tuple(raw.get("fullatt_block_indexes", ())), **common)
        return cls(embed_dim=raw["embed_dim"], mlp_ratio=raw.get("mlp_ratio", 4), out_hidden=raw["hidden_size"],
                   hidden_act=raw.get("hidden_act", "quick_gelu"), **common)


def patch_positions(grid: list[tuple[int, int, int]], merge: int) -> torch.Tensor:
    """Each patch's (row, column) in its image, in the processor's order: [patches, 2]."""
    rows = []
    for t, h, w in grid:
        r = torch.arange(h)[:, None].expand(h, w)
        c = torch.arange(w)[None, :].expand(h, w)
        block = [x.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).flatten() for x in (r, c)]
        rows.append(torch.stack(block, dim=-1).repeat(t, 1))
    return torch.cat(rows)


def window_order(grid: list[tuple[int, int, int]], merge: int, window: int) -> tuple[torch.Tensor, list[int]]:
    """Qwen2.5-VL's windows: the merge blocks of each frame in window order (windows of
    ``window`` x ``window`` blocks, row by row; blocks row by row within each), and each
    window's length in patches."""
    order, lengths, offset = [], [], 0
    for t, h, w in grid:
        rows, cols = h // merge, w // merge
        blocks = torch.arange(t * rows * cols).view(t, rows, cols)
        for frame in range(t):
            for r in range(0, rows, window):
                for c in range(0, cols, window):
                    part = blocks[frame, r : r + window, c : c + window].flatten()
                    order.append(part + offset)
                    lengths.append(part.numel() * merge * merge)
        offset += t * rows * cols
    return torch.cat(order), lengths


def _norm(cfg: Qwen2VisionConfig, dim: int) -> nn.Module:
    return RMSNorm(dim) if cfg.rms_norm else nn.LayerNorm(dim, eps=1e-6)


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
        return self.proj(attend_within(q, k, v, lengths).reshape(n, d))


def attend_within(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Attention inside each run of ``lengths`` rows ([rows, heads, head_dim]; a window, or a frame
    of an image), runs apart. Runs of one length go in one batched call: a 1024 x 1024 picture
    has about a hundred windows, which one call each would spend on launches."""
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0).tolist()
    out = torch.empty_like(q)
    for length in sorted(set(lengths)):
        firsts = torch.tensor([s for s, n in zip(starts, lengths) if n == length])
        rows = (firsts[:, None] + torch.arange(length)).to(q.device)  # [runs, length]
        parts = (t[rows].transpose(1, 2) for t in (q, k, v))  # [runs, heads, length, head_dim]
        out[rows] = F.scaled_dot_product_attention(*parts).transpose(1, 2)
    return out


class _GatedMlp(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        width = cfg.gated_mlp_size
        self.gate_proj, self.up_proj = nn.Linear(cfg.embed_dim, width), nn.Linear(cfg.embed_dim, width)
        self.down_proj = nn.Linear(width, cfg.embed_dim)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, cfg: Qwen2VisionConfig):
        super().__init__()
        self.norm1 = _norm(cfg, cfg.embed_dim)
        self.attn = _Attention(cfg)
        self.norm2 = _norm(cfg, cfg.embed_dim)
        self.mlp = _GatedMlp(cfg) if cfg.gated_mlp_size else Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio),
                                                                  cfg.hidden_act)

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
        self.ln_q = _norm(cfg, cfg.embed_dim)
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
        cfg = self.config
        x = self.patch_embed(patches)
        positions = patch_positions(grid, cfg.spatial_merge_size).to(x.device)
        frames = [h * w for t, h, w in grid for _ in range(t)]
        windows, order = frames, None
        if cfg.window_size:  # whole merge blocks into window order, positions with them
            unit = cfg.spatial_merge_size**2
            order, windows = window_order(grid, cfg.spatial_merge_size,
                                          cfg.window_size // cfg.spatial_merge_size // cfg.patch_size)
            order = order.to(x.device)
            x = x.view(-1, unit, x.shape[-1])[order].flatten(0, 1)
            positions = positions.view(-1, unit, 2)[order].flatten(0, 1)
        angles = (positions[..., None].float() * self.inv_freq).flatten(1)  # [n, head_dim / 2]: rows, columns
        angles = torch.cat([angles, angles], dim=-1)[:, None, :]  # both halves of each pair, every head
        cos, sin = angles.cos(), angles.sin()
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames if i in cfg.full_blocks else windows)
        merged = self.merger(x)
        return merged if order is None else merged[torch.argsort(order)]
