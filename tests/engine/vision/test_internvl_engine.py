"""InternVL in the engine against HF transformers on a tiny random checkpoint (fp32, <= 1e-4):
chat messages with no picture, one, and two of different shapes (so different tile counts),
through the checkpoint's processor parts, batched together, prefilled in chunks and decoded."""

from __future__ import annotations

from app.engine.vision.prompts import load_processor
from tests.engine.vision.chats import assert_matches_hf, picture, rendered, run_chats
from tests.tiny_models import make_core, write_tiny_internvl


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
    tile_counts = []
    for (generated, final), (messages, pictures) in zip(run_chats(core, [m for m, _ in chats]), chats):
        inputs = processor(text=processor.apply_chat_template(rendered(messages)), images=pictures or None)
        if pictures:
            tile_counts.append([int(n) for n in inputs["num_patches"]])
        assert_matches_hf(hf, inputs["input_ids"][0].tolist(), generated, final, hf.config.image_token_id,
                          pixel_values=inputs.get("pixel_values"))
    assert tile_counts == [[1], [1, 3]]  # the wide one: 2 tiles and a thumbnail
