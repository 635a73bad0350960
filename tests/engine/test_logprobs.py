"""Log-probabilities of sampled tokens (GenerationConfig.logprobs) against HF's own distribution."""

from __future__ import annotations

import pytest
import torch

from app.engine.config import GenerationConfig
from app.engine.errors import RequestError
from tests.tiny_models import make_core


def run(core, prompt: list[int], gen: GenerationConfig) -> list:
    deltas = []
    core.add_request(prompt, gen, deltas.append)
    while core.has_work():
        core.step()
    return deltas


def test_logprobs_are_the_models_distribution(tiny_model_factory) -> None:
    """Each sampled token's logprob and the top 5 are log_softmax of HF's logits at that step
    (fp32, 1e-4), whatever temperature and penalties did to the draw; a batch mate that asked for
    none gets none."""
    folder, hf = tiny_model_factory("llama")
    core = make_core(folder, block_size=8, num_cache_blocks=64)
    prompt = list(range(3, 40))
    gen = GenerationConfig(temperature=0.8, top_k=50, repetition_penalty=1.3, seed=7, max_new_tokens=6,
                           ignore_eos=True, logprobs=5)
    mate = []
    core.add_request(list(range(5, 20)), GenerationConfig(max_new_tokens=6, ignore_eos=True), mate.append)
    deltas = run(core, prompt, gen)
    assert all(d.logprobs is None for d in mate)
    tokens = [t for d in deltas for t in d.token_ids]
    logprobs = [lp for d in deltas for lp in d.logprobs or []]
    assert len(logprobs) == len(tokens) == 6 and [lp.token_id for lp in logprobs] == tokens
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1], dim=-1)
    for step, lp in enumerate(logprobs):
        assert abs(lp.logprob - ref[step, lp.token_id].item()) <= 1e-4
        values, ids = ref[step].topk(5)
        assert [i for i, _, _ in lp.top] == ids.tolist()
        assert max(abs(v - r) for (_, _, v), r in zip(lp.top, values.tolist())) <= 1e-4
        assert lp.text == core.loaded.tokenizer.decode([lp.token_id])


def test_zero_asks_for_the_sampled_token_only(tiny_model_factory) -> None:
    folder, _ = tiny_model_factory("llama")
    core = make_core(folder, block_size=8, num_cache_blocks=64)
    deltas = run(core, list(range(3, 12)), GenerationConfig(temperature=0, max_new_tokens=3, ignore_eos=True,
                                                            logprobs=0))
    logprobs = [lp for d in deltas for lp in d.logprobs or []]
    assert len(logprobs) == 3 and all(lp.top == [] and lp.logprob <= 0 for lp in logprobs)


@pytest.mark.parametrize("count", [-1, 21])
def test_out_of_range(count) -> None:
    with pytest.raises(RequestError, match="logprobs"):
        GenerationConfig(logprobs=count).validate()
