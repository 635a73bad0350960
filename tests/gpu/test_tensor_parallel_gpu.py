"""On a box with 2 GPUs: tensor parallelism over NCCL, with decode steps replayed from CUDA graphs
(the all-reduces, through the peer buffer, captured inside) and the fused decode layer at batch 1,
gives the logits of one GPU (fp32, <= 1e-4); a rank killed mid-reply is noticed (the NCCL group aborted), the reply
fails naming it, and the engine loads again."""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_tensor_parallel import assert_same, engine_core, generate, kill_a_rank_mid_reply, prompts_for

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]


@pytest.mark.parametrize("variant, vocab", [("llama-bias", None), ("qwen3", 320)])
def test_two_gpus_match_one(variant: str, vocab: int | None, tiny_model_factory) -> None:
    folder, hf = tiny_model_factory(variant, **({"vocab_size": vocab} if vocab else {}))
    prompts = prompts_for(hf.config.vocab_size)
    results = []
    for tp in (1, 2):
        with engine_core(folder, tp, device="cuda") as core:
            assert core.runner.graphs is not None and core.loaded.model.fused_layers is not None
            assert tp == 1 or "one-shot peer all-reduce" in core.loaded.kernels, core.loaded.kernels
            # The first prompt alone (the fused layer, in a graph), then three together (per-op, in graphs).
            results.append(generate(core, prompts))
    assert_same(*results)


def test_killed_rank_on_gpu(tiny_model_factory) -> None:
    kill_a_rank_mid_reply(tiny_model_factory("llama")[0], device="cuda")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_awq_over_two_gpus_matches_one(dtype: str, tiny_model_factory, tmp_path) -> None:
    """Packed AWQ weights split over 2 GPUs (whole words / whole groups), through the W4A16 kernels:
    fp32 activations take the Triton kernels, fp16 ones the CUDA GEMV at decode."""
    from tests.engine.test_awq_checkpoints import write_awq
    from tests.engine.test_tensor_parallel import compare

    source, hf = tiny_model_factory("llama", vocab_size=320)
    write_awq(source, hf, tmp_path / "awq")
    if dtype == "float32":
        compare(tmp_path / "awq", prompts_for(320), 2, device="cuda", dtype=dtype)
        return
    results = []  # fp16: the sums' order differs between splits, so greedy tokens may part at near ties
    for tp in (1, 2):
        with engine_core(tmp_path / "awq", tp, device="cuda", dtype=dtype) as core:
            results.append(generate(core, prompts_for(320)[:1], new_tokens=4))
    (_, whole), (_, split) = results[0][0], results[1][0]
    first_whole, first_split = whole.logits[0].float(), split.logits[0].float()
    assert (first_split - first_whole).abs().max().item() <= 2e-2 * first_whole.abs().max().item()


def test_named_gpus_in_any_order(tiny_model_factory) -> None:
    """Settings' picked GPUs: rank 0 on GPU 1, rank 1 on GPU 0, the same replies as one GPU."""
    folder, hf = tiny_model_factory("llama", vocab_size=320)
    prompts = prompts_for(320)
    with engine_core(folder, 1, device="cuda") as core:
        whole = generate(core, prompts)
    with engine_core(folder, 2, device="cuda", gpus=(1, 0)) as core:
        assert core.loaded.device == torch.device("cuda", 1)
        split = generate(core, prompts)
    assert_same(whole, split)
    with engine_core(folder, 1, device="cuda", gpus=(1,)) as core:  # one GPU, not the first
        assert core.loaded.device == torch.device("cuda", 1)
        assert_same(whole, generate(core, prompts))
