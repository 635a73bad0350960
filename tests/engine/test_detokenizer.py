"""Incremental detokenization: never broken UTF-8, stop strings found across token boundaries."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from app.engine.detokenizer import IncrementalDetokenizer
from tests.tiny_models import write_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> PreTrainedTokenizerFast:
    return write_tokenizer(tmp_path_factory.mktemp("tok"))


def stream(tokenizer, text: str, stop: list[str] | None = None) -> tuple[list[str], IncrementalDetokenizer]:
    prompt = tokenizer("Say:", add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, prompt, stop or [])
    pieces = [detok.add(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    pieces.append(detok.flush())
    return pieces, detok


def test_multibyte_characters_are_never_split(tokenizer) -> None:
    text = " 日本語 ✓ café naïve 🙂"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # byte-level pieces: some tokens hold part of a character
    pieces, _ = stream(tokenizer, text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_leading_space_survives(tokenizer) -> None:
    pieces, _ = stream(tokenizer, " The fox")
    assert "".join(pieces) == " The fox"


@pytest.mark.parametrize("stop", ["lazy", "ps over", "dog."])
def test_stop_string_across_tokens(tokenizer, stop) -> None:
    text = " The quick brown fox jumps over the lazy dog. More text"
    pieces, detok = stream(tokenizer, text, [stop])
    assert "".join(pieces) == text[: text.index(stop)]
    assert detok.stopped


def test_earliest_stop_string_wins(tokenizer) -> None:
    pieces, _ = stream(tokenizer, " The quick brown fox", ["fox", "quick"])
    assert "".join(pieces) == " The "


def test_possible_stop_prefix_is_held_back_then_released(tokenizer) -> None:
    prompt = tokenizer("Say:", add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, prompt, ["fox!"])
    out = ""
    for t in tokenizer(" The fox", add_special_tokens=False)["input_ids"]:
        out += detok.add(t)
    assert out == " The "  # "fox" might become "fox!": held back
    for t in tokenizer(" jumps", add_special_tokens=False)["input_ids"]:
        out += detok.add(t)
    assert out + detok.flush() == " The fox jumps"


def test_streamed_text_equals_the_tokenizers_decode(tokenizer) -> None:
    """Whatever path decodes, the streamed pieces add up to the tokenizer's own decode."""
    import random

    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 30))]
        detok = IncrementalDetokenizer(tokenizer, [], [])
        text = "".join(detok.add(i) for i in ids) + detok.flush()
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
