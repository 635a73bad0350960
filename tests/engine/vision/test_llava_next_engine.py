"""LLaVA-NeXT in the engine against HF transformers on a tiny random checkpoint (fp32, <= 1e-4):
chat messages with no picture, one, and two of different shapes (different tile grids, cut back
to different aspect ratios), through the checkpoint's processor, batched, chunked and decoded."""

from __future__ import annotations

from transformers import AutoProcessor

from app.engine.models.llava import best_resolution
from tests.engine.vision.chats import assert_matches_hf, picture, rendered, run_chats
from tests.tiny_models import make_core, write_tiny_llava_next


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
    for (generated, final), (messages, pictures) in zip(run_chats(core, [m for m, _ in chats]), chats):
        text = processor.apply_chat_template(rendered(messages), add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, images=pictures or None, return_tensors="pt")
        extra = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
        assert_matches_hf(hf, inputs["input_ids"][0].tolist(), generated, final, hf.config.image_token_id, **extra)


def test_best_resolution_is_the_processors() -> None:
    from transformers.image_processing_utils import select_best_resolution

    pinpoints = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    for size in ((20, 50), (44, 30), (800, 600), (300, 1200), (1000, 1000), (336, 336), (10, 2000)):
        assert best_resolution(size, pinpoints) == tuple(select_best_resolution(size, [list(p) for p in pinpoints]))
