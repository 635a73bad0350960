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
