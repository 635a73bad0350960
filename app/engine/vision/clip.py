"""CLIP's vision transformer (the tower of LLaVA 1.5 and LLaVA-NeXT) and LLaVA's projector.

An image of ``image_size`` pixels square is cut into patches (a strided convolution), a class
token and learned positions are added, a pre-norm precedes the encoder layers (LayerNorm,
bidirectional attention, LayerNorm, MLP, each with a residual). LLaVA takes the hidden states
after one layer (``feature_layer``, counted as HF's ``hidden_states``: 0 is the embeddings, -1
the last layer), usually drops the class token, and maps each patch to the language model's
width with a two-layer MLP. Only the layers up to the one read are run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.vision.layers import Mlp, VitConfig, activation


@dataclass(frozen=True)
class ClipVisionConfig(VitConfig):
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ClipVisionConfig":
        return cls(**VitConfig.fields_from(raw, eps=1e-5, act="quick_gelu"))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class _Embeddings(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class _Attention(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # every patch sees every patch
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class _Layer(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = _Attention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipVisionTower(nn.Module):
    """Pixels [B, C, S, S] -> the hidden states after each layer in ``feature_layers``, side by
    side: [B, 1 + patches, hidden * len(feature_layers)] (class token first)."""

    def __init__(self, cfg: ClipVisionConfig, feature_layers: tuple[int, ...]):
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # HF's spelling
        # HF's hidden_states[i]: 0 the embeddings, i the output of layer i; negative from the end.
        self.feature_layers = tuple(i if i >= 0 else cfg.num_layers + 1 + i for i in feature_layers)
        if not all(0 <= i <= cfg.num_layers for i in self.feature_layers):
            raise ValueError(f"feature layers {feature_layers} outside a {cfg.num_layers}-layer tower")
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(max(self.feature_layers)))

    def checkpoint_name(self, name: str) -> str | None:
        """Our parameter for a checkpoint tensor of the tower (its name without the tower's
        prefix), or None for one we do not run (later layers, the pooled output's norm)."""
        if name.startswith("post_layernorm."):
            return None
        if name.startswith("encoder.layers."):
            index = int(name.split(".")[2])
            return None if index >= len(self.layers) else name.removeprefix("encoder.")
        return name

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(pixels))
        kept = [x] if 0 in self.feature_layers else []
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if i in self.feature_layers:
                kept.append(x)
        return torch.cat(kept, dim=-1) if len(kept) > 1 else kept[0]


class LlavaProjector(nn.Module):
    """Vision features -> the language model's width: Linear, activation, Linear."""

    def __init__(self, vision_width: int, text_width: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(vision_width, text_width)
        self.linear_2 = nn.Linear(text_width, text_width)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
