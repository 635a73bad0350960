"""LLaVA 1.5 in the engine against HF transformers on a tiny random checkpoint (fp32, <= 1e-4):
prompts with no image, one image and two images, batched together and prefilled in chunks that
cut through the images, then decoded; the prefix cache tells two pictures apart and reuses the
blocks of one sent twice. Chat messages with pictures go through the checkpoint's processor."""

from __future__ import annotations

import pytest
import torch

from app.engine.config import GenerationConfig
from app.engine.errors import EngineError
from app.engine.sequence import ImageSpan
from tests.tiny_models import make_core, write_tiny_llava

TOLERANCE = 1e-4
IMAGE_TOKENS = 16  # (28 / 7) ** 2 patches, the class token dropped
IMAGE_TOKEN = 317  # <image>, added to the tiny tokenizer's 317 tokens


def pixels(seed: int) -> torch.Tensor:
    return torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(seed))


def prompt(text: list[int], images: list[tuple[int, str, torch.Tensor]]) -> tuple[list[int], tuple[ImageSpan, ...]]:
    """Text tokens with each image's placeholder run inserted at its position."""
    ids, spans = list(text), []
    for position, digest, image in sorted(images, key=lambda x: x[0], reverse=True):
        ids[position:position] = [IMAGE_TOKEN] * IMAGE_TOKENS
    offset = 0
    for position, digest, image in sorted(images, key=lambda x: x[0]):
        spans.append(ImageSpan(position + offset, IMAGE_TOKENS, digest, image))
        offset += IMAGE_TOKENS
    return ids, tuple(spans)


def run(core, requests, new_tokens=16):
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


def test_chat_messages_with_pictures_go_through_the_processor(tmp_path) -> None:
    """Messages with image parts (a file path and a data URL, OpenAI style) through the Engine:
    the checkpoint's processor builds the prompt, and the reply's logits are HF's on the
    processor's own inputs. A text-only model refuses pictures with a clear message."""
    import base64
    import io

    from PIL import Image
    from transformers import AutoProcessor

    from app.engine import Engine, EngineConfig
    from tests.tiny_models import write_tiny_model

    hf = write_tiny_llava(tmp_path / "llava")
    rng = torch.Generator().manual_seed(5)
    pictures = [Image.fromarray((torch.rand(h, w, 3, generator=rng) * 255).to(torch.uint8).numpy())
                for h, w in ((40, 30), (18, 52))]  # different sizes: the processor makes both 28 x 28
    pictures[0].save(tmp_path / "a.png")
    buffer = io.BytesIO()
    pictures[1].save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": [
        {"type": "image", "image": str(tmp_path / "a.png")}, {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": "What differs?"}]}]
    gen = GenerationConfig(temperature=0, max_new_tokens=4, ignore_eos=True, output_logits=True)
    with Engine() as engine:
        engine.load(EngineConfig(model=tmp_path / "llava", device="cpu", dtype="float32")).result()
        reply = engine.submit(messages=messages, gen=gen).result()  # raises on an error

        processor = AutoProcessor.from_pretrained(tmp_path / "llava")
        text = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
            {"type": "text", "text": "What differs?"}]}], add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, images=pictures, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        assert ids.count(IMAGE_TOKEN) == 2 * IMAGE_TOKENS
        full = torch.tensor([ids + reply.token_ids[:-1]])
        with torch.no_grad():
            theirs = hf(input_ids=full, pixel_values=inputs["pixel_values"]).logits[0, len(ids) - 1:]
        assert (torch.stack(reply.logits).float() - theirs).abs().max().item() <= TOLERANCE

        write_tiny_model(tmp_path / "text-only", "llama")
        engine.load(EngineConfig(model=tmp_path / "text-only", device="cpu", dtype="float32")).result()
        with pytest.raises(EngineError, match="reads text only: load a vision-language model"):
            engine.submit(messages=messages, gen=gen).result()


def test_pipeline_takes_text_and_pictures(tmp_path) -> None:
    """pipeline(model)((text, picture)) and ((text, [pictures])), batched with a plain prompt."""
    from PIL import Image

    from app.engine import pipeline

    write_tiny_llava(tmp_path / "llava")
    picture = Image.new("RGB", (50, 40), (200, 30, 90))
    with pipeline(tmp_path / "llava", device="cpu", dtype="float32") as pipe:
        one, two, plain = pipe([("Describe", picture), ("Describe", [picture, picture]), "Hello"],
                               temperature=0, max_new_tokens=3, ignore_eos=True)
        assert [len(c.token_ids) for c in (one, two, plain)] == [3, 3, 3]
        assert two.stats.prompt_tokens - one.stats.prompt_tokens == IMAGE_TOKENS  # one more picture's places


def test_a_picture_that_cannot_fit_names_the_limit(tmp_path) -> None:
    from app.engine.errors import ContextOverflowError

    write_tiny_llava(tmp_path)
    core = make_core(tmp_path, max_model_len=20)
    ids, spans = prompt([5, 6, 7], [(1, "cat", pixels(1))])
    with pytest.raises(ContextOverflowError, match=r"20 tokens \(16 of them for 1 picture\); this model's context "
                                                   r"holds 20"):
        core.add_request(ids + [8], GenerationConfig(), lambda d: None, images=spans)
