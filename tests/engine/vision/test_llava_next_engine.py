"""LLaVA-NeXT in the engine against HF transformers on a tiny random checkpoint (fp32, <= 1e-4):
chat messages with no picture, one, and two of different shapes (different tile grids, cut back
to different aspect ratios), through the checkpoint's processor, batched, chunked and decoded."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoProcessor

from app.engine.config import GenerationConfig
from app.engine.models.llava import best_resolution
from tests.tiny_models import make_core, write_tiny_llava_next

TOLERANCE = 1e-4


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=rng) * 255).to(torch.uint8).numpy())


def test_llava_next_matches_hf(tmp_path) -> None:
    hf = write_tiny_llava_next(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    core = make_core(tmp_path, prefill_chunk_size=32, max_num_batched_tokens=96, max_num_seqs=4, block_size=16,
                     num_cache_blocks=64)
    wide, tall = picture(50, 20, 1), picture(30, 44, 2)
    chats = [
        ([{"role": "user", "content": "Say something."}], []),
        ([{"role": "user", "content": [{"type": "image", "image": wide}, {"type": "text", "text": "What is it?"}]}],
         [wide]),
        ([{"role": "user", "content": [{"type": "image", "image": wide}, {"type": "text", "text": "and"},
                                       {"type": "image", "image": tall}]}], [wide, tall]),
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
        extra = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
        with torch.no_grad():
            theirs = hf(input_ids=full, **extra).logits[0, len(prompt) - 1:]
        error = (torch.stack(final.logits).float() - theirs).abs().max().item()
        assert error <= TOLERANCE, (len(pictures), error)


def test_best_resolution_is_the_processors() -> None:
    from transformers.image_processing_utils import select_best_resolution

    pinpoints = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    for size in ((20, 50), (44, 30), (800, 600), (300, 1200), (1000, 1000), (336, 336), (10, 2000)):
        assert best_resolution(size, pinpoints) == tuple(select_best_resolution(size, [list(p) for p in pinpoints]))
