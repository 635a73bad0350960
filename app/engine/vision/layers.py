"""Building blocks the vision towers share (plain torch: a tower runs once per picture, in a
prefill step, so no fused kernels are needed). Names of parameters follow the checkpoints'."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


@dataclass(frozen=True)
class VitConfig:
    """What every ViT-style tower's config holds (CLIP's, InternViT's add their own after)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @staticmethod
    def fields_from(raw: dict[str, Any], eps: float, act: str) -> dict[str, Any]:
        """The shared fields from an HF vision config (sizes given as [h, w] taken as h), with
        the tower's own defaults for the norm's epsilon and the activation."""
        size, patch = raw["image_size"], raw["patch_size"]
        return dict(hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
                    num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"],
                    image_size=size[0] if isinstance(size, (list, tuple)) else size,
                    patch_size=patch[0] if isinstance(patch, (list, tuple)) else patch,
                    num_channels=raw.get("num_channels", 3), layer_norm_eps=raw.get("layer_norm_eps", eps),
                    hidden_act=raw.get("hidden_act", act))


def activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}")
    return _ACTIVATIONS[name]


class Mlp(nn.Module):
    """fc1, activation, fc2."""

    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RMSNorm(nn.Module):
    """Computed in fp32, scaled in the input's dtype (as the towers' checkpoints were trained)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight
