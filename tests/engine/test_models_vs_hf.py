"""Every supported architecture gives HF transformers' logits (fp32, max abs diff <= 1e-4):
prefill and 32 decode steps through the paged cache, a batch of prompts of different lengths,
with prefix-cache hits and prefill chunks forced down to 16 tokens."""

from __future__ import annotations

import pytest
import torch

from app.engine.config import GenerationConfig
from app.engine.engine_core import EngineCore
from tests import tiny_models
from tests.tiny_models import VARIANTS

TOLERANCE = 1e-4
DECODE_STEPS = 32


def make_core(folder, **overrides) -> EngineCore:
    defaults = dict(block_size=16, prefill_chunk_size=16, max_num_batched_tokens=48, max_num_seqs=8,
                     num_cache_blocks=96)
    return tiny_models.make_core(folder, **{**defaults, **overrides})


def generate(core: EngineCore, prompts: list[list[int]]) -> list:
    finals = {}
    for ids in prompts:
        core.add_request(ids, GenerationConfig(temperature=0, max_new_tokens=DECODE_STEPS, ignore_eos=True,
                                               output_logits=True),
                         lambda d: finals.__setitem__(d.request_id, d) if d.finished else None)
    ids_order = sorted(core.requests)
    while core.has_work():
        core.step()
    return [finals[i] for i in ids_order]


def hf_logits(hf_model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """HF logits at the positions that predicted each generated token (teacher forcing)."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt + generated])).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)]


def prompts_for(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(3, vocab, (40,), generator=g).tolist()  # 2.5 blocks of 16
    return [
        shared + torch.randint(3, vocab, (17,), generator=g).tolist(),  # 57 tokens, hits the cached prefix
        torch.randint(3, vocab, (9,), generator=g).tolist(),
        shared[:35],  # two cached full blocks, then 3 tokens of its own
        torch.randint(3, vocab, (70,), generator=g).tolist(),  # five 16-token chunks
    ], shared


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_hf(variant: str, tiny_model_factory) -> None:
    folder, hf_model = tiny_model_factory(variant)
    core = make_core(folder)
    batch, shared = prompts_for(hf_model.config.vocab_size)
    # Cache the shared prefix first, so the batch below starts with prefix-cache hits.
    (warm,) = generate(core, [shared])
    assert warm.stats.cached_prompt_tokens == 0
    finals = generate(core, batch)
    assert [f.stats.cached_prompt_tokens for f in finals] == [32, 0, 32, 0]
    for prompt, final in zip([shared] + batch, [warm] + finals):
        assert final.finish_reason == "length" and len(final.logits) == DECODE_STEPS
        generated = _tokens(core, final)
        ours = torch.stack(final.logits)
        ref = hf_logits(hf_model, prompt, generated)
        assert ref.std() > 0.5  # logits with real spread, so the bound means something
        assert (ours - ref).abs().max().item() <= TOLERANCE
    assert core.blocks.num_free_blocks == core.blocks.num_blocks


def _tokens(core: EngineCore, final) -> list[int]:
    """Greedy tokens are the argmax of the returned logits (the sampler's job, checked here too)."""
    return [int(row.argmax()) for row in final.logits]


def test_sliding_window_is_applied(tiny_model_factory) -> None:
    """The Mistral variant's window (24) is shorter than the context: ignoring it must change logits."""
    folder, hf_model = tiny_model_factory("mistral")
    core = make_core(folder)
    prompt = torch.randint(3, hf_model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    (final,) = generate(core, [prompt])
    hf_model.config.sliding_window = None
    try:
        unwindowed = hf_logits(hf_model, prompt, _tokens(core, final))
    finally:
        hf_model.config.sliding_window = 24
    assert (torch.stack(final.logits) - unwindowed).abs().max().item() > 1e-2


def test_dynamic_rope_matches_hf_generate(tiny_model_factory) -> None:
    """Dynamic NTK scaling depends on the sequence length at each step, so compare with HF's
    own incremental generate rather than one teacher-forced pass."""
    folder, hf_model = tiny_model_factory(
        "llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=32
    )
    core = make_core(folder, prefill_chunk_size=64, max_num_batched_tokens=64, max_model_len=128)
    prompt = torch.randint(3, hf_model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    (final,) = generate(core, [prompt])
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=DECODE_STEPS, min_new_tokens=DECODE_STEPS,
                                do_sample=False, output_logits=True, return_dict_in_generate=True,
                                pad_token_id=0)
    ref = torch.cat(out.logits)
    assert (torch.stack(final.logits) - ref).abs().max().item() <= TOLERANCE
