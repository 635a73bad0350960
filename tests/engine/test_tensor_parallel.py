"""Tensor parallelism on the CPU (gloo): a model split over 2 (or 4) ranks gives the greedy tokens
and the logits (fp32, <= 1e-4) of the whole model on one rank, through prefill chunks, prefix-cache
hits and decodes; the fused Triton decode layer does too (under TRITON_INTERPRET=1); a rank killed
mid-reply fails the request with a reason naming the rank, and the engine stays up for the next load."""

from __future__ import annotations

import itertools
import os
import queue
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

if not torch.cuda.is_available():  # before the Triton kernels are first imported (see test_triton_engine)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from app.engine import Delta, Engine, EngineConfig, GenerationConfig
from app.engine.distributed.parallel_state import Shard
from app.engine.distributed.sharding import Split, dense_index, heads_split, local_heads
from app.engine.engine_core import EngineCore
from app.engine.errors import UnsupportedModelError
from app.engine.loader.model_loader import check_model_folder
from tests import tiny_models

TOLERANCE = 1e-4
OPTIONS = dict(block_size=16, prefill_chunk_size=16, max_num_batched_tokens=48, max_num_seqs=8, num_cache_blocks=64)


@contextmanager
def engine_core(folder, tensor_parallel: int, **options) -> Iterator[EngineCore]:
    core = tiny_models.make_core(folder, tensor_parallel=tensor_parallel, **{**OPTIONS, **options})
    try:
        yield core
    finally:
        core.close()


def generate(core: EngineCore, prompts: list[list[int]], new_tokens: int = 12) -> list[tuple[list[int], Delta]]:
    """Greedy replies (their tokens, and the last delta with the logits): the first prompt alone
    (so the rest may hit the prefix cache), then the others as one batch."""
    tokens: dict[int, list[int]] = {}
    finals: dict[int, Delta] = {}

    def on_delta(delta: Delta) -> None:
        tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
        if delta.finished:
            finals[delta.request_id] = delta

    gen = GenerationConfig(temperature=0, max_new_tokens=new_tokens, ignore_eos=True, output_logits=True)
    for batch in (prompts[:1], prompts[1:]):
        for ids in batch:
            core.add_request(ids, gen, on_delta)
        while core.has_work():
            core.step()
    assert core.failure is None
    return [(tokens[i], finals[i]) for i in sorted(finals)]


def compare(folder, prompts: list[list[int]], tensor_parallel: int, **options) -> list[tuple[list[int], Delta]]:
    """Checks the split model's replies against the whole one's; returns the split's."""
    with engine_core(folder, 1, **options) as core:
        whole = generate(core, prompts)
    with engine_core(folder, tensor_parallel, **options) as core:
        split = generate(core, prompts)
    assert_same(whole, split)
    return split


