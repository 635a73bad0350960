"""LLaVA 1.5 in the engine against HF transformers on a tiny random checkpoint (fp32, <= 1e-4):
prompts with no image, one image and two images, batched together and prefilled in chunks that
cut through the images, then decoded; the prefix cache tells two pictures apart and reuses the
blocks of one sent twice."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from app.engine.config import GenerationConfig
from app.engine.sequence import ImageSpan
from tests.tiny_models import make_core, write_tokenizer

TOLERANCE = 1e-4
IMAGE_TOKENS = 16  # (28 / 7) ** 2 patches, the class token dropped


def write_tiny_llava(folder):
    tokenizer = write_tokenizer(folder)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=7, projection_dim=16)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=320, max_position_embeddings=256,
                       eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=318))
    model.save_pretrained(folder)
    return model.eval()


def pixels(seed: int) -> torch.Tensor:
    return torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(seed))


def prompt(text: list[int], images: list[tuple[int, str, torch.Tensor]]) -> tuple[list[int], tuple[ImageSpan, ...]]:
    """Text tokens with each image's placeholder run inserted at its position."""
    ids, spans = list(text), []
    for position, digest, image in sorted(images, key=lambda x: x[0], reverse=True):
        ids[position:position] = [318] * IMAGE_TOKENS
    offset = 0
    for position, digest, image in sorted(images, key=lambda x: x[0]):
        spans.append(ImageSpan(position + offset, IMAGE_TOKENS, digest, image))
        offset += IMAGE_TOKENS
    return ids, tuple(spans)


def run(core, requests, new_tokens=6):
    finals = {}
    gen = GenerationConfig(temperature=0, max_new_tokens=new_tokens, ignore_eos=True, output_logits=True)
    tokens = {}

    def on_delta(delta):
        tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
        if delta.finished:
            finals[delta.request_id] = delta

    ids = [core.add_request(r[0], gen, on_delta, images=r[1]) for r in requests]
    while core.has_work():
        core.step()
    return [(tokens[i], finals[i]) for i in ids]


def hf_logits(hf, ids, spans, generated):
    """HF's logits at the positions that predicted each generated token (teacher forcing)."""
    full = torch.tensor([ids + generated[:-1]])
    pixel_values = torch.stack([s.pixels for s in spans]) if spans else None
    with torch.no_grad():
        out = hf(input_ids=full, pixel_values=pixel_values).logits[0]
    return out[len(ids) - 1:]


def test_llava_matches_hf_through_chunks_batches_and_the_prefix_cache(tmp_path) -> None:
    hf = write_tiny_llava(tmp_path)
    core = make_core(tmp_path, prefill_chunk_size=12, max_num_batched_tokens=24, max_num_seqs=4, block_size=8,
                     num_cache_blocks=64)
    g = torch.Generator().manual_seed(2)
    text = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (20, 14, 10)]
    cat, dog = pixels(1), pixels(2)
    requests = [prompt(text[0], []),
                prompt(text[1], [(5, "cat", cat)]),
                prompt(text[2], [(2, "cat", cat), (7, "dog", dog)])]
    results = run(core, requests)
    for (ids, spans), (generated, final) in zip(requests, results):
        assert final.error is None
        ours = torch.stack(final.logits).float()
        theirs = hf_logits(hf, ids, spans, generated)
        assert (ours - theirs).abs().max().item() <= TOLERANCE

    # The same words with another picture: other logits, only the blocks before the picture reused.
    same_cat, other = prompt(text[1], [(5, "cat", cat)]), prompt(text[1], [(5, "dog", dog)])
    (_, cat_again), = run(core, [same_cat])
    (_, with_dog), = run(core, [other])
    assert cat_again.stats.cached_prompt_tokens == 24  # 30 tokens: three full blocks of 8 were cached
    assert with_dog.stats.cached_prompt_tokens == 0  # the picture starts in the first block
    assert (torch.stack(with_dog.logits) - torch.stack(cat_again.logits)).abs().max().item() > 1e-3
    theirs = hf_logits(hf, other[0], other[1], [t for t in run(core, [other])[0][0]])
    assert (torch.stack(with_dog.logits).float() - theirs).abs().max().item() <= TOLERANCE
