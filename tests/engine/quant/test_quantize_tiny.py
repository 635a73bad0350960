"""Quantizing tiny random Llama and Qwen2 models: the checkpoint's layout, its dequantized logits
against the original's, progress reports and cancellation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.engine.quant import QuantizeCancelled, QuantizeConfig, QuantProgress, quantize
from app.engine.quant.dequantize import load_dequantized

CALIB = dict(group_size=64, calib_samples=4, calib_seqlen=64)


def _relative_error(model, folder: Path) -> float:
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = load_dequantized(folder, torch.float32)(input_ids=ids).logits
    return float((got - expected).norm() / expected.norm())


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
@pytest.mark.parametrize("method", ["awq", "rtn"])
def test_checkpoint_logits_close_to_the_original(quant_model, tmp_path, variant, method):
    folder, model = quant_model(variant)
    out = quantize(QuantizeConfig(model=folder, out=tmp_path / "q", method=method, **CALIB))
    assert out == (tmp_path / "q").absolute() and [p.name for p in tmp_path.iterdir()] == ["q"]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                                             "version": "gemm", "modules_to_not_convert": ["lm_head"]}
    assert config["torch_dtype"] == "float16"
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    tensors = load_file(out / "model.safetensors")
    q = "model.layers.1.mlp.down_proj"
    assert tensors[f"{q}.qweight"].dtype == torch.int32 and tensors[f"{q}.qweight"].shape == (256, 128 // 8)
    assert tensors[f"{q}.qzeros"].shape == (256 // 64, 128 // 8) and tensors[f"{q}.scales"].dtype == torch.float16
    assert f"{q}.weight" not in tensors
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16
    assert ("lm_head.weight" in tensors) == (not config.get("tie_word_embeddings", False))
    # 4-bit weights in groups of 64 of a random model: a loose bound, well below an unrelated model's ~1.4
    assert _relative_error(model, out) < 0.35


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_path_as_on_a_gpu(quant_model, tmp_path, monkeypatch, dtype):
    """On CUDA the layers run in the model's half dtype; CI has no GPU, so the CPU stands in."""
    from app.engine.quant import quantizer

    monkeypatch.setattr(quantizer, "pick_device", lambda _requested, _config: (torch.device("cpu"), dtype))
    folder, model = quant_model("qwen2")
    assert _relative_error(model, quantize(QuantizeConfig(model=folder, out=tmp_path / "q", **CALIB))) < 0.35


def test_awq_beats_rtn_on_the_calibration_objective(quant_model, tmp_path):
    """Ratio 0 of the scale search is RTN, so AWQ's logits should not be further from the original."""
    folder, model = quant_model("llama")
    errors = {m: _relative_error(model, quantize(QuantizeConfig(model=folder, out=tmp_path / m, method=m, **CALIB)))
              for m in ("awq", "rtn")}
    assert errors["awq"] < errors["rtn"] * 1.02


def test_progress_reports_every_layer_with_an_eta(quant_model, tmp_path):
    folder, _ = quant_model("llama")
    seen: list[QuantProgress] = []
    quantize(QuantizeConfig(model=folder, out=tmp_path / "q", **CALIB), progress=seen.append)
    assert seen[0].stage == "loading" and seen[-1].stage == "done"
    assert {(p.layer, p.stage) for p in seen} >= {(0, "scales"), (0, "clipping"), (1, "quantizing"), (2, "writing")}
    assert all(p.layers == 2 for p in seen)
    assert seen[0].eta_s is None and seen[-1].eta_s is not None
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(seen, seen[1:]))


def test_cancel_after_the_first_layer_leaves_nothing(quant_model, tmp_path):
    folder, _ = quant_model("llama")
    cancel = threading.Event()
    stages: list[tuple[int, str]] = []

    def progress(p: QuantProgress) -> None:
        stages.append((p.layer, p.stage))
        if p.layer == 1:
            cancel.set()

    with pytest.raises(QuantizeCancelled):
        quantize(QuantizeConfig(model=folder, out=tmp_path / "q", **CALIB), progress=progress, cancel=cancel)
    assert (1, "quantizing") not in stages
    assert list(tmp_path.iterdir()) == []