def prompts_for(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(3, vocab, (40,), generator=g).tolist()
    return [shared, shared + torch.randint(3, vocab, (9,), generator=g).tolist(),
            torch.randint(3, vocab, (37,), generator=g).tolist(), torch.randint(3, vocab, (5,), generator=g).tolist()]


def assert_same(whole: list[tuple[list[int], Delta]], split: list[tuple[list[int], Delta]]) -> None:
    for (tokens, final), (split_tokens, split_final) in zip(whole, split, strict=True):
        assert split_final.error is None and split_final.finish_reason == "length"
        assert split_tokens == tokens
        assert (torch.stack(split_final.logits).cpu() - torch.stack(final.logits).cpu()).abs().max().item() <= TOLERANCE


# The tokenizer's 317 tokens do not split over 2 ranks (rank 0 computes all logits); a vocabulary
# padded to 320 does (each rank its half of the LM head, or of the tied embeddings, then gathered).
# llama-bias: o_proj and down_proj biases, added once (by rank 0); qwen2: q/k/v biases, split with
# the heads; qwen3: q/k norms and tied embeddings.
@pytest.mark.parametrize("variant, vocab", [("llama", 320), ("llama-bias", None), ("qwen2", None), ("qwen3", 320)])
def test_two_ranks_match_one(variant: str, vocab: int | None, tiny_model_factory) -> None:
    folder, hf = tiny_model_factory(variant, **({"vocab_size": vocab} if vocab else {}))
    assert (hf.config.vocab_size % 2 == 0) == (vocab is not None)
    split = compare(folder, prompts_for(hf.config.vocab_size), 2)
    assert split[1][1].stats.cached_prompt_tokens == 32  # from the prefix cache, as in the whole model


def test_four_ranks_share_the_two_kv_heads(tiny_model_factory) -> None:
    """4 query and 2 key/value heads over 4 ranks: each key/value head (and its bias) on two ranks."""
    folder, hf = tiny_model_factory("qwen2")
    compare(folder, prompts_for(hf.config.vocab_size)[:2], 4)


def test_an_int8_cache_splits_with_the_heads(tiny_model_factory) -> None:
    """Each rank quantizes its own heads' rows: the split model's replies equal the whole one's."""
    folder, hf = tiny_model_factory("qwen2")
    compare(folder, prompts_for(hf.config.vocab_size)[:2], 2, kv_cache_dtype="int8")


@pytest.mark.skipif(sys.platform != "linux", reason="Triton is installed on Linux only")
def test_fused_triton_decode_sums_over_ranks(tiny_model_factory) -> None:
    """One sequence decoding runs the fused Triton layer, which sums the ranks' o_proj and
    down_proj outputs between its kernels (on CPU tensors under the Triton interpreter, which
    the spawned rank inherits)."""
    if 0 < torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs, or none (then the Triton interpreter runs it)")
    folder, hf = tiny_model_factory("qwen3")
    prompt = prompts_for(hf.config.vocab_size)[3:]
    options = dict(kernels="triton", device="cuda" if torch.cuda.is_available() else "cpu")
    with engine_core(folder, 1, **options) as core:
        whole = generate(core, prompt, new_tokens=4)
    with engine_core(folder, 2, **options) as core:
        assert core.loaded.model.fused_layers is not None  # bound, so one-sequence decodes take it
        assert_same(whole, generate(core, prompt, new_tokens=4))


def test_sharding_rules() -> None:
    """Which part of a checkpoint tensor a rank reads (the rules the tests above check end to end)."""
    assert [heads_split(2, Shard(rank, 4)) for rank in range(4)] == [Split("out", i, 2) for i in (0, 0, 1, 1)]
    assert [local_heads(8, Shard(rank, 4)) for rank in range(4)] == [2] * 4
    columns, rows = Split("out", 1, 2), Split("in", 1, 2)
    assert dense_index("weight", (8, 6), columns) == (slice(4, 8),)
    assert dense_index("bias", (8,), columns) == (slice(4, 8),)
    assert dense_index("weight", (8, 6), rows) == (slice(None), slice(3, 6))
    assert dense_index("bias", (8,), rows) is None and dense_index("bias", (8,), Split("in", 0, 2)) == ()


def test_a_split_the_model_cannot_take_is_refused(tiny_model_factory) -> None:
    folder, _ = tiny_model_factory("llama")  # 4 attention heads, 2 key/value heads, MLP 128
    with pytest.raises(UnsupportedModelError, match="tensor_parallel=8 must divide its 4 attention heads"):
        check_model_folder(folder, tensor_parallel=8)
    with pytest.raises(ValueError, match="tensor_parallel must be one of"):
        EngineConfig(model=folder, tensor_parallel=3)


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def kill_a_rank_mid_reply(folder, **options) -> None:
    """Kills rank 1 (SIGKILL: nothing gets to clean up or report) from the reply's third delta,
    on the engine thread, so surely mid-reply: the reply fails with the rank named, the engine
    unloads the model and takes the next load."""
    config = EngineConfig(model=folder, dtype="float32", tensor_parallel=2, **{**OPTIONS, **options})
    with Engine() as engine:
        engine.load(config).result(timeout=120)
        rank1 = engine._core.loaded.workers.processes[0]
        deltas: queue.Queue = queue.Queue()
        seen = itertools.count(1)

        def on_delta(delta) -> None:
            deltas.put(delta)
            if next(seen) == 3:
                rank1.kill()

        gen = GenerationConfig(temperature=0, max_new_tokens=200, ignore_eos=True)
        engine.submit("The quick brown fox", gen=gen, on_delta=on_delta)
        before = [deltas.get(timeout=30) for _ in range(3)]
        while not (final := deltas.get(timeout=60)).finished:
            pass
        assert final.finish_reason == "error" and final.error_type == "TensorParallelError"
        assert "rank 1" in final.error and "died" in final.error, final.error
        _wait_for(lambda: engine.stats()["state"] == "empty")
        assert "rank 1" in engine.stats()["error"]
        assert list(engine.submit("hi"))[-1].error == "no model is loaded"  # refused, not stuck

        engine.load(config).result(timeout=120)  # a fresh group: the old one is gone
        again = engine.submit("The quick brown fox", gen=GenerationConfig(temperature=0, max_new_tokens=3))
        assert again.result().token_ids == [t for d in before for t in d.token_ids]


def test_killed_rank_fails_the_reply_and_the_engine_loads_again(tiny_model_factory) -> None:
    kill_a_rank_mid_reply(tiny_model_factory("llama")[0], device="cpu")


def test_awq_weights_split_along_whole_words_and_groups(tiny_model_factory, tmp_path) -> None:
    """An AWQ checkpoint over 2 ranks: column-parallel layers take whole 8-column words (and their
    scales), row-parallel ones whole groups of input rows; the replies match the whole model's."""
    from tests.engine.test_awq_checkpoints import GROUP, write_awq

    source, hf = tiny_model_factory("llama", vocab_size=320)
    assert hf.config.hidden_size // 2 % GROUP == 0 and hf.config.intermediate_size // 2 % GROUP == 0
    write_awq(source, hf, tmp_path / "awq")
    compare(tmp_path / "awq", prompts_for(320), 2)


def test_named_gpus() -> None:
    """EngineConfig.gpus: the GPUs of a split model, rank by rank (Settings' picked GPUs)."""
    from app.engine.distributed.parallel_state import rank_device

    config = EngineConfig(model="m", tensor_parallel=2, gpus=(1, 3))
    assert [rank_device(torch.device("cuda", 1), r, config.gpus) for r in (0, 1)] == [
        torch.device("cuda", 1), torch.device("cuda", 3)]
    assert rank_device(torch.device("cuda", 2), 1) == torch.device("cuda", 3)  # none named: the next ones
    assert rank_device(torch.device("cpu"), 1, (0, 1)) == torch.device("cpu")
    for bad in ((1,), (1, 1), (0, -1)):
        with pytest.raises(ValueError, match="different GPUs"):
            EngineConfig(model="m", tensor_parallel=2, gpus=bad)
