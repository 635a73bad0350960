"""Text for calibration and for perplexity, as fixed windows of token ids.

The default text ships with every Python: the English reference topics of ``pydoc_data.topics``.
A fixed fifth of the topics (chosen by a hash of the topic's name, so it does not shift when a
Python release adds topics) is held out for perplexity and never used for calibration.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from app.engine.quant.config import QuantizeError

_HELD_OUT_EVERY = 5  # topics with crc32(name) % 5 == 0 are held out


def _topics(held_out: bool) -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)
            if (zlib.crc32(name.encode()) % _HELD_OUT_EVERY == 0) == held_out]


def builtin_calibration_texts() -> list[str]:
    return _topics(held_out=False)


def builtin_heldout_texts() -> list[str]:
    return _topics(held_out=True)


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QuantizeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise QuantizeError(f"{path} looks binary, not text: give a UTF-8 .txt file or a .jsonl file "
                            "with a \"text\" field on each line") from None


def _jsonl_texts(path: Path, content: str) -> list[str]:
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise QuantizeError(f"{path}, line {number}: not valid JSON") from None
        text = record.get("text") if isinstance(record, dict) else record
        if not isinstance(text, str):
            raise QuantizeError(f"{path}, line {number}: expected a string or an object with a \"text\" string")
        texts.append(text)
    return texts


def read_text_files(paths: tuple[Path, ...] | list[Path]) -> list[str]:
    """The documents in .txt files (one each) and .jsonl files (one per line); refuses empty or binary files."""
    texts: list[str] = []
    for path in map(Path, paths):
        content = _decode(path)
        found = _jsonl_texts(path, content) if path.suffix.lower() == ".jsonl" else [content]
        found = [t for t in found if t.strip()]
        if not found:
            raise QuantizeError(f"{path} is empty: it holds no text to calibrate or evaluate on")
        texts.extend(found)
    return texts


def token_windows(tokenizer, texts: list[str], seqlen: int, count: int) -> torch.Tensor:
    """Up to ``count`` non-overlapping windows of ``seqlen`` tokens, evenly spread over the texts
    (joined by blank lines), as int64 [n, seqlen]. Deterministic: no sampling."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]  # long on purpose
    available = len(ids) // seqlen
    if available == 0:
        raise QuantizeError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}; "
                            "give more text or a shorter sequence length")
    picked = [i * available // min(count, available) for i in range(min(count, available))]
    windows = torch.tensor(ids[: available * seqlen], dtype=torch.int64).view(available, seqlen)
    return windows[picked]


def calibration_texts(files: tuple[Path, ...]) -> list[str]:
    """The user's files, else the built-in calibration part."""
    return read_text_files(files) if files else builtin_calibration_texts()
