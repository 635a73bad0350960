"""Continuous batching under pressure gives exactly the tokens of one-at-a-time greedy runs.

200 requests of random lengths arrive over time into a cache far too small for all of them,
so sequences are preempted and recomputed; some are cancelled midway; prompts share prefixes.
Afterwards every block is free again.
"""

from __future__ import annotations

import random

import pytest

from app.engine.config import GenerationConfig
from app.engine.engine_core import EngineCore
from tests import tiny_models

NUM_REQUESTS = 200


def make_core(folder, **overrides) -> EngineCore:
    defaults = dict(block_size=8, prefill_chunk_size=16, max_num_batched_tokens=64, max_num_seqs=16,
                     num_cache_blocks=24)
    return tiny_models.make_core(folder, **{**defaults, **overrides})


def random_requests(vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(7)
    prefixes = [[rng.randrange(3, vocab) for _ in range(24)] for _ in range(4)]
    requests = []
    for _ in range(NUM_REQUESTS):
        own = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))]
        prompt = (rng.choice(prefixes)[: rng.randint(8, 24)] + own) if rng.random() < 0.4 else own
        requests.append((prompt, rng.randint(1, 20)))
    return requests


def gen_config(max_new: int) -> GenerationConfig:
    return GenerationConfig(temperature=0, max_new_tokens=max_new, ignore_eos=True)


def run_one_at_a_time(folder, requests) -> list[list[int]]:
    core = make_core(folder, num_cache_blocks=64, enable_prefix_caching=False)
    results = []
    for prompt, max_new in requests:
        tokens: list[int] = []
        core.add_request(prompt, gen_config(max_new), lambda d: tokens.extend(d.token_ids))
        while core.has_work():
            core.step()
        results.append(tokens)
    return results


@pytest.fixture(scope="module")
def setup(tiny_model_factory):
    folder, hf_model = tiny_model_factory("llama")
    requests = random_requests(hf_model.config.vocab_size)
    return folder, requests, run_one_at_a_time(folder, requests)


def test_batched_run_matches_one_at_a_time(setup) -> None:
    folder, requests, expected = setup
    core = make_core(folder)
    rng = random.Random(11)
    tokens: dict[int, list[int]] = {}
    reasons: dict[int, str] = {}
    index_of: dict[int, int] = {}

    def collect(delta) -> None:
        tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
        if delta.finished:
            reasons[delta.request_id] = delta.finish_reason

    pending = list(enumerate(requests))
    steps = preemptions = 0
    cancelled: set[int] = set()
    while pending or core.has_work():
        for _ in range(rng.randint(0, 4)):  # requests keep arriving while others run
            if pending:
                i, (prompt, max_new) = pending.pop(0)
                index_of[core.add_request(prompt, gen_config(max_new), collect)] = i
        if core.requests and rng.random() < 0.08:  # cancel someone, waiting or running
            victim = rng.choice(sorted(core.requests))
            if core.cancel(victim):
                cancelled.add(victim)
        preemptions = max(preemptions, sum(r.seq.num_preemptions for r in core.requests.values()))
        core.step()
        steps += 1
        assert steps < 20_000
    assert len(reasons) == NUM_REQUESTS
    assert len(cancelled) >= 10 and preemptions > 0
    for request_id, i in index_of.items():
        if request_id in cancelled:
            assert reasons[request_id] == "cancelled"
            assert tokens.get(request_id, []) == expected[i][: len(tokens.get(request_id, []))]
        else:
            assert reasons[request_id] == "length"
            assert tokens[request_id] == expected[i], f"request {i} differs"
    blocks = core.blocks
    assert blocks.num_free_blocks == blocks.num_blocks
    assert all(count == 0 for count in blocks.ref_counts)


def test_cancel_frees_blocks_at_once(setup) -> None:
    folder, requests, _ = setup
    core = make_core(folder)
    request_id = core.add_request(requests[0][0] * 3, gen_config(20), lambda d: None)
    core.step()
    assert core.blocks.num_free_blocks < core.blocks.num_blocks
    core.cancel(request_id)
    assert core.blocks.num_free_blocks == core.blocks.num_blocks


