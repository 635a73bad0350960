"""Qwen2-VL and Qwen2.5-VL in the engine against HF transformers on a tiny random checkpoint (fp32, <= 1e-4):
chat messages with no picture, one, and two of different sizes (so different grids), built by
the checkpoint's processor parts, batched together and prefilled in chunks that cut through the
pictures, then decoded with M-RoPE positions offset past the pictures."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from app.engine.config import GenerationConfig
from app.engine.vision.prompts import load_processor
from tests.tiny_models import make_core, write_tiny_qwen2_vl

TOLERANCE = 1e-4


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=rng) * 255).to(torch.uint8).numpy())


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
    gen = GenerationConfig(temperature=0, max_new_tokens=16, ignore_eos=True, output_logits=True)
    finals, tokens = {}, {}

    def on_delta(delta):
        tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
        if delta.finished:
            finals[delta.request_id] = delta

    ids = [core.add_request(gen=gen, emit=on_delta, **core.prepare(messages=messages)) for messages, _ in chats]
    while core.has_work():
        core.step()
    for request, (messages, pictures) in zip(ids, chats):
        final = finals[request]
        assert final.error is None
        rendered = [{**m, "content": [p if p["type"] == "text" else {"type": "image"} for p in m["content"]]}
                    if isinstance(m["content"], list) else m for m in messages]
        text = processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, images=pictures or None, return_tensors="pt")
        prompt = inputs["input_ids"][0].tolist()
        full = torch.tensor([prompt + tokens[request][:-1]])
        extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
        if pictures:  # which tokens are images (HF's M-RoPE reads it)
            extra["mm_token_type_ids"] = (full == hf.config.image_token_id).long()
        with torch.no_grad():
            theirs = hf(input_ids=full, **extra).logits[0, len(prompt) - 1:]
        error = (torch.stack(final.logits).float() - theirs).abs().max().item()
        assert error <= TOLERANCE, (len(pictures), error)
