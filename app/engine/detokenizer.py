"""Incremental detokenization with stop strings.

Text is released only when it is final: never half a UTF-8 character (a token may carry only
part of one) and never the start of what might become a stop string.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

_CONTEXT_TOKENS = 5  # prompt tokens decoded with the first outputs, so leading spaces survive


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_ids: list[int],
        stop: list[str],
        skip_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # The Rust tokenizer decodes the same text without transformers' per-call Python layers
        # (several times cheaper, and this runs twice per token); that layer only adds the
        # optional clean-up of spaces, so keep it where a tokenizer asks for that.
        rust = getattr(tokenizer, "_tokenizer", None)
        use_rust = rust is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self._backend_decode = rust.decode if use_rust else tokenizer.decode
        self.stop = [s for s in stop if s]
        self.ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset, self.read_offset = 0, len(self.ids)
        self.text = ""  # decoded output so far (complete characters only)
        self.emitted = 0  # characters of text already released
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._backend_decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Takes one generated token; returns the newly final text (maybe empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release()

    def flush(self) -> str:
        """At the end of generation: everything still held back (bar a stop string) is final."""
        if self.stopped:
            return ""
        tail = self._decode(self.ids[self.prefix_offset :])
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        if len(tail) > len(before):
            self.text += tail[len(before) :]
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out

    def _release(self) -> str:
        if self.stopped:
            return ""
        # A stop string cannot begin in released text: its start would have been held back.
        hits = [at for s in self.stop if (at := self.text.find(s, self.emitted)) != -1]
        if hits:
            self.stopped = True
            self.text = self.text[: min(hits)]
            out = self.text[self.emitted :]
            self.emitted = len(self.text)
            return out
        end = len(self.text) - self._held_back()
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        pending = self.text[self.emitted :]
        for k in range(min(len(pending), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            tail = pending[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0
