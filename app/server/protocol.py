"""OpenAI's request bodies (as pydantic models, which also make the OpenAPI schema), their
translation into the engine's GenerationConfig, and the response objects built from its deltas."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.config import MAX_LOGPROBS, GenerationConfig
from app.engine.outputs import RequestStats, TokenLogprob
from app.server.errors import APIError


class _Body(BaseModel):
    # Fields OpenAI defines that change nothing here (user, metadata, store, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")


class ImageURL(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def as_engine_message(self) -> dict:
        role = "system" if self.role == "developer" else self.role
        if self.content is None or isinstance(self.content, str):
            return {"role": role, "content": self.content or ""}
        return {"role": role, "content": [part.model_dump(exclude_none=True) for part in self.content]}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Body):
    """What chat and completion requests share."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # Extensions (vLLM and LMDeploy take the same names)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False

    def generation(self, max_tokens: int | None, default_max: int, logprobs: int | None) -> GenerationConfig:
        if (self.n or 1) != 1:
            raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported (use repetition_penalty, an extension, instead)",
                               param=name, code="unsupported_value")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop takes up to 4 non-empty strings", param="stop", code="invalid_value")
        temperature = 1.0 if self.temperature is None else self.temperature
        return GenerationConfig(
            max_new_tokens=max_tokens or default_max, temperature=temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0, seed=self.seed, stop=stop,
            ignore_eos=self.ignore_eos, logprobs=logprobs,
        )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def generation_config(self, default_max: int) -> GenerationConfig:
        if self.tools:
            raise APIError(400, "tools (function calling) are not supported", param="tools", code="unsupported_value")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise APIError(400, "only the text response format is supported", param="response_format",
                           code="unsupported_value")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        return self.generation(self.max_completion_tokens or self.max_tokens, default_max,
                               (self.top_logprobs or 0) if self.logprobs else None)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, "send one prompt per request", param="prompt", code="unsupported_value")
        return self.prompt[0]

    def generation_config(self, default_max: int) -> GenerationConfig:
        for name, unsupported in (("echo", self.echo), ("suffix", self.suffix), ("best_of", (self.best_of or 1) > 1)):
            if unsupported:
                raise APIError(400, f"{name} is not supported", param=name, code="unsupported_value")
        return self.generation(self.max_tokens, default_max, self.logprobs)


# ---- responses ---------------------------------------------------------------------------------
def usage(stats: RequestStats | None) -> dict:
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.completion_tokens if stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": stats.cached_prompt_tokens if stats else 0}}


def finish_reason(reason: str | None) -> str | None:
    """The engine's reasons in OpenAI's words (a cancelled request's client has gone)."""
    return {"stop": "stop", "length": "length", "cancelled": "stop"}.get(reason or "", reason)


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(items: list[TokenLogprob]) -> dict:
    return {"content": [{**_entry(lp.text, lp.logprob), "top_logprobs": [_entry(t, v) for _, t, v in lp.top]}
                        for lp in items]}


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> dict:
    offsets, at = [], offset
    for lp in items:
        offsets.append(at)
        at += len(lp.text)
    return {"tokens": [lp.text for lp in items], "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{t: v for _, t, v in lp.top} for lp in items], "text_offset": offsets}


def envelope(kind: str, request_id: str, model: str, choices: list[dict], created: int | None = None) -> dict:
    return {"id": request_id, "object": kind, "created": created or int(time.time()), "model": model,
            "choices": choices, "system_fingerprint": None}
