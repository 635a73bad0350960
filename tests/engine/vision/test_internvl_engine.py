"""InternVL in the engine against HF transformers on a tiny random checkpoint (fp32, <= 1e-4):
chat messages with no picture, one, and two of different shapes (so different tile counts),
through the checkpoint's processor parts, batched together, prefilled in chunks and decoded."""

from __future__ import annotations

import torch
from PIL import Image

from app.engine.config import GenerationConfig
from app.engine.vision.prompts import load_processor
from tests.tiny_models import make_core, write_tiny_internvl

TOLERANCE = 1e-4


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=rng) * 255).to(torch.uint8).numpy())


def test_internvl_matches_hf(tmp_path) -> None:
    hf = write_tiny_internvl(tmp_path)
    core = make_core(tmp_path, prefill_chunk_size=32, max_num_batched_tokens=96, max_num_seqs=4, block_size=16,
                     num_cache_blocks=64)
    processor = load_processor(tmp_path, core.loaded.model)  # the oracle's inputs too (see the Qwen2-VL test)
    square, wide = picture(30, 30, 1), picture(96, 40, 2)
    chats = [
        ([{"role": "user", "content": "Say something."}], []),
        ([{"role": "user", "content": [{"type": "image", "image": square}, {"type": "text", "text": "What is it?"}]}],
         [square]),
        ([{"role": "user", "content": [{"type": "image", "image": square}, {"type": "image", "image": wide},
                                       {"type": "text", "text": "Compare"}]}], [square, wide]),
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
    tile_counts = []
    for request, (messages, pictures) in zip(ids, chats):
        final = finals[request]
        assert final.error is None
        rendered = [{**m, "content": [p if p["type"] == "text" else {"type": "image"} for p in m["content"]]}
                    if isinstance(m["content"], list) else m for m in messages]
        inputs = processor(text=processor.apply_chat_template(rendered), images=pictures or None)
        prompt = inputs["input_ids"][0].tolist()
        if pictures:
            tile_counts.append(inputs["num_patches"])
        # Compared up to the first generated token that is an image token id (the random model may
        # pick one; fed back, HF would take it for a picture's place).
        generated = tokens[request]
        steps = next((i + 1 for i, t in enumerate(generated) if t == hf.config.image_token_id), len(generated))
        full = torch.tensor([prompt + generated[: steps - 1]])
        with torch.no_grad():
            theirs = hf(input_ids=full, pixel_values=inputs.get("pixel_values")).logits[0, len(prompt) - 1:]
        error = (torch.stack(final.logits[:steps]).float() - theirs).abs().max().item()
        assert error <= TOLERANCE, (len(pictures), error)
    assert [list(map(int, counts)) for counts in tile_counts] == [[1], [1, 3]]  # the wide one: 2 tiles + thumbnail
