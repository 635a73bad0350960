"""Sampling against HF's logits processors, and seeds that reproduce whatever shares the batch."""

from __future__ import annotations

import pytest
import torch
from transformers import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from app.engine.config import GenerationConfig
from app.engine.sampling import (CANDIDATES, apply_repetition_penalty, keep_floors, sample, suppress_stop_tokens,
                                 uniform_noise)
from app.engine.sequence import Sequence


def seq(tokens=(1, 2, 3), **gen) -> Sequence:
    s = Sequence(list(tokens), GenerationConfig(**gen))
    s.seed = gen.get("seed") or 0
    return s


def test_repetition_penalty_matches_hf() -> None:
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0)) * 3
    seqs = [seq((1, 4, 4, 9), repetition_penalty=1.3), seq((2, 7), repetition_penalty=0.8)]
    ours = logits.clone()
    apply_repetition_penalty(ours, seqs)
    for i, s in enumerate(seqs):
        ref = RepetitionPenaltyLogitsProcessor(s.gen.repetition_penalty)(torch.tensor([s.token_ids]), logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i], ref[0])


def test_repetition_penalty_counts_tokens_still_on_the_device() -> None:
    """A placeholder (-(row + 1): a token the step in flight sampled) is penalised as the token it stands for."""
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(5)) * 3
    pending = torch.tensor([7, 9])
    ours = logits.clone()
    apply_repetition_penalty(ours, [seq((1, 4, -2), repetition_penalty=1.3)], pending)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([[1, 4, 9]]), logits.clone())
    torch.testing.assert_close(ours, ref)


def _hf_kept(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> set[int]:
    ref = logits[None] / temperature
    for warper in ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else []) + \
                  ([MinPLogitsWarper(min_p)] if min_p else []):
        ref = warper(None, ref)
    return set(torch.nonzero(ref[0] > float("-inf")).flatten().tolist())


@pytest.mark.parametrize("settings", [dict(top_k=5), dict(top_p=0.7), dict(min_p=0.1),
                                      dict(top_k=8, top_p=0.5, min_p=0.05, temperature=0.7)])
def test_filters_keep_the_same_tokens_as_hf(settings) -> None:
    logits = torch.randn(200, generator=torch.Generator().manual_seed(1)) * 2
    g = seq(**settings).gen
    scaled = logits[None] / g.temperature
    floor = keep_floors(scaled, [g.top_k], [g.top_p], [g.min_p])[0]
    kept = set(torch.nonzero(scaled[0] >= floor).flatten().tolist())
    assert kept == _hf_kept(logits, g.temperature, g.top_k, g.top_p, g.min_p)
    assert 0 < len(kept) < 200


@pytest.mark.parametrize("settings", [dict(top_p=0.98), dict(top_k=CANDIDATES + 500, top_p=0.9)])
def test_filters_reach_past_the_candidates(settings) -> None:
    """A flat distribution whose top-p set is larger than the candidates topk looks at (the
    full-sort fallback), and a top-k beyond them, keep exactly HF's tokens too."""
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(3)) * 0.1
    g = seq(**settings).gen
    floors = keep_floors(torch.stack([logits, logits * 20]), [g.top_k] * 2, [g.top_p] * 2, [g.min_p] * 2)
    kept = set(torch.nonzero(logits >= floors[0]).flatten().tolist())
    assert kept == _hf_kept(logits, 1.0, g.top_k, g.top_p, g.min_p)
    assert len(kept) > CANDIDATES
    sharp = set(torch.nonzero(logits * 20 >= floors[1]).flatten().tolist())  # the other row: the fast path
    assert sharp == _hf_kept(logits * 20, 1.0, g.top_k, g.top_p, g.min_p)


def test_samples_follow_the_distribution() -> None:
    """Over many steps (each step keys fresh noise), draws match softmax(logits / T)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    probs = torch.softmax(logits / 0.8, -1)
    s = seq(temperature=0.8, seed=3)
    counts = torch.zeros(5)
    for step in range(4000):
        s.token_ids.append(0)  # one more generated token: the next step's noise
        counts[int(sample(logits[None].clone(), [s])[0])] += 1
    assert (counts / 4000 - probs).abs().max() < 0.03


def test_noise_is_uniform_and_keyed() -> None:
    tokens = torch.arange(50_000)[None]
    u = uniform_noise(torch.tensor([5]), torch.tensor([0]), tokens)[0]
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.02
    other_step = uniform_noise(torch.tensor([5]), torch.tensor([1]), tokens)[0]
    other_seed = uniform_noise(torch.tensor([6]), torch.tensor([0]), tokens)[0]
    assert (u != other_step).float().mean() > 0.99 and (u != other_seed).float().mean() > 0.99


def test_temperature_zero_is_argmax_and_top_k_one_too() -> None:
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    seqs = [seq(temperature=0), seq(temperature=1.5, top_k=1), seq(temperature=0, repetition_penalty=1.0)]
    assert sample(logits.clone(), seqs).tolist() == logits.argmax(-1).tolist()


def test_min_new_tokens_suppresses_stop_tokens() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 7] = 100.0
    s = seq(min_new_tokens=2)
    s.stop_token_ids = frozenset({7})
    suppress_stop_tokens(logits, [s])
    assert logits[0, 7] == float("-inf")


def test_seeded_sampling_is_independent_of_batch_mates() -> None:
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(4))
    draws = []
    for mates in (0, 3):
        s = seq(temperature=1.0, seed=123)
        others = [seq(temperature=1.0, top_k=5, seed=i) for i in range(mates)]
        batch_logits = torch.cat([logits] + [torch.randn(1, 300) for _ in others])
        row = []
        for _ in range(10):
            row.append(int(sample(batch_logits.clone(), [s] + others)[0]))
            s.token_ids.append(row[-1])
        draws.append(row)
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 1


def test_temperature_matches_hf_warper() -> None:
    logits = torch.randn(1, 30)
    ref = TemperatureLogitsWarper(0.5)(None, logits.clone())
    torch.testing.assert_close(torch.softmax(ref, -1)[0], torch.softmax(logits[0] / 0.5, -1))
