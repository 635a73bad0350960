"""Linear layers whose weight format is pluggable (dense now; packed and quantized formats plug in here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.distributed.sharding import Index, Split, dense_index
from app.engine.kernels import Ops


class Linear(nn.Module):
    """y = x W^T + b with W stored [out, in]. ``load_rows`` fills a row range, so fused
    projections (q|k|v, gate|up) load from their separate checkpoint tensors.

    Under tensor parallelism a linear holds its rank's part (sizes here are the part's): a
    column-parallel one some output rows, a row-parallel one some input columns, with ``reduce``
    summing the ranks' partial outputs. ``shard_index`` is the weight format's rule for which part
    of a checkpoint tensor that is."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, ops: Ops, dtype: torch.dtype, device: torch.device,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.ops = in_features, out_features, ops
        self.reduce = reduce
        self.packed = None
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device), requires_grad=False)
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )

    def load_rows(self, name: str, tensor: torch.Tensor, row_offset: int = 0) -> None:
        target = self.bias if name == "bias" else self.weight
        if target is None:
            raise KeyError("this layer has no bias")
        rows = tensor.shape[0]
        if tensor.shape[1:] != target.shape[1:] or row_offset + rows > target.shape[0]:
            raise ValueError(f"{name} of shape {tuple(tensor.shape)} does not fit {tuple(target.shape)} at row {row_offset}")
        target[row_offset : row_offset + rows].copy_(tensor)

    def pack(self) -> None:
        """After loading: lets the kernels re-lay the weight once; the packed form replaces it."""
        if self.ops.pack_linear is not None:
            self.packed = self.ops.pack_linear(self.weight.data)
            self.weight = None

    def shard_index(self, kind: str, shape: Sequence[int], split: Split) -> Index | None:
        """The part of checkpoint tensor ``kind`` ("weight", "bias") of ``shape`` this layer's
        split holds (None: none of it)."""
        return dense_index(kind, shape, split)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            y = self.ops.packed_linear(x, self.packed)
            if self.bias is not None:
                y.add_(self.bias)
        return y if self.reduce is None else self.reduce(y)
