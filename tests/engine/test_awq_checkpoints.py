"""AWQ checkpoints in the AutoAWQ "gemm" layout, written here from the format's description alone,
load in our engine and give the logits of the model they dequantise to."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.engine.config import GenerationConfig
from app.engine.errors import UnsupportedModelError
from app.engine.models.registry import resolve_config
from tests.tiny_models import make_core

GROUP = 32
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column ORDER[i] of its 8 (the spec)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_words(values: torch.Tensor) -> torch.Tensor:
    """[R, C] in 0..15 -> int32 [R, C/8], nibble i of word j = column 8j + ORDER[i]."""
    rows, cols = values.shape
    words = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for nibble, column in enumerate(ORDER):
        words |= values[:, column::8].to(torch.int64) << (4 * nibble)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def quantize_rtn(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """nn.Linear weight [N, K] -> (qweight, qzeros, scales) and the weight they dequantise to [N, K]."""
    n, k = weight.shape
    w = weight.float().t().reshape(k // GROUP, GROUP, n)  # [groups, G, N]
    low, high = w.amin(1), w.amax(1)
    scales = ((high - low).clamp(min=1e-5) / 15).half()
    zeros = (-low / scales.float()).round().clamp(0, 15)
    q = (w / scales.float().unsqueeze(1) + zeros.unsqueeze(1)).round().clamp(0, 15)
    dequantised = ((q - zeros.unsqueeze(1)) * scales.float().unsqueeze(1)).reshape(k, n).t()
    tensors = {"qweight": pack_words(q.reshape(k, n).to(torch.int32)),
               "qzeros": pack_words(zeros.to(torch.int32)), "scales": scales}
    return tensors, dequantised


def write_awq(source: Path, hf_model, out: Path):
    """An AWQ copy of a tiny checkpoint, and a copy of the HF model holding exactly what it
    dequantises to (``hf_model`` itself is left as it was: fixtures share it)."""
    out.mkdir()
    for file in source.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, out / file.name)
    tensors, reference = {}, copy.deepcopy(hf_model).float()
    params = dict(reference.named_parameters())
    for name, value in reference.state_dict().items():
        value = value.half()  # AutoAWQ keeps what it does not quantize in fp16
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in LINEARS and name.endswith(".weight"):
            packed, dequantised = quantize_rtn(value)
            tensors |= {f"{module}.{kind}": t for kind, t in packed.items()}
            params[name].data.copy_(dequantised)
        else:
            tensors[name] = value
            if name in params:
                params[name].data.copy_(value.float())
    if hf_model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(out / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    config["torch_dtype"] = "float16"
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True,
                                     "version": "gemm", "modules_to_not_convert": ["lm_head"]}
    (out / "config.json").write_text(json.dumps(config))
    return reference


def test_the_test_packer_follows_the_spec() -> None:
    values = torch.arange(16, dtype=torch.int32).repeat(2, 1)[:, :8]  # columns 0..7 hold 0..7
    word = int(pack_words(values)[0, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_autoawq_checkpoint_logits_match_its_dequantised_model(variant, tiny_model_factory, tmp_path) -> None:
    source, hf_model = tiny_model_factory(variant)
    reference = write_awq(source, hf_model, tmp_path / "awq")
    core = make_core(tmp_path / "awq")
    assert core.loaded.config.quantization.group_size == GROUP
    ids = torch.randint(5, 300, (1, 24), generator=torch.Generator().manual_seed(0))
    deltas = []
    core.add_request(ids[0].tolist(), GenerationConfig(temperature=0, max_new_tokens=4, ignore_eos=True,
                                                       output_logits=True), deltas.append)
    while core.has_work():
        core.step()
    ours = torch.stack(deltas[-1].logits).float()
    tokens = ids[0].tolist() + [t for d in deltas for t in d.token_ids]
    with torch.no_grad():  # teacher forcing: the positions that predicted each generated token
        theirs = reference(torch.tensor([tokens[:-1]])).logits[0, ids.shape[1] - 1:].float()
    error = (ours - theirs).abs().max().item()
    assert error <= 1e-3 * max(1.0, theirs.abs().max().item()), f"max logit error {error:.2e}"


def test_other_quantizations_are_refused_clearly() -> None:
    raw = {"architectures": ["LlamaForCausalLM"], "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4}
    with pytest.raises(UnsupportedModelError, match="quantization gptq"):
        resolve_config({**raw, "quantization_config": {"quant_method": "gptq", "bits": 4}})
    with pytest.raises(UnsupportedModelError, match="version gemv"):
        resolve_config({**raw, "quantization_config": {"quant_method": "awq", "bits": 4, "version": "gemv"}})


def test_random_awq_weights_of_a_real_shape_load(tmp_path, monkeypatch) -> None:
    """The bench's "-awq" shapes: random 4-bit weights in the checkpoint layout, of a plausible size."""
    from app.engine import bench_shapes
    from app.engine.layers.linear import AWQLinear

    shape = dict(bench_shapes.SHAPES["llama-3-8b-awq"], hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    monkeypatch.setitem(bench_shapes.SHAPES, "tiny-awq", shape)
    folder = bench_shapes.write_shape_folder("tiny-awq", tmp_path / "shape")
    core = make_core(folder, load_format="random", kernels="torch")
    dense = [m.weight for m in core.loaded.model.modules() if isinstance(m, AWQLinear)]  # dequantised at load
    assert len(dense) == 8 and all(0.01 < w.float().std().item() < 0.04 for w in dense)
    deltas = []
    core.add_request([5, 6, 7], GenerationConfig(temperature=0, max_new_tokens=5, ignore_eos=True), deltas.append)
    while core.has_work():
        core.step()
    assert sum(len(d.token_ids) for d in deltas) == 5
