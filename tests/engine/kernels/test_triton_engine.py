"""The whole engine on the Triton kernels gives HF's logits (fp32, <= 1e-4): on the GPU box for
real, on CPU under TRITON_INTERPRET=1, so CI checks how the kernels are wired into the model."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine_core import EngineCore
from app.engine.loader.model_loader import load

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("variant", ["llama-bias", "qwen3", "mistral"])
def test_engine_on_triton_kernels_matches_hf(variant: str, tiny_model_factory) -> None:
    folder, hf = tiny_model_factory(variant)
    config = EngineConfig(model=folder, device=DEVICE, dtype="float32", kernels="triton", block_size=16,
                          prefill_chunk_size=16, max_num_batched_tokens=48, max_num_seqs=8, num_cache_blocks=64)
    core = EngineCore(load(config, folder), config)
    assert core.stats()["kernels"] == "triton"
    prompts = [list(range(3, 43)), list(range(50, 59)), list(range(3, 36))]  # the third hits the prefix cache
    finals = {}
    gen = GenerationConfig(temperature=0, max_new_tokens=8, ignore_eos=True, output_logits=True)
    ids = [core.add_request(p, gen, lambda d: finals.__setitem__(d.request_id, d) if d.finished else None)
           for p in prompts[:2]]
    while core.has_work():
        core.step()
    ids.append(core.add_request(prompts[2], gen, lambda d: finals.__setitem__(d.request_id, d) if d.finished else None))
    while core.has_work():
        core.step()
    assert finals[ids[2]].stats.cached_prompt_tokens == 32
    for prompt, rid in zip(prompts, ids):
        logits = torch.stack(finals[rid].logits)
        generated = [int(row.argmax()) for row in logits]
        with torch.no_grad():
            ref = hf(torch.tensor([prompt + generated])).logits[0][len(prompt) - 1 : len(prompt) - 1 + 8]
        assert (logits.cpu() - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", [
    "float32",
    pytest.param("float16", marks=pytest.mark.skipif(DEVICE == "cpu", reason="fp16 W4A16 (the CUDA GEMV) needs a GPU")),
])
def test_awq_checkpoint_on_triton_w4a16_kernels(dtype, tiny_model_factory, tmp_path) -> None:
    """4-bit weights stay packed and run through the W4A16 kernels (not dequantised at load). In
    fp16 on a GPU one-sequence decode steps take the 4-bit decode layers (the CUDA GEMV with the
    norms, rotary, cache writes and activation fused in); fp32 runs op by op."""
    from app.engine.layers.linear import AWQLinear
    from tests.engine.test_awq_checkpoints import write_awq

    source, hf = tiny_model_factory("qwen2")
    reference = write_awq(source, hf, tmp_path / "awq")
    config = EngineConfig(model=tmp_path / "awq", device=DEVICE, dtype=dtype, kernels="triton", block_size=16,
                          num_cache_blocks=32, cuda_graphs=False)
    core = EngineCore(load(config, tmp_path / "awq"), config)
    awq = [m for m in core.loaded.model.modules() if isinstance(m, AWQLinear)]
    assert len(awq) == 8 and all(m.qweight is not None and m.weight is None for m in awq)
    assert (core.loaded.model.fused_layers is not None) == (dtype == "float16")
    prompt, deltas = list(range(3, 30)), []
    core.add_request(prompt, GenerationConfig(temperature=0, max_new_tokens=4, ignore_eos=True, output_logits=True),
                     deltas.append)
    while core.has_work():
        core.step()
    logits = torch.stack(deltas[-1].logits).cpu().float()
    generated = [t for d in deltas for t in d.token_ids]
    with torch.no_grad():
        ref = reference(torch.tensor([prompt + generated])).logits[0][len(prompt) - 1 : len(prompt) + 3]
    bound = 1e-3 if dtype == "float32" else 2e-2  # fp16 activations round at every op
    assert (logits - ref).abs().max().item() <= bound * max(1.0, ref.abs().max().item())


@pytest.mark.skipif(DEVICE == "cpu", reason="the 4-bit decode layers run the CUDA GEMV")
@pytest.mark.parametrize("variant", ["qwen2", "llama-bias", "mistral"])  # biases, tied head; sliding window
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_awq_decode_layers_match_the_per_op_path(variant, cuda_graphs, tiny_model_factory, tmp_path,
                                                 monkeypatch) -> None:
    """The 4-bit decode layers (kernels/w4a16_decode.py) against the same checkpoint op by op: the
    same logits over 12 decode steps (fp16; only the norms' summation order differs)."""
    from app.engine.kernels import w4a16_decode
    from tests.engine.test_awq_checkpoints import write_awq

    source, hf = tiny_model_factory(variant)
    write_awq(source, hf, tmp_path / "awq")
    runs = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(w4a16_decode, "takes", lambda layer: False)
        config = EngineConfig(model=tmp_path / "awq", device=DEVICE, dtype="float16", kernels="triton", block_size=16,
                              num_cache_blocks=32, cuda_graphs=cuda_graphs)
        core = EngineCore(load(config, tmp_path / "awq"), config)
        assert (core.loaded.model.fused_layers is not None) == fused
        deltas = []
        core.add_request(list(range(3, 30)), GenerationConfig(temperature=0, max_new_tokens=12, ignore_eos=True,
                                                              output_logits=True), deltas.append)
        while core.has_work():
            core.step()
        runs.append(torch.stack(deltas[-1].logits).cpu().float())
    ours, ref = runs
    assert (ours - ref).abs().max().item() <= 1e-2 * max(1.0, ref.abs().max().item())


@pytest.mark.skipif(DEVICE == "cpu", reason="the warm-up at load runs on a GPU")
def test_the_warm_up_reaches_the_expansion_of_4_bit_weights(tiny_model_factory, tmp_path, monkeypatch) -> None:
    """A 4-bit model's first long prompt must not compile the weight expansion (a Triton kernel)
    seconds into a chat: the warm-up at load already takes that path."""
    from app.engine.kernels.triton import w4a16
    from tests.engine.test_awq_checkpoints import write_awq

    expanded = []
    dequantize = w4a16.dequantize
    monkeypatch.setattr(w4a16, "dequantize", lambda *args, **kw: expanded.append(args[0].shape) or dequantize(*args, **kw))
    source, hf = tiny_model_factory("qwen2")
    write_awq(source, hf, tmp_path / "awq")
    config = EngineConfig(model=tmp_path / "awq", device=DEVICE, dtype="float16", kernels="triton", block_size=16,
                          num_cache_blocks=64)
    EngineCore(load(config, tmp_path / "awq"), config)
    assert expanded, "no prompt of the warm-up took the expansion of 4-bit weights"


@pytest.mark.parametrize("kv_cache_dtype", ["int8", "int4"])
def test_a_quantized_cache_on_triton_kernels_matches_the_reference(kv_cache_dtype, tiny_model_factory) -> None:
    """The same int8/int4 cache read by the Triton attention kernels and by the torch reference:
    the same logits through chunked prefill, batching and decode. Not bit-equal on a GPU: the two
    paths' k and v differ in their last fp32 bits, which now and then rounds a value to the
    neighbouring integer when it is quantized; the bound allows a few such steps (a misread cache
    is off by whole units). The kernels alone match exactly (test_triton_kv_quant.py)."""
    folder, _ = tiny_model_factory("qwen3")
    results = []
    for kernels in ("triton", "torch"):
        config = EngineConfig(model=folder, device=DEVICE, dtype="float32", kernels=kernels, block_size=16,
                              prefill_chunk_size=16, max_num_batched_tokens=48, max_num_seqs=8, num_cache_blocks=64,
                              kv_cache_dtype=kv_cache_dtype)
        core = EngineCore(load(config, folder), config)
        assert core.stats()["kv_cache_dtype"] == kv_cache_dtype and core.loaded.model.fused_layers is None
        finals = {}
        gen = GenerationConfig(temperature=0, max_new_tokens=6, ignore_eos=True, output_logits=True)
        for prompt in (list(range(3, 43)), list(range(50, 59))):
            core.add_request(prompt, gen, lambda d: finals.__setitem__(d.request_id, d) if d.finished else None)
        while core.has_work():
            core.step()
        results.append([torch.stack(finals[i].logits).cpu() for i in sorted(finals)])
    step = {"int8": 1e-3, "int4": 2e-2}[kv_cache_dtype] if DEVICE == "cuda" else 1e-4
    for ours, ref in zip(*results):
        assert (ours - ref).abs().max().item() <= step * max(1.0, ref.abs().max().item())
