"""Tokenizers and chat templates, from the checkpoint's own files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.engine.errors import ModelLoadError, RequestError

Message = dict[str, Any]


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many types for broken or missing files
        raise ModelLoadError(f"cannot load the tokenizer in {model_dir}: {exc}") from exc


def eos_token_ids(model_dir: Path, tokenizer: PreTrainedTokenizerBase, config_eos: tuple[int, ...]) -> frozenset[int]:
    """End-of-sequence ids from generation_config.json, config.json and the tokenizer together
    (chat models often list their end-of-turn token only in generation_config.json)."""
    ids = set(config_eos)
    gen_file = model_dir / "generation_config.json"
    if gen_file.is_file():
        try:
            eos = json.loads(gen_file.read_text()).get("eos_token_id")
        except ValueError:
            eos = None
        if eos is not None:
            ids.update(eos if isinstance(eos, list) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """Renders messages with the model's chat template, ready for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model has no chat template; send a plain prompt instead of messages")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # template errors are jinja2 exceptions raised by the template itself
        raise RequestError(f"the model's chat template rejected these messages: {exc}") from exc
    return tokenizer(text, add_special_tokens=False)["input_ids"]
