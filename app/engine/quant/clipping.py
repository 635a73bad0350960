"""AWQ's clipping search: a slightly narrower range per group often quantizes better.

Limiting a group to +-f * max|w| clips its outlier but gives every other weight finer steps. For
each output channel and input group the factor ``f`` is chosen by the squared error of that group's
partial dot products over the calibration tokens. That error is ``d^T C d`` with ``d`` the
group's weight error and ``C`` the group's input second moments, so every calibration token
counts at the cost of a G x G matrix per group instead of a pass over the tokens per factor.
"""

from __future__ import annotations

import torch

from app.engine.quant.int4 import fake_quantize
from app.engine.quant.layer_inputs import CHUNK_TOKENS


@torch.no_grad()
def group_second_moments(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """sum over tokens of x_g x_g^T for each input group: float32 [groups, G, G]."""
    flat = x.reshape(-1, x.shape[-1])
    groups = flat.shape[1] // group_size
    moments = torch.zeros(groups, group_size, group_size, dtype=torch.float32, device=x.device)
    for start in range(0, flat.shape[0], CHUNK_TOKENS):
        chunk = flat[start:start + CHUNK_TOKENS].float().view(-1, groups, group_size).transpose(0, 1)
        moments += chunk.transpose(1, 2) @ chunk
    return moments


@torch.no_grad()
def search_clip(weight: torch.Tensor, moments: torch.Tensor, group_size: int, grid: int,
                max_shrink: float) -> torch.Tensor:
    """The best clipping factor (float32 [out_features, groups]) for ``weight`` [out, in], given its
    input's ``group_second_moments``; factors 1, 1 - 1/grid, ... down to 1 - max_shrink."""
    w = weight.float()
    out_features, groups = w.shape[0], w.shape[1] // group_size
    best = torch.ones(out_features, groups, device=w.device)
    best_error = torch.full((out_features, groups), float("inf"), device=w.device)
    for factor in [1 - i / grid for i in range(int(max_shrink * grid))]:
        delta = (fake_quantize(w, group_size, factor) - w).view(out_features, groups, group_size).transpose(0, 1)
        error = ((delta @ moments) * delta).sum(dim=-1).t()  # [out, groups]
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best[better] = factor
    return best
