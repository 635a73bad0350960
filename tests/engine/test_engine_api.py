"""The public engine API: streaming on its own thread, cancel, stop conditions, seeds, unload, pipeline."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from app.engine import Engine, EngineConfig, GenerationConfig, pipeline
from app.engine.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory("llama")[0]


@pytest.fixture(scope="module")
def engine(folder):
    with Engine() as engine:
        engine.load(EngineConfig(model=folder, device="cpu", dtype="float32", block_size=16, num_cache_blocks=64)).result()
        yield engine


def greedy(n: int, **extra) -> GenerationConfig:
    return GenerationConfig(temperature=0, max_new_tokens=n, ignore_eos=True, **extra)


def test_stream_delivers_text_and_stats(engine, folder) -> None:
    deltas = list(engine.submit("The quick brown fox", gen=greedy(24)))
    assert len(deltas) == 24 and deltas[-1].finished and not any(d.finished for d in deltas[:-1])
    tokens = [t for d in deltas for t in d.token_ids]
    assert "".join(d.text for d in deltas) == load_tokenizer(folder).decode(tokens, skip_special_tokens=True)
    stats = deltas[-1].stats
    assert stats.completion_tokens == 24 and stats.prompt_tokens > 0
    assert stats.ttft_s > 0 and stats.decode_tokens_per_s > 0


def test_chat_messages_use_the_template(engine) -> None:
    done = engine.submit(messages=[{"role": "user", "content": "hi"}], gen=greedy(3)).result()
    tok_count = done.stats.prompt_tokens
    assert tok_count > 5  # <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n


def test_cancel_mid_stream_frees_the_cache(engine) -> None:
    handle = engine.submit("Once", gen=greedy(200))
    for i, delta in enumerate(handle):
        if i == 3:
            handle.cancel()
    assert handle.final.finish_reason == "cancelled"
    assert handle.final.stats.completion_tokens < 200
    stats = engine.stats()
    assert stats["free_cache_tokens"] == stats["cache_tokens"]


def test_a_failing_listener_ends_its_request_not_the_engine(engine) -> None:
    """An on_delta callback that raises (a server's event loop already closed, say) cancels its own
    request; the engine thread lives on and serves the next one."""
    def gone(delta) -> None:
        raise RuntimeError("Event loop is closed")

    handle, done = engine.submit("Once", gen=greedy(200), on_delta=gone), []
    waiter = threading.Thread(target=lambda: done.append(handle.result()), daemon=True)
    waiter.start()
    waiter.join(30)  # a dead engine thread would never send the final delta
    assert done and done[0].finish_reason == "cancelled"
    assert engine.submit("Once", gen=greedy(3)).result().stats.completion_tokens == 3
    stats = engine.stats()
    assert stats["free_cache_tokens"] == stats["cache_tokens"]


def test_stop_string_and_stop_token(engine) -> None:
    full = engine.submit("The fox", gen=greedy(12)).result()
    stop_text = full.text[3:6]
    stopped = engine.submit("The fox", gen=greedy(12, stop=[stop_text])).result()
    assert stopped.finish_reason == "stop" and stopped.text == full.text[: full.text.index(stop_text)]
    by_token = engine.submit("The fox", gen=greedy(12, stop_token_ids=[full.token_ids[4]])).result()
    assert by_token.finish_reason == "stop" and by_token.token_ids == full.token_ids[:5]


def test_max_new_tokens_and_min_new_tokens(engine, folder) -> None:
    eos = load_tokenizer(folder).eos_token_id
    forced = engine.submit("The fox", gen=GenerationConfig(temperature=0, max_new_tokens=6, min_new_tokens=6)).result()
    assert len(forced.token_ids) == 6 and eos not in forced.token_ids[:5]


def test_same_seed_same_text_whatever_the_batch(engine) -> None:
    gen = GenerationConfig(temperature=1.0, max_new_tokens=20, seed=42, ignore_eos=True)
    alone = engine.submit("Once upon", gen=gen).result().token_ids
    crowd = [engine.submit(f"Other prompt {i}", gen=GenerationConfig(temperature=1.0, max_new_tokens=30, seed=i))
             for i in range(4)]
    together = engine.submit("Once upon", gen=gen).result().token_ids
    for h in crowd:
        h.result()
    assert alone == together
    other_seed = engine.submit("Once upon", gen=GenerationConfig(temperature=1.0, max_new_tokens=20, seed=7,
                                                                 ignore_eos=True)).result().token_ids
    assert other_seed != alone


def test_unload_really_frees_the_model(folder) -> None:
    with Engine() as engine:
        engine.load(EngineConfig(model=folder, device="cpu", num_cache_blocks=8)).result()
        model_ref = weakref.ref(engine._core.loaded.model)
        cache_ref = weakref.ref(engine._core.loaded.cache)
        engine.unload().result()
        gc.collect()
        assert model_ref() is None and cache_ref() is None
        assert engine.stats()["state"] == "empty"
        assert list(engine.submit("hi"))[-1].error == "no model is loaded"


def test_pipeline_prompts_and_messages(folder) -> None:
    with pipeline(folder, device="cpu", dtype="float32", num_cache_blocks=32) as pipe:
        one = pipe("The quick", temperature=0, max_new_tokens=5, ignore_eos=True)
        many = pipe(["The quick", [{"role": "user", "content": "hello"}]], temperature=0, max_new_tokens=5,
                    ignore_eos=True)
        assert len(one.token_ids) == 5
        assert many[0].token_ids == one.token_ids and len(many) == 2


@pytest.mark.parametrize("chunk", [64, 512])
def test_the_warm_up_runs_a_step_as_long_as_the_kernels_switch_at(tiny_model_factory, chunk) -> None:
    """The warm-up at load (on a GPU; called by hand here) runs one step of WARM_UP_ROWS rows, past
    every row count at which the kernel choice changes (the expansion of 4-bit weights, a Triton
    kernel, first runs there), whatever the chunk size; and leaves the engine idle."""
    from app.engine.kernels import WARM_UP_ROWS
    from tests.tiny_models import make_core

    folder, _ = tiny_model_factory("llama")
    core = make_core(folder, prefill_chunk_size=chunk, max_num_batched_tokens=512, num_cache_blocks=64)
    rows, forward = [], core.runner._forward
    core.runner._forward = lambda inputs, *args: rows.append(len(inputs.ids)) or forward(inputs, *args)
    core._warm_up()
    assert max(rows) >= WARM_UP_ROWS
    assert not core.has_work() and core.generated_tokens == 0 and core.blocks.num_free_blocks == core.blocks.num_blocks
