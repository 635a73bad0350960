"""Qwen2-VL and Qwen2.5-VL in the engine against HF transformers on a tiny random checkpoint (fp32,
<= 1e-4): chat messages with no picture, one, and two of different sizes (so different grids),
built by the checkpoint's processor parts, batched together and prefilled in chunks that cut
through the pictures, then decoded 16 steps with M-RoPE positions offset past the pictures."""

from __future__ import annotations

import pytest
import torch

from app.engine.vision.prompts import load_processor
from tests.engine.vision.chats import assert_matches_hf, picture, rendered, run_chats
from tests.tiny_models import make_core, write_tiny_qwen2_vl


@pytest.mark.parametrize("version", ["2", "2.5"])
def test_qwen2_vl_matches_hf(version, tmp_path) -> None:
    hf = write_tiny_qwen2_vl(tmp_path, version)
    core = make_core(tmp_path, prefill_chunk_size=16, max_num_batched_tokens=48, max_num_seqs=4, block_size=8,
                     num_cache_blocks=64)
    # The oracle's inputs: HF's own processor class needs torchvision here, so its parts as the
    # engine uses them; HF's model checks the image token count against the pictures' patches.
    processor = load_processor(tmp_path, core.loaded.model)
    wide, tall = picture(40, 24, 1), picture(16, 32, 2)
    chats = [
        ([{"role": "user", "content": "Say something."}], []),
        ([{"role": "user", "content": [{"type": "image", "image": wide}, {"type": "text", "text": "What is it?"}]}],
         [wide]),
        ([{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image", "image": wide},
                                       {"type": "text", "text": "with"}, {"type": "image", "image": tall}]}],
         [wide, tall]),
    ]
    for (generated, final), (messages, pictures) in zip(run_chats(core, [m for m, _ in chats]), chats):
        inputs = processor(text=processor.apply_chat_template(rendered(messages)), images=pictures or None)
        prompt = inputs["input_ids"][0].tolist()
        extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
        assert_matches_hf(hf, prompt, generated, final, hf.config.image_token_id, mark_images=bool(pictures), **extra)


def test_image_processor_without_torchvision(tmp_path, monkeypatch) -> None:
    """Where transformers builds the auto image processor only with torchvision (5.17 on the GPU
    box; ImportError without it), the checkpoint's PIL-backed processor class serves, and makes
    the same pixels."""
    import transformers

    from app.engine.vision.prompts import _image_processor

    write_tiny_qwen2_vl(tmp_path, "2.5")
    wide = picture(40, 24, 1)
    expected = _image_processor(tmp_path)(images=[wide], return_tensors="pt")

    def needs_torchvision(*args, **kwargs):
        raise ImportError("AutoImageProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", needs_torchvision)
    processor = _image_processor(tmp_path)
    assert type(processor).__name__ == "Qwen2VLImageProcessorPil"
    got = processor(images=[wide], return_tensors="pt")
    assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])
    assert torch.allclose(got["pixel_values"], expected["pixel_values"], atol=1e-5)
