"""The sampling race on the GPU: argmax over kept tokens of scaled logit + Gumbel noise.

The torch version (app/engine/sampling.race) builds the noise as [rows, vocab] int64 tensors, a
few GB of memory traffic per step at batch 256 with a 128k vocabulary; here each program hashes
its tokens' noise in registers and reads the logits once. Same hash, same formula: the tokens
drawn are the torch version's. Grid (row, vocabulary slice); a small torch reduction picks each
row's best slice (the first on ties, as torch.argmax).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SLICE = 8192  # vocabulary entries per program
BLOCK = 1024


@triton.jit
def _hash32(x):
    """sampling._hash32 in int64: products wrap, the low 32 bits are exact."""
    x = x & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def _race_kernel(scaled_ptr, floors_ptr, keys_ptr, best_score_ptr, best_token_ptr, vocab, stride, num_slices,
                 SLICE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    floor = tl.load(floors_ptr + row)
    key = tl.load(keys_ptr + row).to(tl.int64)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_token = tl.zeros([BLOCK], tl.int64)
    for start in range(part * SLICE, part * SLICE + SLICE, BLOCK):
        token = start + tl.arange(0, BLOCK).to(tl.int64)
        ok = token < vocab
        s = tl.load(scaled_ptr + row * stride + token, mask=ok, other=float("-inf"))
        bits = _hash32(token + key) >> 8
        u = (bits.to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        score = tl.where(ok & (s >= floor), s - tl.log(-tl.log(u)), float("-inf"))
        better = score > best  # strictly: an earlier token keeps a tie
        best = tl.where(better, score, best)
        best_token = tl.where(better, token, best_token)
    top = tl.max(best, axis=0)
    # Among lanes holding the top score, the smallest token (the first, as argmax).
    first = tl.min(tl.where(best == top, best_token, vocab), axis=0)
    tl.store(best_score_ptr + row * num_slices + part, top)
    tl.store(best_token_ptr + row * num_slices + part, first)


def race(scaled: torch.Tensor, floors: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """sampling.race on the GPU: scaled [R, V] fp32 (unit last stride), floors [R] fp32, keys [R]
    int64 -> [R] int64 tokens."""
    rows, vocab = scaled.shape
    if scaled.stride(-1) != 1:
        scaled = scaled.contiguous()
    slices = triton.cdiv(vocab, SLICE)
    best_score = torch.empty((rows, slices), dtype=torch.float32, device=scaled.device)
    best_token = torch.empty((rows, slices), dtype=torch.int64, device=scaled.device)
    if rows:
        _race_kernel[(rows, slices)](
            scaled, floors.float().contiguous(), keys.contiguous(), best_score, best_token, vocab, scaled.stride(0),
            slices, SLICE=SLICE, BLOCK=BLOCK, num_warps=4,
        )
    return best_token.gather(1, best_score.argmax(dim=1, keepdim=True)).squeeze(1)
