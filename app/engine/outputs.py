"""What the engine streams back to callers: plain values only (no tensors unless asked for)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RequestStats:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    ttft_s: float | None  # submit to first token
    decode_tokens_per_s: float | None  # after the first token
    total_s: float
    preemptions: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TokenLogprob:
    """A sampled token's log-probability, and the likeliest tokens' at its step (id, text, logprob),
    each token with its text alone (as the tokenizer decodes it by itself)."""

    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class Delta:
    """One piece of a streamed reply. The last one has ``finished`` set, with stats or an error."""

    request_id: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None
    error_type: str | None = None  # the EngineError subclass's name, e.g. "ContextOverflowError"
    stats: RequestStats | None = None
    logits: list[torch.Tensor] | None = None  # per step, when GenerationConfig.output_logits
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when GenerationConfig.logprobs
