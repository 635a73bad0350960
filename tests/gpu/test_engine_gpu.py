"""On the GPU box: the engine against HF transformers on a Llama-3-8B-shaped random model (bf16),
eager and replayed from CUDA graphs. Skipped without a CUDA GPU."""

from __future__ import annotations

import pytest
import torch

from app.engine.bench_shapes import write_shape_folder
from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine_core import EngineCore
from app.engine.loader.model_loader import load

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REL_TOLERANCE = 2e-2  # bf16 through 32 layers, different kernels and summation orders
DECODE_STEPS = 16


@pytest.fixture(scope="module")
def hf_and_folder(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = write_shape_folder("llama-3-8b", tmp_path_factory.mktemp("llama8b"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.bfloat16,
                                              attn_implementation="sdpa")
    hf.eval()
    yield hf, folder
    del hf
    torch.cuda.empty_cache()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_llama8b_shape_logits_match_hf(hf_and_folder, cuda_graphs: bool) -> None:
    hf, folder = hf_and_folder
    config = EngineConfig(model=folder, device="cuda", dtype="bfloat16", load_format="random", block_size=64,
                          num_cache_blocks=64, prefill_chunk_size=64, max_num_batched_tokens=256, max_num_seqs=8,
                          max_model_len=1024, cuda_graphs=cuda_graphs)
    loaded = load(config, folder)
    loaded.model.load_weights((name, t) for name, t in hf.state_dict().items())
    core = EngineCore(loaded, config)
    assert (core.runner.graphs is not None) == cuda_graphs
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(100, 128000, (130,), generator=g).tolist()
    prompts = [shared + torch.randint(100, 128000, (20,), generator=g).tolist(),
               torch.randint(100, 128000, (7,), generator=g).tolist(), shared[:129]]
    finals = {}
    gen = GenerationConfig(temperature=0, max_new_tokens=DECODE_STEPS, ignore_eos=True, output_logits=True)
    order = []
    for batch in (prompts[:1], prompts[1:]):  # the first caches the shared prefix for the third
        order += [core.add_request(p, gen, lambda d: finals.__setitem__(d.request_id, d) if d.finished else None)
                  for p in batch]
        while core.has_work():
            core.step()
    assert finals[order[2]].stats.cached_prompt_tokens == 128  # two 64-token blocks of the shared prefix
    for prompt, rid in zip(prompts, order):
        final = finals[rid]
        generated = [int(row.argmax()) for row in final.logits]
        with torch.no_grad():
            ref = hf(torch.tensor([prompt + generated], device="cuda")).logits[0]
        ref = ref[len(prompt) - 1 : len(prompt) - 1 + DECODE_STEPS]
        assert rel_err(torch.stack(final.logits), ref) <= REL_TOLERANCE
    del core, loaded
    torch.cuda.empty_cache()
