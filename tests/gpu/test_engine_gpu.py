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

# bf16 through 32 random layers drifts a few percent from fp32, for HF as for us: our error
# against an fp32 reference may be at most this much larger than HF's own bf16 error.
BF16_SLACK = 1.25
DECODE_STEPS = 16


def make_hf(folder, dtype: torch.dtype, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder, **overrides)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return hf.eval()


@pytest.fixture(scope="module")
def hf_and_folder(tmp_path_factory):
    folder = write_shape_folder("llama-3-8b", tmp_path_factory.mktemp("llama8b"))
    hf = make_hf(folder, torch.bfloat16)
    yield hf, folder
    del hf
    torch.cuda.empty_cache()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run_engine(hf, folder, dtype: str, cuda_graphs: bool) -> list[tuple[list[int], torch.Tensor]]:
    """Three prompts (the third hits the prefix cache the first left), greedy; returns each
    request's full token sequence and our logits for its generated tokens."""
    config = EngineConfig(model=folder, device="cuda", dtype=dtype, load_format="random", block_size=64,
                          num_cache_blocks=64, prefill_chunk_size=64, max_num_batched_tokens=256, max_num_seqs=8,
                          max_model_len=1024, cuda_graphs=cuda_graphs)
    loaded = load(config, folder)
    loaded.model.load_weights((name, t) for name, t in hf.state_dict().items())
    core = EngineCore(loaded, config)
    assert (core.runner.graphs is not None) == cuda_graphs
    assert loaded.model.fused_layers is not None  # decode steps of <= 16 sequences run the fused layers
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
    results = []
    for prompt, rid in zip(prompts, order):
        logits = torch.stack(finals[rid].logits)
        results.append((prompt, prompt + [int(row.argmax()) for row in logits], logits))
    del core, loaded
    torch.cuda.empty_cache()
    return results


def hf_logits(hf, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = hf(torch.tensor([tokens], device="cuda")).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + DECODE_STEPS]


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_llama8b_width_fp32_matches_hf_exactly(tmp_path, cuda_graphs: bool) -> None:
    """Real widths (heads 32/8, head_dim 128, MLP 14336, vocab 128256), 2 layers, fp32: tight."""
    import json

    folder = write_shape_folder("llama-3-8b", tmp_path / "shape")
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "num_hidden_layers": 2}))
    hf = make_hf(folder, torch.float32)
    errors = [rel_err(ours, hf_logits(hf, prompt, tokens)) for prompt, tokens, ours in
              run_engine(hf, folder, "float32", cuda_graphs)]
    print("fp32 2-layer relative errors:", errors)
    assert max(errors) <= 1e-4


def test_llama8b_shape_bf16_as_accurate_as_hf(hf_and_folder) -> None:
    """32 layers in bf16, eager and from CUDA graphs, against an fp32 reference of the same
    weights: our error is at most BF16_SLACK times HF's own bf16 error."""
    hf, folder = hf_and_folder
    runs = {graphs: run_engine(hf, folder, "bfloat16", graphs) for graphs in (False, True)}
    hf_bf16 = {graphs: [hf_logits(hf, prompt, tokens) for prompt, tokens, _ in results]
               for graphs, results in runs.items()}
    hf.float()
    for graphs, results in runs.items():
        for (prompt, tokens, ours), theirs in zip(results, hf_bf16[graphs]):
            reference = hf_logits(hf, prompt, tokens)
            ours_err, hf_err = rel_err(ours, reference), rel_err(theirs, reference)
            print(f"graphs={graphs}: ours {ours_err:.4f}, HF bf16 {hf_err:.4f} (against fp32)")
            assert ours_err <= BF16_SLACK * hf_err


def test_graphs_follow_a_batch_that_changes_every_step(tiny_model_factory) -> None:
    """Requests of different lengths join and leave: every decode step replays a bucket with a
    different batch (and padding rows left from bigger ones). Tokens equal the eager run's, and
    each request's equal its own run alone."""
    from tests.tiny_models import make_core

    folder, _ = tiny_model_factory("qwen3")
    prompts = [list(range(3 + i, 40 + 7 * i)) for i in range(9)]

    def run(cuda_graphs: bool, indices: range) -> dict[int, list[int]]:
        core = make_core(folder, device="cuda", cuda_graphs=cuda_graphs, block_size=16, num_cache_blocks=128,
                         max_num_seqs=8)
        assert (core.runner.graphs is not None) == cuda_graphs
        out: dict[int, list[int]] = {}
        for i in indices:  # staggered: a new request every other step, each with its own length
            core.add_request(prompts[i], GenerationConfig(temperature=0, max_new_tokens=3 + 2 * i, ignore_eos=True),
                             lambda d, i=i: out.setdefault(i, []).extend(d.token_ids))
            core.step()
            core.step()
        while core.has_work():
            core.step()
        return out

    graphed, eager = run(True, range(9)), run(False, range(9))
    assert graphed == eager
    assert all(len(graphed[i]) == 3 + 2 * i for i in range(9))
    assert run(True, range(4, 5))[4] == graphed[4]


def test_seeded_sampling_on_the_gpu_ignores_batch_mates(tiny_model_factory) -> None:
    """Top-k/top-p/min-p sampling through the Triton race: a seeded request draws the same
    tokens alone and beside other sampling requests, with and without CUDA graphs."""
    from tests.tiny_models import make_core

    folder, _ = tiny_model_factory("llama-bias")
    prompt = list(range(3, 30))
    gen = GenerationConfig(temperature=0.9, top_p=0.9, top_k=40, min_p=0.02, seed=7, max_new_tokens=24,
                           ignore_eos=True)

    def run(cuda_graphs: bool, mates: int) -> list[int]:
        core = make_core(folder, device="cuda", cuda_graphs=cuda_graphs, block_size=16, num_cache_blocks=64)
        assert core.loaded.model.ops.name == "triton"
        out: list[int] = []
        core.add_request(prompt, gen, lambda d: out.extend(d.token_ids))
        for i in range(mates):
            core.add_request(prompt[i:], GenerationConfig(temperature=1.2, seed=i, max_new_tokens=30), lambda d: None)
        while core.has_work():
            core.step()
        return out

    alone = run(True, 0)
    assert len(alone) == 24 and len(set(alone)) > 3
    assert run(True, 5) == alone
    assert run(False, 5) == alone
