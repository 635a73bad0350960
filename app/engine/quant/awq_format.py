"""The Hugging Face AWQ ("gemm" version) tensor layout: the one format module for packing and unpacking.

A linear with ``K`` inputs and ``N`` outputs, quantized in groups of ``G`` inputs, is stored as
``qweight`` int32 [K, N // 8], ``qzeros`` int32 [K // G, N // 8] and ``scales`` fp16 [K // G, N], with
``W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]`` (``W`` is the transpose of ``nn.Linear.weight``).
Each int32 packs the 4-bit values of 8 consecutive output columns ``n0..n0+7``: nibble ``i`` (bits
``4i..4i+3``) holds column ``n0 + AWQ_ORDER[i]``. The interleaving is what AWQ's GEMM kernels expect,
so checkpoints written with it load in transformers, vLLM and LMDeploy.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
PACK = 8  # 4-bit values per int32
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)  # nibble i's place
# Column j of a word sits in nibble AWQ_ORDER.index(j): this shift brings it down to bits 0..3.
_COLUMN_SHIFTS = tuple(4 * AWQ_ORDER.index(j) for j in range(PACK))


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """[R, C] integers in 0..15 -> int32 [R, C // 8] in AWQ nibble order."""
    rows, cols = values.shape
    if cols % PACK:
        raise ValueError(f"cannot pack {cols} columns: not a multiple of {PACK}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 15):
        raise ValueError("4-bit values must lie in 0..15")
    nibbles = values.to(torch.int64).reshape(rows, cols // PACK, PACK)[:, :, list(AWQ_ORDER)]
    words = (nibbles << _SHIFTS.to(values.device)).sum(dim=-1)  # < 2**32, exact in int64
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same bits, signed


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C // 8] in AWQ nibble order -> uint8 [R, C] values in 0..15 (inverse of pack_int4)."""
    if packed.dtype != torch.int32:
        raise TypeError(f"packed 4-bit values must be int32, got {packed.dtype}")
    rows, words = packed.shape
    shifts = torch.tensor(_COLUMN_SHIFTS, dtype=torch.int32, device=packed.device)
    nibbles = torch.bitwise_right_shift(packed.unsqueeze(-1), shifts).bitwise_and_(0xF)  # sign bits masked off
    return nibbles.view(rows, words * PACK).to(torch.uint8)


def pack_linear(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """Quantized weight in nn.Linear orientation (q [N, K], zeros and scales [N, K // G]) -> the
    checkpoint tensors {qweight, qzeros, scales}."""
    return {
        "qweight": pack_int4(q.t()),
        "qzeros": pack_int4(zeros.t()),
        "scales": scales.t().to(torch.float16).contiguous(),
    }


def unpack_linear(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Checkpoint tensors -> the dequantized weight in nn.Linear orientation [N, K], float32."""
    in_features = qweight.shape[0]
    group_size = in_features // scales.shape[0]
    q = unpack_int4(qweight).float()
    zeros = unpack_int4(qzeros).float().repeat_interleave(group_size, dim=0)
    return ((q - zeros) * scales.float().repeat_interleave(group_size, dim=0)).t().contiguous()
