"""Turning logits into next tokens, on the logits' device, for a batch with mixed settings.

Order as in HF generate: repetition penalty, then temperature, top-k, top-p, min-p. Seeded
requests draw from their own generator, one draw per token, so the same seed gives the same
text whatever else shares the batch.
"""

from __future__ import annotations

import torch

from app.engine.sequence import Sequence

NEG_INF = float("-inf")


def apply_repetition_penalty(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    rows = [i for i, s in enumerate(seqs) if s.gen.repetition_penalty != 1.0]
    for i in rows:
        seen = torch.tensor(sorted(set(seqs[i].token_ids)), device=logits.device)
        penalty = seqs[i].gen.repetition_penalty
        picked = logits[i, seen]
        logits[i, seen] = torch.where(picked > 0, picked / penalty, picked * penalty)


def suppress_stop_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Until min_new_tokens are out, end-of-sequence and stop tokens cannot be drawn."""
    for i, seq in enumerate(seqs):
        if seq.num_generated < seq.gen.min_new_tokens and seq.stop_token_ids:
            logits[i, list(seq.stop_token_ids)] = NEG_INF


def _filter(probs_sorted: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """Zeroes tokens outside top-k / top-p / min-p; the most likely token always survives."""
    gen = seq.gen
    keep = torch.ones_like(probs_sorted, dtype=torch.bool)
    if gen.top_k > 0:
        keep[gen.top_k :] = False
    if gen.top_p < 1.0:  # over what top-k left, renormalised (as HF's warpers chain)
        probs = probs_sorted * keep
        probs = probs / probs.sum()
        before = torch.cumsum(probs, 0) - probs  # mass of strictly more likely tokens
        keep &= before < gen.top_p
    if gen.min_p > 0.0:
        keep &= probs_sorted >= gen.min_p * probs_sorted[0]
    keep[0] = True
    return probs_sorted * keep


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits: [len(seqs), vocab] float32 (modified in place). Returns one token id per row."""
    apply_repetition_penalty(logits, seqs)
    suppress_stop_tokens(logits, seqs)
    tokens = logits.argmax(dim=-1)
    for i, seq in enumerate(seqs):
        if seq.gen.greedy:
            continue
        probs = torch.softmax(logits[i] / seq.gen.temperature, dim=-1)
        probs_sorted, order = probs.sort(descending=True)
        if seq.gen.top_k > 0:
            probs_sorted, order = probs_sorted[: seq.gen.top_k], order[: seq.gen.top_k]
        filtered = _filter(probs_sorted, seq)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p without renormalising.
        noise = torch.empty_like(filtered).exponential_(generator=seq.generator)
        tokens[i] = order[torch.argmax(filtered / noise)]
    return tokens.tolist()
