"""Weight-streaming CPU linear (``y = x @ W.T``) for small-batch decode.

At batch 1..16 a linear layer on CPU is bound by reading the weight from memory.
``csrc/cpu/gemv.c`` streams a weight packed once at load time into 32-row tiles
at close to DRAM bandwidth (AVX-512 BF16 / AVX2 / portable C, picked at run
time) and runs inside torch's own OpenMP pool, so no second thread pool competes
with torch's for the same cores (without OpenMP entry points, e.g. on Windows,
it runs on the calling thread). Past batch ~16 the kernel is compute-bound and
measured on par with oneDNN's GEMM (-5% to +20% time up to 2048 rows), so the
one packed copy also serves prefill.

The kernel lives in the CPU kernel library (:mod:`app.engine.kernels.cpu_library`:
built on first use, or prebuilt, or turned off by ``LMSTATION_NO_CPU_KERNELS=1``).
Without it (no compiler, a failed build, or dtypes other than bf16/fp32) linear
falls back to oneDNN's packed linear, else plain ``F.linear``.

Usage: ``packed = pack_weight(w)`` once (drop ``w`` afterwards: the packed form is
the only copy), then ``linear(x, packed)``. Inference only: no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.engine.kernels import cpu_library

__all__ = ["PackedWeight", "available", "backend", "linear", "pack_weight", "unavailable_reason"]

TILE = 32  # output rows per packed tile; must match TILE in gemv.c
_KERNEL_DTYPES = (torch.bfloat16, torch.float32)


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A weight prepared for :func:`linear`; holds the only copy of it.

    ``kind`` is ``"gemv"`` (tiled layout of gemv.c), ``"onednn"`` (oneDNN-packed
    tensor) or ``"plain"`` (the ``[out, in]`` weight itself).
    """

    data: torch.Tensor
    out_features: int
    in_features: int
    dtype: torch.dtype
    kind: str


def available() -> bool:
    """Whether the C kernel is loaded (building it on first call)."""
    return cpu_library.library().cdll is not None


def unavailable_reason() -> str:
    """Why the C kernel is not in use; empty when it is."""
    return cpu_library.library().reason


def backend() -> str:
    """Instruction set the kernel runs (``avx512bf16``, ``avx2``, ``portable``) or ``torch``."""
    return cpu_library.library().isa or "torch"


def _pack_tiles(w: torch.Tensor) -> torch.Tensor:
    """[out, in] -> gemv.c's tiled layout: bf16 [tiles, in/2, 32, 2], fp32 [tiles, in, 32]."""
    out, inp = w.shape
    tiles = -(-out // TILE)
    bf16 = w.dtype == torch.bfloat16
    cols = inp + (inp % 2 if bf16 else 0)
    if (tiles * TILE, cols) != (out, inp):
        w = F.pad(w, (0, cols - inp, 0, tiles * TILE - out))
    if bf16:
        return w.reshape(tiles, TILE, cols // 2, 2).permute(0, 2, 1, 3).contiguous()
    return w.reshape(tiles, TILE, cols).permute(0, 2, 1).contiguous()


def _onednn_pack(w: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's own packed layout: 1.4-3x faster than F.linear at batch 1-16.

    Packed for batch 16: at batch 1 that is as fast as a batch-1 packing in bf16
    and ~30% faster in fp32.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 16)
        torch.ops.mkldnn._linear_pointwise(w.new_ones(1, w.shape[1]), packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return None
    return packed


def pack_weight(w: torch.Tensor) -> PackedWeight:
    """Prepares a 2-D ``[out, in]`` CPU weight once, at load time."""
    if w.dim() != 2 or w.device.type != "cpu":
        raise ValueError(f"expected a 2-D CPU weight, got shape {tuple(w.shape)} on {w.device}")
    w = w.detach()
    out, inp = w.shape
    if w.dtype in _KERNEL_DTYPES and available():
        return PackedWeight(_pack_tiles(w), out, inp, w.dtype, "gemv")
    packed = _onednn_pack(w.contiguous())
    if packed is not None:
        return PackedWeight(packed, out, inp, w.dtype, "onednn")
    return PackedWeight(w.contiguous(), out, inp, w.dtype, "plain")


def linear(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """``x @ W.T`` for ``x`` of shape ``[..., in]``; the result has ``x``'s dtype."""
    # Decode calls this ~100 times per token, so the common case (2-D x of the
    # weight's dtype) skips every reshape and cast: each costs about a microsecond.
    if x.shape[-1] != packed.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight takes {packed.in_features}")
    if x.dtype != packed.dtype:
        return linear(x.to(packed.dtype), packed).to(x.dtype)
    if x.dim() != 2:
        return linear(x.reshape(-1, packed.in_features), packed).reshape(*x.shape[:-1], packed.out_features)
    if packed.kind == "gemv":
        return _gemv(x, packed)
    if packed.kind == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x, packed.data, None, "none", [], "")
    return F.linear(x, packed.data)


def _gemv(x: torch.Tensor, p: PackedWeight) -> torch.Tensor:
    if not x.is_cpu:  # the C code would read it as host memory
        raise ValueError(f"x is on {x.device}, the weight on the CPU")
    nb = x.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty(nb, p.out_features, dtype=p.dtype)
    if nb == 0:
        return y
    lib = cpu_library.library().cdll
    fn = lib.lms_gemv_bf16 if p.dtype == torch.bfloat16 else lib.lms_gemv_f32
    fn(x.data_ptr(), x.stride(0), nb, p.in_features, p.data.data_ptr(), p.out_features, y.data_ptr(),
       p.out_features, torch.get_num_threads())
    return y
