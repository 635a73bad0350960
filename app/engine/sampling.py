"""Turning logits into next tokens, on the logits' device, for a batch with mixed settings.

Order as in HF generate: repetition penalty, then temperature, top-k, top-p, min-p. The filters
become one floor per row (the smallest scaled logit kept), found from the top candidates
(torch.topk) without sorting the vocabulary; a row whose top-p cut lies beyond them (a very
flat distribution) falls back to a full sort. The draw is a Gumbel-max race over the kept
tokens: argmax(s + g), g = -log(-log u), which samples softmax(s) restricted to them.

Randomness is counter-based: u for (seed, step, token) is a fixed hash, so a seeded request
gives the same text whatever shares its batch, on any device, with no generator state to carry.
The race itself is an Ops field: this file's torch version, or a Triton kernel on the GPU that
computes u on the fly and reads the logits once.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from app.engine.sequence import Sequence

NEG_INF = float("-inf")
_MASK32 = 0xFFFFFFFF
CANDIDATES = 1024  # top tokens examined for top-k/top-p before falling back to a full sort


def apply_repetition_penalty(logits: torch.Tensor, seqs: list[Sequence], pending: torch.Tensor | None = None) -> None:
    """Penalises every token a row has seen. A placeholder (a token sampled by the step still on
    the device, see Sequence) counts as the token in ``pending`` it stands for."""
    for i, seq in enumerate(seqs):
        penalty = seq.gen.repetition_penalty
        if penalty == 1.0:
            continue
        seen = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        known = [t for t in seq.token_ids if t >= 0]
        seen[torch.tensor(known, dtype=torch.long, device=logits.device)] = True
        placeholders = [-t - 1 for t in seq.token_ids if t < 0]
        if placeholders:
            seen[pending[torch.tensor(placeholders, device=pending.device)].to(logits.device)] = True
        row = logits[i]
        logits[i] = torch.where(seen, torch.where(row > 0, row / penalty, row * penalty), row)


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


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per (seed, step): the part of the noise hash shared by a row's tokens."""
    return _hash32(steps + _hash32(seeds ^ (seeds >> 32)))


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """U(0, 1) for each (row seed, row step, token id): seeds/steps [B], tokens [B, N] -> [B, N] fp32."""
    bits = _hash32(tokens + row_keys(seeds, steps)[:, None]) >> 8  # 24 random bits: what fp32 holds exactly
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


def race(scaled: torch.Tensor, floors: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The torch race: for each row of scaled logits [R, V], argmax over tokens with
    scaled >= floor of scaled + Gumbel noise keyed by (row key, token id). Returns [R] int64."""
    tokens = torch.arange(scaled.shape[1], device=scaled.device)[None, :]
    bits = _hash32(tokens + keys[:, None]) >> 8
    u = (bits.float() + 0.5) * (1.0 / (1 << 24))
    score = scaled - torch.log(-torch.log(u))
    return torch.where(scaled >= floors[:, None], score, NEG_INF).argmax(dim=1)


def _sorted_floor(values: torch.Tensor, lse: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  complete: bool):
    """values [R, C]: each row's top scaled logits, descending (complete: the whole vocabulary).
    Returns (floor, covered): the smallest value top-k and top-p (over what top-k left,
    renormalised, as HF's warpers chain) keep, and whether the cut surely lies among them."""
    rank = torch.arange(values.shape[1], device=values.device)[None, :]
    use_k = (top_k > 0)[:, None]
    keep_k = ~use_k | (rank < top_k[:, None])
    # Probabilities: over the top-k set where top-k applies, else over the whole vocabulary.
    kept = torch.where(keep_k, values, NEG_INF)
    norm = torch.where(use_k[:, 0], torch.logsumexp(kept, dim=1), lse)
    probs = torch.exp(kept - norm[:, None])
    keep = keep_k & ((torch.cumsum(probs, dim=1) - probs) < top_p[:, None])  # mass of likelier tokens
    keep[:, 0] = True
    floor = torch.where(keep, values, float("inf")).min(dim=1).values
    covered = use_k[:, 0] | ~keep[:, -1] | complete
    return floor, covered


def keep_floors(scaled: torch.Tensor, top_k: list[int], top_p: list[float], min_p: list[float]) -> torch.Tensor:
    """Per row of scaled logits [R, V], the smallest value top-k, top-p and min-p keep (-inf: all)."""
    rows, vocab = scaled.shape
    dev = scaled.device
    floors = torch.full((rows,), NEG_INF, device=dev)
    top = scaled.max(dim=1).values
    log_min_p = torch.tensor([math.log(p) if p > 0 else NEG_INF for p in min_p], device=dev)
    floors = torch.maximum(floors, top + log_min_p)  # p >= min_p * p_max  <=>  s >= s_max + log(min_p)
    cut = [i for i in range(rows) if 0 < top_k[i] < vocab or top_p[i] < 1.0]
    if not cut:
        return floors
    k = torch.tensor([top_k[i] if 0 < top_k[i] < vocab else 0 for i in cut], device=dev)
    p = torch.tensor([top_p[i] for i in cut], device=dev)
    sub = scaled[cut]
    lse = torch.logsumexp(sub, dim=1)
    width = min(vocab, max(CANDIDATES, int(k.max())))
    floor, covered = _sorted_floor(sub.topk(width, dim=1).values, lse, k, p, width == vocab)
    if not bool(covered.all()):  # rare: a flat row whose top-p cut lies past the candidates
        wide = (~covered).nonzero().flatten()
        full = sub[wide].sort(dim=1, descending=True).values
        floor[wide], _ = _sorted_floor(full, lse[wide], k[wide], p[wide], True)
    floors[cut] = torch.maximum(floors[cut], floor)
    return floors


RaceFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sample(logits: torch.Tensor, seqs: list[Sequence], pending: torch.Tensor | None = None,
           race_fn: RaceFn = race) -> torch.Tensor:
    """logits: [len(seqs), vocab] float32 (modified in place). Returns one token id per row, as an
    int64 tensor on the logits' device (nothing waits for the device here). ``pending``: the
    tokens placeholders stand for (see apply_repetition_penalty)."""
    apply_repetition_penalty(logits, seqs, pending)
    suppress_stop_tokens(logits, seqs)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, seq in enumerate(seqs) if not seq.gen.greedy]
    if rows:
        dev = logits.device
        gens = [seqs[i].gen for i in rows]
        temperature = torch.tensor([g.temperature for g in gens], device=dev)
        scaled = logits[rows] / temperature[:, None]
        floors = keep_floors(scaled, [g.top_k for g in gens], [g.top_p for g in gens], [g.min_p for g in gens])
        keys = row_keys(torch.tensor([seqs[i].seed for i in rows], device=dev),
                        torch.tensor([seqs[i].num_generated for i in rows], device=dev))
        tokens[rows] = race_fn(scaled, floors, keys)
    return tokens
