"""Rotary position embedding tables, with the rope-scaling types the supported models use."""

from __future__ import annotations

import math

import torch

from app.engine.models.config import RopeConfig


def _base_inv_freq(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: RopeConfig, max_position: int) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths slowed by `factor`, short kept,
    a smooth blend between (Llama 3 paper, section 'Long context')."""
    old_len = rope.original_max_position_embeddings or max_position
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding:
    """Gives (cos, sin) of shape [tokens, head_dim/2] for the tokens' positions.

    Tables cover every position up to ``table_len`` (the engine's context), made once, so a
    step never checks sizes on the host (CUDA graphs replay it as captured).
    ``dynamic`` NTK scaling depends on how long the sequence is: a sequence past the trained
    context gets a larger base for the tokens computed in that step (as HF does per forward).
    """

    def __init__(
        self, head_dim: int, rope: RopeConfig, max_position: int, table_len: int, dtype: torch.dtype,
        device: torch.device,
    ):
        self.head_dim, self.rope, self.max_position = head_dim, rope, max_position
        inv_freq = _base_inv_freq(head_dim, rope.theta)
        if rope.type == "linear":
            inv_freq = inv_freq / rope.factor
        elif rope.type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope, max_position)
        freqs = torch.outer(torch.arange(table_len, dtype=torch.float32), inv_freq)
        # Computed in fp32, kept in the model dtype (the HF models cast the same way): one gather a step.
        self._cos, self._sin = freqs.cos().to(device, dtype), freqs.sin().to(device, dtype)
        self._stream = None  # M-RoPE: which position (time, row, column) turns each rotation pair
        if rope.mrope_section:
            if sum(rope.mrope_section) != head_dim // 2:
                raise ValueError(f"mrope_section {rope.mrope_section} does not cover the {head_dim // 2} rotation pairs")
            self._stream = torch.repeat_interleave(torch.arange(len(rope.mrope_section)),
                                                   torch.tensor(rope.mrope_section)).to(device)

    def __call__(
        self, positions: torch.Tensor, seq_lens: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] long, or [3, T] (time, row, column) for M-RoPE. seq_lens: [T] length of
        each token's sequence after this step (only read by dynamic scaling)."""
        if positions.dim() == 2:
            pairs = torch.arange(self._stream.numel(), device=positions.device)
            return (self._cos[positions][self._stream, :, pairs].t().contiguous(),
                    self._sin[positions][self._stream, :, pairs].t().contiguous())
        if self.rope.type == "dynamic" and seq_lens is not None:
            return self._dynamic(positions, seq_lens, dtype)
        return self._cos[positions], self._sin[positions]

    def _dynamic(self, positions: torch.Tensor, seq_lens: torch.Tensor, dtype: torch.dtype):
        dim, factor = self.head_dim, self.rope.factor
        lengths = seq_lens.clamp(min=self.max_position).float()  # within the trained context: the base stays
        base = self.rope.theta * ((factor * lengths / self.max_position) - (factor - 1)) ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, device=positions.device, dtype=torch.int64).float() / dim
        inv_freq = 1.0 / (base[:, None] ** exponents[None, :])
        freqs = positions.float()[:, None] * inv_freq
        return freqs.cos().to(dtype), freqs.sin().to(dtype)
