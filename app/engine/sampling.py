"""Turning logits into next tokens, on the logits' device, for a batch with mixed settings.

Order as in HF generate: repetition penalty, then temperature, top-k, top-p, min-p.
Randomness is counter-based: the noise for (seed, step, token) is a fixed hash, so a seeded
request gives the same text whatever shares its batch, on any device, with no generator state
to carry (a device kernel can reproduce it bit for bit).
"""

from __future__ import annotations

import torch

from app.engine.sequence import Sequence

NEG_INF = float("-inf")
_MASK32 = 0xFFFFFFFF


def apply_repetition_penalty(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    for i, seq in enumerate(seqs):
        penalty = seq.gen.repetition_penalty
        if penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.token_ids)), device=logits.device)
            picked = logits[i, seen]
            logits[i, seen] = torch.where(picked > 0, picked / penalty, picked * penalty)


def suppress_stop_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Until min_new_tokens are out, end-of-sequence and stop tokens cannot be drawn."""
    for i, seq in enumerate(seqs):
        if seq.num_generated < seq.gen.min_new_tokens and seq.stop_token_ids:
            logits[i, list(seq.stop_token_ids)] = NEG_INF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A well-mixed 32-bit integer hash, computed in int64 (products wrap; low bits are exact)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """U(0, 1) for each (row seed, row step, token id): seeds/steps [B], tokens [B, N] -> [B, N] fp32."""
    row = _hash32(steps + _hash32(seeds ^ (seeds >> 32)))
    bits = _hash32(tokens + row[:, None]) >> 8  # 24 random bits: what fp32 holds exactly
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


def filter_sorted(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """probs [B, N] sorted descending; returns them with tokens outside top-k, top-p (over what
    top-k left, renormalised, as HF's warpers chain) and min-p zeroed. The top token stays."""
    rank = torch.arange(probs.shape[1], device=probs.device)[None, :]
    keep = (top_k[:, None] <= 0) | (rank < top_k[:, None])
    kept = probs * keep
    kept = kept / kept.sum(dim=1, keepdim=True)
    keep &= (torch.cumsum(kept, dim=1) - kept) < top_p[:, None]  # mass of strictly likelier tokens
    keep &= probs >= min_p[:, None] * probs[:, :1]
    keep[:, 0] = True
    return probs * keep


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits: [len(seqs), vocab] float32 (modified in place). Returns one token id per row."""
    apply_repetition_penalty(logits, seqs)
    suppress_stop_tokens(logits, seqs)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, seq in enumerate(seqs) if not seq.gen.greedy]
    if rows:
        dev = logits.device
        gens = [seqs[i].gen for i in rows]
        temperature = torch.tensor([g.temperature for g in gens], device=dev)
        probs = torch.softmax(logits[rows] / temperature[:, None], dim=-1)
        probs, order = probs.sort(dim=-1, descending=True)
        probs = filter_sorted(
            probs,
            torch.tensor([g.top_k for g in gens], device=dev),
            torch.tensor([g.top_p for g in gens], device=dev),
            torch.tensor([g.min_p for g in gens], device=dev),
        )
        noise = uniform_noise(
            torch.tensor([seqs[i].seed for i in rows], device=dev),
            torch.tensor([seqs[i].num_generated for i in rows], device=dev),
            order,
        )
        # Exponential race: argmax(p / E), E ~ Exp(1), draws from p without renormalising.
        choice = torch.argmax(probs / -torch.log(noise), dim=-1)
        tokens[rows] = order.gather(1, choice[:, None]).squeeze(1)
    return tokens.tolist()
