"""A vision-language model quantizes too: its language model to 4 bits (calibrated on text), its
image side (tower, projector) kept in fp16 and named in modules_to_not_convert. The checkpoint
loads in our engine and, with a picture, gives the logits of HF on its dequantised weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from app.engine.quant import QuantizeConfig, quantize
from app.engine.quant.dequantize import load_dequantized
from tests.engine.vision.chats import assert_matches_hf, picture, rendered, run_chats
from tests.tiny_models import make_core, write_tiny_llava, write_tiny_qwen2_vl

WRITERS = {"llava": write_tiny_llava, "qwen2-vl": write_tiny_qwen2_vl}


@pytest.mark.parametrize("family", sorted(WRITERS))
@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_vision_language_model_quantizes(family, method, tmp_path) -> None:
    WRITERS[family](tmp_path / "source")
    out = quantize(QuantizeConfig(model=tmp_path / "source", out=tmp_path / "q", method=method, group_size=32,
                                  calib_samples=4, calib_seqlen=32))
    config = json.loads((out / "config.json").read_text())
    not_converted = config["quantization_config"]["modules_to_not_convert"]
    assert {"lm_head", "vision_tower", "visual", "multi_modal_projector"} <= set(not_converted)
    tensors = load_file(out / "model.safetensors") if (out / "model.safetensors").exists() else {
        k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    packed = [n for n in tensors if n.endswith(".qweight")]
    assert packed and all("language_model.layers." in n for n in packed)
    image_side = [n for n in tensors if n.startswith(("model.vision_tower.", "model.visual.", "model.multi_modal"))]
    assert image_side and all(tensors[n].dtype == torch.float16 for n in image_side)

    from app.engine.quant import evaluate_perplexity

    text = tmp_path / "held-out.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    for folder in (tmp_path / "source", out):  # the report's perplexity runs on both (text alone)
        assert evaluate_perplexity(folder, data=text, windows=2, seqlen=32).perplexity > 1

    hf = load_dequantized(out, torch.float32)
    core = make_core(out)
    assert core.loaded.processor is not None
    messages = [{"role": "user", "content": [{"type": "image", "image": picture(40, 24, 1)},
                                             {"type": "text", "text": "What is it?"}]}]
    (generated, final), = run_chats(core, [messages], new_tokens=8)
    processor = core.loaded.processor
    text = processor.apply_chat_template(rendered(messages), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[picture(40, 24, 1)],
                       return_tensors="pt")
    extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
    assert_matches_hf(hf, inputs["input_ids"][0].tolist(), generated, final, hf.config.image_token_id,
                      mark_images=family == "qwen2-vl", **extra)
