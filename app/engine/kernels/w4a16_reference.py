"""AWQ 4-bit weights (Hugging Face "gemm" layout, as AutoAWQ writes it): packing, unpacking and a
torch reference matmul. This is the oracle the Triton and CUDA W4A16 kernels are tested against,
and the CPU path.

For a linear with K inputs, N outputs and group size G (K % G == 0, N % 8 == 0):

- ``qweight``: int32 [K, N // 8]. Word ``[k, j]`` packs the 4-bit values of columns 8j..8j+7 of
  input row k; nibble i (bits 4i..4i+3) holds column ``8j + AWQ_ORDER[i]``.
- ``qzeros``: int32 [K // G, N // 8], the 4-bit zero points, packed the same way.
- ``scales``: float16 [K // G, N].

``W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]`` and ``y = x @ W``.
"""

from __future__ import annotations

import torch

__all__ = [
    "AWQ_ORDER", "AWQ_REVERSE_ORDER", "check_shapes", "dequantize", "pack", "pack_int4", "unpack",
    "unpack_int4", "w4a16_matmul_reference",
]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column AWQ_ORDER[i] of its 8
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j sits in nibble AWQ_REVERSE_ORDER[j]

# Shift that brings column j of a word's 8 down to bits 0..3.
_SHIFTS = tuple(4 * i for i in AWQ_REVERSE_ORDER)
_FLOAT_2_23 = 0x4B000000  # bits of 2.0 ** 23: or-ing a nibble q into them gives the float 2 ** 23 + q


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C // 8] -> int32 [R, C] (values 0..15, columns in natural order)."""
    if packed.dtype != torch.int32:
        raise TypeError(f"packed 4-bit values must be int32, got {packed.dtype}")
    shifts = torch.tensor(_SHIFTS, dtype=torch.int32, device=packed.device)
    nibbles = torch.bitwise_right_shift(packed.unsqueeze(-1), shifts).bitwise_and_(0xF)
    return nibbles.view(packed.shape[0], packed.shape[1] * 8)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """[R, C] integers in 0..15 (C % 8 == 0) -> int32 [R, C // 8] in the AWQ nibble order."""
    rows, cols = values.shape
    if cols % 8:
        raise ValueError(f"columns must be a multiple of 8, got {cols}")
    v = values.to(torch.int64)
    if v.numel() and (v.min() < 0 or v.max() > 15):
        raise ValueError("4-bit values must lie in 0..15")
    v = v.view(rows, cols // 8, 8)[..., list(AWQ_ORDER)]  # nibble i <- column AWQ_ORDER[i]
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=v.device)
    words = (v << shifts).sum(-1)  # the nibbles never overlap, so the sum is their bitwise or
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # wrap to int32


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C // 8] -> uint8 [R, C] (values 0..15), columns in natural order."""
    return _nibbles(packed).to(torch.uint8)


def check_shapes(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> tuple[int, int]:
    """(K, N) of an AWQ weight; raises ValueError when the three tensors do not fit together."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight and qzeros must be int32, got {qweight.dtype} and {qzeros.dtype}")
    if qweight.dim() != 2 or qzeros.dim() != 2 or scales.dim() != 2:
        raise ValueError("qweight, qzeros and scales must be 2-D")
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if group_size <= 0 or k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
    groups = k // group_size
    if tuple(qzeros.shape) != (groups, n // 8) or tuple(scales.shape) != (groups, n):
        raise ValueError(
            f"for qweight {tuple(qweight.shape)} and group_size {group_size}, qzeros must be "
            f"{(groups, n // 8)} and scales {(groups, n)}; got {tuple(qzeros.shape)} and {tuple(scales.shape)}"
        )
    return k, n


def pack(
    qvalues: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [K, N], z [K // G, N], s [K // G, N]) -> (qweight, qzeros, scales as float16)."""
    if qvalues.shape[1] != zeros.shape[1] or zeros.shape != scales.shape or qvalues.shape[0] % zeros.shape[0]:
        raise ValueError(
            f"shapes do not fit: q {tuple(qvalues.shape)}, zeros {tuple(zeros.shape)}, scales {tuple(scales.shape)}"
        )
    return pack_int4(qvalues), pack_int4(zeros), scales.to(torch.float16).contiguous()


def unpack(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight, qzeros) -> (q uint8 [K, N], z uint8 [K // G, N])."""
    return unpack_int4(qweight), unpack_int4(qzeros)


def dequantize(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The weight W [K, N] = (q - z) * s. In float32 (the default) every element is exact: q - z is
    a small integer and s a float16."""
    k, n = check_shapes(qweight, qzeros, scales, group_size)
    groups = k // group_size
    # In place on one int32 buffer (a fresh large tensor costs more in page faults than the
    # arithmetic): or the nibbles into the bits of 2**23, read them as floats 2**23 + q, subtract
    # 2**23 + z (exact), multiply by s.
    w = _nibbles(qweight).bitwise_or_(_FLOAT_2_23).view(torch.float32).view(groups, group_size, n)
    w.sub_(_nibbles(qzeros).to(torch.float32).add_(2.0**23).unsqueeze(1))
    w.mul_(scales.to(torch.float32).unsqueeze(1))
    return w.view(k, n).to(dtype)


def w4a16_matmul_reference(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """y = x @ W in float32 with the exact dequantised weight, rounded once to x's dtype.
    x: [..., K] (fp16, bf16 or fp32); returns [..., N]."""
    w = dequantize(qweight, qzeros, scales, group_size)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {w.shape[0]}")
    return (x.to(torch.float32) @ w).to(x.dtype)
