"""What the vision-language engine tests share: pictures, chats run through an EngineCore, and
HF's logits for the same prompt by teacher forcing."""

from __future__ import annotations

import torch
from PIL import Image

from app.engine.config import GenerationConfig

TOLERANCE = 1e-4


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=rng) * 255).to(torch.uint8).numpy())


def run_chats(core, chats: list[list[dict]], new_tokens: int = 16) -> list[tuple[list[int], object]]:
    """Every chat submitted at once (prepared as the Engine does), run to the end: each one's
    generated tokens and final delta (with the logits of every step)."""
    gen = GenerationConfig(temperature=0, max_new_tokens=new_tokens, ignore_eos=True, output_logits=True)
    finals, tokens = {}, {}

    def on_delta(delta):
        tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
        if delta.finished:
            finals[delta.request_id] = delta

    ids = [core.add_request(gen=gen, emit=on_delta, **core.prepare(messages=messages)) for messages in chats]
    while core.has_work():
        core.step()
    return [(tokens[i], finals[i]) for i in ids]


def rendered(messages: list[dict]) -> list[dict]:
    """The messages as a processor's chat template takes them: each picture a bare image part."""
    return [{**m, "content": [p if p["type"] == "text" else {"type": "image"} for p in m["content"]]}
            if isinstance(m["content"], list) else m for m in messages]


def assert_matches_hf(hf, prompt: list[int], generated: list[int], final, image_token_id: int,
                      mark_images: bool = False, **inputs) -> None:
    """Our logits for each generated token against HF's, fed the prompt and the tokens before it;
    up to the first generated token that is an image token id (the random model may pick one, and
    fed back HF would take it for a picture's place). ``mark_images``: pass HF which tokens are
    images (Qwen2-VL's M-RoPE reads it)."""
    assert final.error is None
    steps = next((i + 1 for i, t in enumerate(generated) if t == image_token_id), len(generated))
    full = torch.tensor([prompt + generated[: steps - 1]])
    if mark_images:
        inputs["mm_token_type_ids"] = (full == image_token_id).long()
    with torch.no_grad():
        theirs = hf(input_ids=full, **inputs).logits[0, len(prompt) - 1:]
    error = (torch.stack(final.logits[:steps]).float() - theirs).abs().max().item()
    assert error <= TOLERANCE, error