def test_prefill_shares_steps_with_decodes(setup) -> None:
    """A long prompt arriving while another request decodes never stalls it: the prompt is
    prefilled in chunks, and every step still carries the decode."""
    folder, _, _ = setup
    core = make_core(folder, num_cache_blocks=64)
    batches = []
    schedule = core.scheduler.schedule
    core.scheduler.schedule = lambda: batches.append(schedule()) or batches[-1]
    core.add_request([5, 6, 7], gen_config(20), lambda d: None)
    core.step()  # its prefill
    core.add_request(list(range(3, 3 + 120)), gen_config(2), lambda d: None)
    for _ in range(8):
        core.step()
    chunked = batches[1:]
    assert all(b.num_decodes == 1 for b in chunked)
    assert [b.items[-1].num_tokens for b in chunked[:7]] == [16] * 7  # 120 tokens in 16-token chunks


def test_steps_launch_before_the_previous_tokens_are_read(setup) -> None:
    """The device gets step k + 1 before the host reads step k's tokens: after a step, each
    decoding sequence ends in a placeholder for its newest token, the next step feeds it in on
    the device, and a request ending on a stop token shows nothing of the step after it."""
    folder, requests, expected = setup
    i = next(i for i, (_, n) in enumerate(requests) if n >= 6 and expected[i][0] != expected[i][1])
    core = make_core(folder)
    deltas: list = []
    core.add_request(requests[i][0], gen_config(6), deltas.append)
    core.step()
    seq = core.scheduler.running[0]
    assert seq.token_ids[-1] < 0 and core.has_work() and not deltas  # sampled, not yet read
    core.step()
    assert seq.token_ids[-1] < 0 and seq.token_ids[-2] >= 0 and len(deltas) == 1
    while core.has_work():
        core.step()
    assert [t for d in deltas for t in d.token_ids] == expected[i][:6]
    assert deltas[-1].stats.completion_tokens == 6 and min(seq.token_ids) >= 0

    # Stopping on the second token: the third, already launched, is dropped.
    deltas.clear()
    stop = expected[i][1]
    core.add_request(requests[i][0], GenerationConfig(temperature=0, max_new_tokens=6, ignore_eos=True,
                                                      stop_token_ids=[stop]), deltas.append)
    while core.has_work():
        core.step()
    assert [t for d in deltas for t in d.token_ids] == expected[i][:2] and deltas[-1].finish_reason == "stop"
    assert deltas[-1].stats.completion_tokens == 2
    assert core.blocks.num_free_blocks == core.blocks.num_blocks


def test_under_load_requests_join_together_every_few_steps(setup) -> None:
    """With 32+ sequences decoding, waiting requests are admitted every prefill_interval steps
    (so the steps between are pure decodes); with fewer, at once."""
    folder, requests, _ = setup
    core = make_core(folder, max_num_seqs=48, max_num_batched_tokens=256, num_cache_blocks=400, prefill_interval=4)
    batches = []
    schedule = core.scheduler.schedule
    core.scheduler.schedule = lambda: batches.append(schedule()) or batches[-1]
    for i in range(40):
        core.add_request(requests[i][0][:6], gen_config(60), lambda d: None)
    while len(core.scheduler.running) < 40 or any(b.num_decodes < len(b.items) for b in batches[-1:]):
        core.step()
    assert batches[-1].num_decodes == 40
    joined = []
    for _ in range(12):
        core.add_request([5, 6, 7], gen_config(60), lambda d: None)
        core.step()
        joined.append(len(batches[-1].items) - batches[-1].num_decodes)
    steps = [i for i, n in enumerate(joined) if n]
    assert all(b - a == 4 for a, b in zip(steps, steps[1:])), joined  # together, every 4th step
    assert max(joined) == 4 and sum(joined) == 8, joined  # up to max_num_seqs (48)
