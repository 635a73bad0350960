"""Linear layers whose weight format is pluggable (dense now; packed and quantized formats plug in here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.distributed.sharding import Index, Split, dense_index, equal_part
from app.engine.kernels import Ops


class Linear(nn.Module):
    """y = x W^T + b with W stored [out, in]. ``load_rows`` fills a row range, so fused
    projections (q|k|v, gate|up) load from their separate checkpoint tensors.

    Under tensor parallelism a linear holds its rank's part (sizes here are the part's): a
    column-parallel one some output rows, a row-parallel one some input columns, with ``reduce``
    summing the ranks' partial outputs. ``shard_index`` is the weight format's rule for which part
    of a checkpoint tensor that is."""

    KINDS = ("weight", "bias")  # its checkpoint tensors

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

    def forward_silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """self(silu(gate) * up) for gate_up = [gate | up] (SwiGLU's down projection)."""
        return self(self.ops.silu_mul(gate_up))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            y = self.ops.packed_linear(x, self.packed)
            if self.bias is not None:
                y.add_(self.bias)
        return y if self.reduce is None else self.reduce(y)


class AWQLinear(Linear):
    """A linear with 4-bit AWQ weights in the Hugging Face "gemm" layout (see kernels.w4a16_reference):
    qweight int32 [in, out/8], qzeros int32 [in/G, out/8], scales fp16 [in/G, out].

    Where the kernels have a W4A16 matmul (``ops.w4a16``) the weights stay packed, a quarter of
    the bytes each step streams. Elsewhere (CPU, the torch reference) ``pack`` dequantises them
    once into a plain weight, and the layer runs as a dense Linear from then on."""

    KINDS = ("qweight", "qzeros", "scales", "bias")

    def __init__(
        self, in_features: int, out_features: int, bias: bool, ops: Ops, dtype: torch.dtype, device: torch.device,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, *, group_size: int,
    ):
        nn.Module.__init__(self)
        if in_features % group_size or out_features % 8:
            raise ValueError(f"an AWQ linear of {in_features} -> {out_features} does not fit group size "
                             f"{group_size} and 8 columns per word")
        self.in_features, self.out_features, self.ops, self.reduce = in_features, out_features, ops, reduce
        self.group_size, self.dtype = group_size, dtype
        self.packed = self.weight = None

        def param(*shape: int, dtype: torch.dtype) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)

        groups = in_features // group_size
        self.qweight = param(in_features, out_features // 8, dtype=torch.int32)
        self.qzeros = param(groups, out_features // 8, dtype=torch.int32)
        self.scales = param(groups, out_features, dtype=torch.float16)
        self.bias = param(out_features, dtype=dtype) if bias else None

    def load_rows(self, name: str, tensor: torch.Tensor, row_offset: int = 0) -> None:
        """``row_offset`` counts output features, as for a dense Linear: fused q|k|v and gate|up
        fill column ranges of the packed tensors here."""
        if name == "bias":
            return super().load_rows(name, tensor, row_offset)
        target = {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales}[name]
        per_column = 8 if name != "scales" else 1
        if row_offset % 8 or tensor.shape[0] != target.shape[0] or (
                row_offset // per_column + tensor.shape[1] > target.shape[1]):
            raise ValueError(f"{name} of shape {tuple(tensor.shape)} does not fit {tuple(target.shape)} "
                             f"at output {row_offset}")
        start = row_offset // per_column
        target[:, start : start + tensor.shape[1]].copy_(tensor)

    def pack(self) -> None:
        if self.ops.w4a16 is not None:
            return
        from app.engine.kernels.w4a16_reference import dequantize

        weight = dequantize(self.qweight.data, self.qzeros.data, self.scales.data, self.group_size).t()
        self.weight = nn.Parameter(weight.to(self.dtype).contiguous(), requires_grad=False)
        self.qweight = self.qzeros = self.scales = None
        super().pack()

    def shard_index(self, kind: str, shape: Sequence[int], split: Split) -> Index | None:
        """Column-parallel: whole 8-column words and their scales; row-parallel: whole groups of rows."""
        if kind == "bias":
            return dense_index(kind, shape, split)
        if split.along == "out":
            return (slice(None), equal_part(shape[1], split))
        return (equal_part(shape[0], split),)

    def forward_silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.qweight is None or self.ops.w4a16_silu_mul is None:
            return super().forward_silu_mul(gate_up)
        y = self.ops.w4a16_silu_mul(gate_up.reshape(-1, 2 * self.in_features), self.qweight, self.qzeros,
                                    self.scales, self.group_size)
        return self._finish(y.view(*gate_up.shape[:-1], self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qweight is None:
            return super().forward(x)
        y = self.ops.w4a16(x.reshape(-1, self.in_features), self.qweight, self.qzeros, self.scales, self.group_size)
        return self._finish(y.view(*x.shape[:-1], self.out_features))

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        """The bias, and under tensor parallelism the sum over the ranks."""
        if self.bias is not None:
            y.add_(self.bias)
        return y if self.reduce is None else self.reduce(y)


def linear_class(quant_group_size: int | None) -> Callable[..., Linear]:
    """The linear to build for a model's projections: AWQ when its checkpoint is quantized."""
    return Linear if quant_group_size is None else partial(AWQLinear, group_size=quant_group_size)
