"""Chat messages with pictures -> a vision-language model's prompt: token ids in which each image
is its run of placeholder tokens, and the image spans the engine fills with the image's
embeddings. The checkpoint's own processor (transformers' AutoProcessor over its
preprocessor_config.json) renders the chat template, resizes and normalises the pictures and
expands each image token to as many as the model's vision side makes.

A message's content is a string, or a list of parts as OpenAI's API and HF chat templates write
them: {"type": "text", "text": ...}, {"type": "image", "image": <path, bytes, data URL or PIL
image>} or {"type": "image_url", "image_url": {"url": <data URL or local path>}}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.engine.errors import ModelLoadError, RequestError
from app.engine.sequence import ImageSpan
from app.engine.vision.images import ImageInput, load_image

Message = dict[str, Any]


def _image_processor(model_dir: Path):
    """The checkpoint's image processor. Some transformers versions (5.17) build the auto class
    only with torchvision; the same processor's PIL-backed class ("...Pil") needs none."""
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(model_dir)
    except ImportError:
        settings = model_dir / "preprocessor_config.json"
        name = json.loads(settings.read_text()).get("image_processor_type", "") if settings.is_file() else ""
        pil = getattr(transformers, name.removesuffix("Fast") + "Pil", None)
        if pil is None:
            raise
        return pil.from_pretrained(model_dir)


def load_processor(model_dir: Path, model):
    """The checkpoint's processor (tokenizer, image processor, chat template). Where transformers
    cannot build its processor class here (Qwen2-VL's and InternVL's want torchvision, for
    videos), the same parts make an ImageTextProcessor, which expands each picture's placeholder
    as the model says (``model.expand_placeholder``)."""
    from transformers import AutoProcessor, AutoTokenizer

    if not (model_dir / "preprocessor_config.json").is_file() and not (model_dir / "processor_config.json").is_file():
        raise ModelLoadError(f"{model_dir.name} is a vision-language model without its image processor's settings "
                             "(preprocessor_config.json); download the whole repository")
    try:
        return AutoProcessor.from_pretrained(model_dir)
    except (ImportError, AttributeError, OSError, ValueError, TypeError) as exc:  # e.g. torchvision missing
        if not hasattr(model, "expand_placeholder"):
            raise ModelLoadError(f"the processor of {model_dir.name} cannot be loaded: {exc}") from exc
    try:
        template = model_dir / "chat_template.jinja"
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return ImageTextProcessor(tokenizer, _image_processor(model_dir),
                                  template.read_text() if template.is_file() else None,
                                  tokenizer.convert_ids_to_tokens(model.image_token_id),
                                  lambda pixels, k, placeholder: model.expand_placeholder(tokenizer, pixels, k, placeholder))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"the image processor of {model_dir.name} cannot be read: {exc}") from exc


class ImageTextProcessor:
    """A tokenizer and an image processor doing what a vision-language processor does for
    pictures: each picture's placeholder in the rendered chat becomes what ``expand`` says (its
    image tokens, sized by what the image processor made of the picture)."""

    def __init__(self, tokenizer, image_processor, chat_template: str | None, placeholder: str,
                 expand: Callable[[dict, int, str], str]):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.chat_template, self.placeholder, self.expand = chat_template, placeholder, expand

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def __call__(self, text: str, images=None, return_tensors: str = "pt") -> dict:
        pixels = dict(self.image_processor(images=images, return_tensors="pt")) if images else {}
        pieces = text.split(self.placeholder)
        if len(pieces) - 1 != len(images or []):
            raise ValueError(f"the text has {len(pieces) - 1} image places for {len(images or [])} pictures")
        text = pieces[0] + "".join(self.expand(pixels, k, self.placeholder) + piece
                                   for k, piece in enumerate(pieces[1:]))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return {"input_ids": ids, **pixels}


def has_images(messages: list[Message]) -> bool:
    return any(isinstance(m.get("content"), list) and any(_is_image(p) for p in m["content"]) for m in messages)


def _is_image(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image", "image_url")


def _image_source(part: dict) -> Any:
    if part.get("type") == "image_url":
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    return part.get("image", part.get("path", part.get("url")))


def split_images(messages: list[Message]) -> tuple[list[Message], list[ImageInput]]:
    """The messages with each picture as a bare {"type": "image"} part (what chat templates
    expect), and the pictures, opened and checked, in order."""
    images: list[ImageInput] = []
    rendered: list[Message] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            rendered.append(message)
            continue
        parts = []
        for part in content:
            if _is_image(part):
                images.append(load_image(_image_source(part)))
                parts.append({"type": "image"})
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            else:
                raise RequestError(f"a message part must be text, image or image_url, not {part!r:.60}")
        rendered.append({**message, "content": parts})
    return rendered, images


def build_prompt(processor, messages: list[Message], model) -> tuple[list[int], tuple[ImageSpan, ...], Any]:
    """Token ids ready for the assistant's reply, one span per picture over its placeholders,
    and for an M-RoPE model the prompt's (positions [3, tokens], offset after it), else None."""
    image_token_id = model.image_token_id
    rendered, images = split_images(messages)
    try:
        text = processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, images=[i.image for i in images] or None, return_tensors="pt")
    except Exception as exc:  # the template or the image processor refused: say which
        raise RequestError(f"the model's processor rejected these messages: {exc}") from exc
    ids = inputs["input_ids"][0].tolist()
    runs = _runs(ids, image_token_id)
    if images and len(runs) < len(images) and sum(n for _, n in runs) % len(images) == 0:
        share = sum(n for _, n in runs) // len(images)  # pictures side by side: equal runs, as LLaVA 1.5 makes
        runs = [(start + k, share) for start, n in runs for k in range(0, n, share)]
    if len(runs) != len(images):
        raise RequestError(f"the prompt has {len(runs)} image places for {len(images)} pictures")
    pixels = model.split_pixels(inputs) if images else []
    spans = tuple(ImageSpan(start, length, image.digest, pixels[k])
                  for k, ((start, length), image) in enumerate(zip(runs, images)))
    rope = model.prompt_positions(len(ids), spans) if hasattr(model, "prompt_positions") else None
    return ids, spans, rope


def _runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of ``token`` in ids."""
    runs: list[tuple[int, int]] = []
    for i, t in enumerate(ids):
        if t != token:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs
