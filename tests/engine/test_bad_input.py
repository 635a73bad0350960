"""Bad input gets one clear error, and the engine keeps serving the requests it has."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.engine import Engine, EngineConfig, GenerationConfig
from app.engine.errors import ModelLoadError, ModelNotFoundError, UnsupportedModelError


@pytest.fixture(scope="module")
def engine(tiny_model_factory):
    folder, _ = tiny_model_factory("qwen2")
    with Engine() as engine:
        engine.load(EngineConfig(model=folder, device="cpu", dtype="float32", block_size=16, num_cache_blocks=32,
                                 max_model_len=128)).result()
        yield engine


def broken_copy(tiny_model_factory, tmp_path: Path) -> Path:
    folder, _ = tiny_model_factory("qwen2")
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def long_request(engine: Engine):
    return engine.submit("The quick brown fox", gen=GenerationConfig(temperature=0, max_new_tokens=60, ignore_eos=True))


def assert_still_serving(engine: Engine, handle) -> None:
    """The request that was running during the failure completes normally, and new ones work."""
    done = handle.result()
    assert done.finish_reason == "length" and len(done.token_ids) == 60
    again = engine.submit("Paris is", gen=GenerationConfig(temperature=0, max_new_tokens=4, ignore_eos=True)).result()
    assert len(again.token_ids) == 4


def test_unknown_architecture(engine, tiny_model_factory, tmp_path) -> None:
    folder = broken_copy(tiny_model_factory, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPTBigCodeForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    running = long_request(engine)
    with pytest.raises(UnsupportedModelError) as info:
        engine.load(EngineConfig(model=folder, device="cpu")).result()
    message = str(info.value)
    assert "GPTBigCodeForCausalLM" in message
    assert all(name in message for name in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"))
    assert_still_serving(engine, running)


def test_missing_weights(engine, tiny_model_factory, tmp_path) -> None:
    folder = broken_copy(tiny_model_factory, tmp_path)
    (folder / "model.safetensors").unlink()
    running = long_request(engine)
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        engine.load(EngineConfig(model=folder, device="cpu")).result()
    assert_still_serving(engine, running)


def test_missing_shard(engine, tiny_model_factory, tmp_path) -> None:
    folder = broken_copy(tiny_model_factory, tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors"):
        engine.load(EngineConfig(model=folder, device="cpu")).result()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights(engine, tiny_model_factory, tmp_path, damage) -> None:
    folder = broken_copy(tiny_model_factory, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00\x01garbage" * 100)
    running = long_request(engine)
    with pytest.raises(ModelLoadError, match="truncated" if damage == "truncated" else "not a valid safetensors"):
        engine.load(EngineConfig(model=folder, device="cpu")).result()
    assert_still_serving(engine, running)


def test_nonexistent_path(engine, tmp_path) -> None:
    running = long_request(engine)
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        engine.load(EngineConfig(model=tmp_path / "nope", device="cpu")).result()
    assert_still_serving(engine, running)


def test_prompt_longer_than_context(engine) -> None:
    running = long_request(engine)
    too_long = engine.submit(token_ids=[5] * 500, gen=GenerationConfig(max_new_tokens=4))
    final = list(too_long)[-1]
    assert final.finish_reason == "error" and final.error_type == "ContextOverflowError"  # the app says so plainly
    assert "500 tokens" in final.error and "128" in final.error
    assert_still_serving(engine, running)


def test_bad_sampling_values(engine) -> None:
    final = list(engine.submit("hi", gen=GenerationConfig(top_p=0.0)))[-1]
    assert final.finish_reason == "error" and "top_p" in final.error and final.error_type == "RequestError"


def test_no_model_loaded() -> None:
    with Engine() as empty:
        final = list(empty.submit("hi"))[-1]
        assert final.error == "no model is loaded"
