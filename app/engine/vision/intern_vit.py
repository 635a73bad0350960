"""InternViT (InternVL 2 / 2.5 / 3's vision tower, transformers-native layout) and InternVL's
pixel-shuffle projector.

The processor cuts each picture into tiles of ``image_size`` pixels (plus a thumbnail of the whole
when there are several), so the tower sees fixed-size images: patches (a strided convolution with
bias), a class token, learned positions; pre-norm layers whose attention and MLP outputs are
scaled per channel (layer scale) before their residuals, optionally with RMSNorm on queries and
keys. Each tile's patch features (class token dropped) are then folded 2 x 2 into one token of
four times the width (pixel shuffle) and projected (LayerNorm, Linear, activation, Linear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.vision.layers import Mlp, RMSNorm, VitConfig, activation


@dataclass(frozen=True)
class InternVitConfig(VitConfig):
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    norm_type: str = "layer_norm"
    qk_norm: bool = False
    attention_bias: bool = False
    final_norm: bool = False  # a LayerNorm after the last layer (unless the checkpoint mean-pools)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "InternVitConfig":
        return cls(**VitConfig.fields_from(raw, eps=1e-6, act="gelu"), norm_type=raw.get("norm_type", "layer_norm"),
                   qk_norm=raw.get("use_qk_norm", False), attention_bias=raw.get("attention_bias", False),
                   final_norm=not raw.get("use_mean_pooling", True))


def _norm(cfg: InternVitConfig) -> nn.Module:
    if cfg.norm_type == "rms_norm":
        return RMSNorm(cfg.hidden_size, cfg.layer_norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class _PatchEmbeddings(nn.Module):
    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        self.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size)


class _Embeddings(nn.Module):
    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.patch_embeddings = _PatchEmbeddings(cfg)
        self.position_embeddings = nn.Parameter(torch.zeros(1, patches + 1, cfg.hidden_size))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        proj = self.patch_embeddings.projection
        patches = proj(pixels.to(proj.weight.dtype)).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(pixels.shape[0], -1, -1), patches], dim=1) + self.position_embeddings


class _Attention(nn.Module):
    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=cfg.attention_bias) for _ in range(3))
        self.projection_layer = nn.Linear(d, d)
        self.q_norm = RMSNorm(d) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(d) if cfg.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.q_norm(self.q_proj(x)), self.k_norm(self.k_proj(x)), self.v_proj(x)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        return self.projection_layer(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Layer(nn.Module):
    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        self.layernorm_before, self.layernorm_after = _norm(cfg), _norm(cfg)
        self.attention, self.mlp = _Attention(cfg), Mlp(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.lambda_1 = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lambda_2 = nn.Parameter(torch.ones(cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attention(self.layernorm_before(x))
        return x + self.lambda_2 * self.mlp(self.layernorm_after(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))


class InternVitTower(nn.Module):
    """Tiles [B, C, S, S] -> the last layer's patch features [B, patches, hidden] (class token
    dropped; the final norm applied where the checkpoint has one)."""

    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.final_norm else nn.Identity()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)[:, 1:]


def pixel_shuffle(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, patches, C] on a square grid -> [B, patches * ratio², C / ratio²]: each 1/ratio x 1/ratio
    block of patches becomes one token (InternVL's channel order: column pairs first, then rows)."""
    b, n, c = features.shape
    side = int(n**0.5)
    x = features.reshape(b, side, side, c)
    x = x.reshape(b, side, int(side * ratio), int(c / ratio)).permute(0, 2, 1, 3)
    x = x.reshape(b, int(side * ratio), int(side * ratio), int(c / ratio**2)).permute(0, 2, 1, 3)
    return x.reshape(b, -1, x.shape[-1])


class InternVLProjector(nn.Module):
    def __init__(self, width: int, text_width: int, act: str):
        super().__init__()
        self.layer_norm = nn.LayerNorm(width)
        self.linear_1, self.linear_2 = nn.Linear(width, text_width), nn.Linear(text_width, text_width)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))
