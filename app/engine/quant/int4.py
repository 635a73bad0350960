"""Asymmetric int4 quantization of a weight in groups of consecutive input channels.

Each group's range is widened to include zero (so the zero point is an exact integer in 0..15 and a
constant group still round-trips) and may be narrowed by a clipping factor. Scales are rounded to
fp16 before use, so what every search here measures is exactly what the checkpoint will hold.
"""

from __future__ import annotations

import torch

MAX_Q = 15
_MIN_SCALE = 1e-7  # above fp16's smallest subnormal, so the stored scale is never zero


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"group size {group_size} does not divide {in_features} input channels")
    return weight.float().reshape(out_features, in_features // group_size, group_size)


def quantize_groups(weight: torch.Tensor, group_size: int, clip: torch.Tensor | float = 1.0):
    """weight [N, K] -> (q uint8 [N, K], zeros uint8 [N, K // G], scales fp16 [N, K // G]).

    ``clip`` (a float or [N, K // G]) limits each group to +-clip * max|w| before its range is taken:
    only the side that reaches past the limit (usually the one outlier) loses range.
    """
    groups = _grouped(weight, group_size)
    if isinstance(clip, torch.Tensor):
        clip = clip.unsqueeze(-1)
    limit = groups.abs().amax(dim=-1, keepdim=True) * clip
    low = torch.maximum(groups.amin(dim=-1, keepdim=True).clamp(max=0), -limit)
    high = torch.minimum(groups.amax(dim=-1, keepdim=True).clamp(min=0), limit)
    scales = ((high - low) / MAX_Q).clamp(min=_MIN_SCALE).half().float()
    zeros = torch.round(-low / scales).clamp(0, MAX_Q)
    q = (torch.round(groups / scales) + zeros).clamp(0, MAX_Q)
    return (q.reshape(weight.shape).to(torch.uint8), zeros.squeeze(-1).to(torch.uint8),
            scales.squeeze(-1).half())


def dequantize_groups(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(q [N, K], zeros and scales [N, K // G]) -> float32 weight [N, K]."""
    out_features, in_features = q.shape
    groups = q.float().reshape(out_features, zeros.shape[1], -1)
    return ((groups - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)).reshape(out_features, in_features)


def fake_quantize(weight: torch.Tensor, group_size: int, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The weight as the checkpoint will represent it, in the weight's dtype."""
    return dequantize_groups(*quantize_groups(weight, group_size, clip)).to(weight.dtype)
