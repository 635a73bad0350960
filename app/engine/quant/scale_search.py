"""AWQ's per-input-channel scales: protect the weights that meet large activations.

For linears sharing an input ``x``, ``y = W x = (W diag(s)) (x / s)``: scaling input channel ``j``
up by ``s_j`` before quantization shrinks its relative rounding error by about ``s_j``, and the
``1 / s`` is folded into the op that produces ``x``, so inference costs nothing extra. The search
tries ``s = mean|x|^ratio / mean|w|^(1 - ratio)`` over a grid of ratios in [0, 1) and keeps the one
whose quantized module output is closest (MSE) to the unquantized output. Dividing by the weight
magnitude (``mean|w|``: each weight relative to its group's largest) is what AutoAWQ does by
default, and beat the paper's ``mean|x|^ratio`` alone on the starter model (docs/benchmarks.md).
``s = 1``, plain round-to-nearest, is tried too, so the result never loses to it on the
calibration data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.quant.int4 import fake_quantize
from app.engine.quant.layer_inputs import CHUNK_TOKENS, run_chunked


@torch.no_grad()
def activation_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Mean |x| per input channel (last dim), accumulated in float32."""
    flat = x.reshape(-1, x.shape[-1])
    total = torch.zeros(flat.shape[1], dtype=torch.float32, device=x.device)
    for start in range(0, flat.shape[0], CHUNK_TOKENS):
        total += flat[start:start + CHUNK_TOKENS].float().abs().sum(dim=0)
    return total / flat.shape[0]


@torch.no_grad()
def weight_magnitude(linears: list[nn.Linear], group_size: int) -> torch.Tensor:
    """Mean over the linears' output rows of |w| relative to its group's largest |w|, per input channel."""
    weight = torch.cat([fc.weight.data.float() for fc in linears]).abs()
    groups = weight.view(weight.shape[0], -1, group_size)
    return (groups / groups.amax(dim=-1, keepdim=True).clamp(min=1e-12)).view(weight.shape).mean(dim=0)


def candidate_scales(x_magnitude: torch.Tensor, w_magnitude: torch.Tensor, ratio: float) -> torch.Tensor:
    """mean|x|^ratio / mean|w|^(1 - ratio), normalised so the largest and smallest scale are reciprocal."""
    scales = (x_magnitude.pow(ratio) / (w_magnitude.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    return scales / (scales.max() * scales.min()).sqrt()


def _squared_error(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, reference: torch.Tensor) -> float:
    step = max(1, CHUNK_TOKENS // x.shape[1])
    return sum(float(F.mse_loss(fn(x[i:i + step]).float(), reference[i:i + step].float(), reduction="sum"))
               for i in range(0, x.shape[0], step))


@torch.no_grad()
def search_scales(inspect: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, magnitude: torch.Tensor,
                  linears: list[nn.Linear], group_size: int, grid: int) -> torch.Tensor:
    """The best scales (float32 [in_features]) for ``linears``, all reading ``x`` [samples, seqlen, in]
    inside ``inspect``; ``magnitude`` is the activation_magnitude of the whole calibration set."""
    reference = run_chunked(inspect, x)
    w_magnitude = weight_magnitude(linears, group_size)
    candidates = [torch.ones_like(magnitude)]
    candidates += [candidate_scales(magnitude, w_magnitude, step / grid) for step in range(grid)]
    originals = [fc.weight.data.clone() for fc in linears]
    best_error, best_scales = float("inf"), candidates[0]
    try:
        for scales in candidates:
            for fc, weight in zip(linears, originals):
                scaled = weight.float() * scales
                fc.weight.data = (fake_quantize(scaled, group_size).float() / scales).to(weight.dtype)
            error = _squared_error(inspect, x, reference)
            if error < best_error:
                best_error, best_scales = error, scales
    finally:
        for fc, weight in zip(linears, originals):
            fc.weight.data = weight
    return best_scales


@torch.no_grad()
def fold_scales(prev: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """Divides the producer of the shared input by ``scales`` and multiplies the linears' input columns,
    leaving the unquantized layer's function unchanged. ``prev`` is an RMSNorm (its weight) or a
    linear (its last ``len(scales)`` output rows and bias)."""
    if isinstance(prev, nn.Linear):
        rows = slice(prev.out_features - scales.numel(), prev.out_features)
        prev.weight.data[rows] = (prev.weight.data[rows].float() / scales.unsqueeze(1)).to(prev.weight.dtype)
        if prev.bias is not None:
            prev.bias.data[rows] = (prev.bias.data[rows].float() / scales).to(prev.bias.dtype)
    else:
        prev.weight.data = (prev.weight.data.float() / scales).to(prev.weight.dtype)
    for fc in linears:
        fc.weight.data = (fc.weight.data.float() * scales).to(fc.weight.dtype)
