"""Talking to an OpenAI-compatible endpoint: its models (GET /models) and a streamed chat completion
(POST /chat/completions, server-sent events).

Every failure becomes a RemoteError whose text names the endpoint, says what happened and what to
check, so the chat can show it as it is. Replies are reported with the engine's finish reasons and
stats keys, so a remote reply looks to the chat exactly like a local one.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from app import __version__
from app.remote.endpoints import Endpoint

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # a long prompt on a slow remote: its first token may take minutes

# OpenAI error codes that mean what one of the engine's error classes means (the chat reads those names)
_KINDS = {"context_length_exceeded": "ContextOverflowError"}

# GenerationConfig fields -> OpenAI request fields. The extensions (vLLM, LMDeploy and LM Station take
# them) are sent only when they change something, so strict providers accept the request.
_FIELDS = {"temperature": "temperature", "top_p": "top_p", "max_new_tokens": "max_tokens", "seed": "seed",
           "stop": "stop"}
_EXTENSIONS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": False}  # field: its no-op value


class RemoteError(Exception):
    """What went wrong, in words for the user; ``kind`` names it as the engine's errors are named."""

    def __init__(self, message: str, kind: str = "RemoteError"):
        super().__init__(message)
        self.kind = kind


@dataclass
class RemoteReply:
    finish_reason: str  # stop | length | cancelled, or what the server said (content_filter, ...)
    stats: dict  # the keys of the engine's RequestStats: token counts, ttft_s, decode_tokens_per_s, total_s


def list_models(endpoint: Endpoint, timeout_s: float = CONNECT_TIMEOUT_S) -> list[str]:
    """The ids of the models the endpoint serves."""
    timeout = httpx2.Timeout(timeout_s)
    with _client(endpoint, timeout) as client, _translated(endpoint, timeout):
        response = client.get("models")
        base = endpoint.api_base
        hint = (f" Is {base} an OpenAI-compatible API?" if base.endswith("/v1")
                else f" Is {base} the API's address? It usually ends in /v1.")
        _check(endpoint, response, hint)
        try:
            cards = response.json()["data"]
            return [str(card["id"]) for card in cards]
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"{endpoint.name} answered {endpoint.api_base}/models with something other than "
                              "an OpenAI model list: is this an OpenAI-compatible server?") from None


def stream_chat(endpoint: Endpoint, model: str, messages: list[dict], options: dict,
                on_text: Callable[[str], None], cancelled: threading.Event) -> RemoteReply:
    """Streams one reply, calling ``on_text`` with each new piece; returns as soon as it ends, or
    when ``cancelled`` is set (closing the connection, which tells the server to stop)."""
    body = {"model": model, "messages": openai_messages(messages), "stream": True,
            "stream_options": {"include_usage": True}, **openai_sampling(options)}
    timeout = httpx2.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    started = time.perf_counter()
    first = None
    pieces, usage, finish_reason = 0, None, None
    with _client(endpoint, timeout) as client, _translated(endpoint, timeout):
        with client.stream("POST", "chat/completions", json=body) as response:
            _check(endpoint, response)
            for chunk in _events(endpoint, response, cancelled):
                if "error" in chunk:
                    raise _error(endpoint, chunk, "stopped the reply")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        first = first or time.perf_counter()
                        pieces += 1
                        on_text(text)
                    finish_reason = choice.get("finish_reason") or finish_reason
            if cancelled.is_set():
                finish_reason = "cancelled"
            elif finish_reason is None:
                raise RemoteError(f"{endpoint.name} closed the connection before the reply ended.")
    return RemoteReply(finish_reason, _stats(started, first, time.perf_counter(), pieces, usage))


def openai_messages(messages: list[dict]) -> list[dict]:
    """The chat's messages as OpenAI's: pictures (files, in the engine's "image" parts) become
    image_url parts carrying data URLs, since a remote server cannot read this machine's files."""

    def part(p: dict) -> dict:
        if p.get("type") != "image":
            return p
        path = Path(p["image"])
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError as exc:
            raise RemoteError(f"A picture in this chat could not be read ({path.name}: "
                              f"{exc.strerror or exc}).") from None
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}

    return [{**m, "content": [part(p) for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in messages]


def openai_sampling(options: dict) -> dict:
    """The chat's generation settings (GenerationConfig fields) as OpenAI request fields."""
    unknown = sorted(set(options) - set(_FIELDS) - set(_EXTENSIONS))
    if unknown:
        raise RemoteError(f"{', '.join(unknown)} cannot be sent to a remote model")
    body = {_FIELDS[name]: value for name, value in options.items() if name in _FIELDS and value is not None}
    body.update({name: value for name, value in options.items() if name in _EXTENSIONS and value != _EXTENSIONS[name]})
    return body


def _client(endpoint: Endpoint, timeout: httpx2.Timeout) -> httpx2.Client:
    headers = {"User-Agent": f"lmstation/{__version__}"}
    if endpoint.key:
        headers["Authorization"] = f"Bearer {endpoint.key}"
    return httpx2.Client(base_url=endpoint.api_base + "/", headers=headers, timeout=timeout)


def _events(endpoint: Endpoint, response: httpx2.Response, cancelled: threading.Event) -> Iterator[dict]:
    """The JSON of each server-sent event until [DONE], the end of the stream, or ``cancelled``."""
    kind = response.headers.get("content-type", "").partition(";")[0].strip()
    if kind != "text/event-stream":
        raise RemoteError(f"{endpoint.name} did not stream its reply (it sent {kind or 'no content type'}): "
                          "is this an OpenAI-compatible server?")
    for line in response.iter_lines():
        if cancelled.is_set():
            return
        if not line.startswith("data:"):
            continue  # blank separators, comments and event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise RemoteError(f"{endpoint.name} sent a stream event that is not JSON: {data[:120]!r}") from None


def _stats(started: float, first: float | None, ended: float, pieces: int, usage: dict | None) -> dict:
    """The engine's stats keys. Without a usage report, each streamed piece counts as one token
    (servers send one per event) and the prompt as zero."""
    usage = usage or {}
    completion = usage.get("completion_tokens", pieces)
    decoding = ended - first if first else 0.0
    return {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": completion,
            "cached_prompt_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            "ttft_s": first - started if first else None,
            "decode_tokens_per_s": (completion - 1) / decoding if completion > 1 and decoding > 0 else None,
            "total_s": ended - started}


def _check(endpoint: Endpoint, response: httpx2.Response, hint: str = "") -> None:
    """Raises the endpoint's refusal in words: a wrong key, an unknown model, a busy or broken server."""
    if response.status_code < 400:
        return
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text.strip()[:200] or response.reason_phrase}}
    status = response.status_code
    if status in (401, 403) and not endpoint.key:
        raise RemoteError(f"{endpoint.name} wants an API key (HTTP {status}: {_message(body)}). "
                          "Add it in Settings → Connections.", "AuthenticationError")
    if status in (401, 403):
        raise RemoteError(f"{endpoint.name} refused the API key (HTTP {status}: {_message(body)}). "
                          "Check the key in Settings → Connections.", "AuthenticationError")
    if status == 429:
        raise RemoteError(f"{endpoint.name} is busy (HTTP 429: {_message(body)}). Try again shortly.")
    raise _error(endpoint, body, f"answered HTTP {status}", hint if status == 404 else "")


def _message(body: dict) -> str:
    """The error's own words, from OpenAI's shape or FastAPI's, else the body itself (shortened)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        text = str(error.get("message") or error)
    elif isinstance(body, dict) and "detail" in body:
        text = str(body["detail"])
    else:
        text = str(error or body)[:200]
    return text.rstrip(".")


def _error(endpoint: Endpoint, body: dict, what: str, hint: str = "") -> RemoteError:
    """``what`` the endpoint did ("answered HTTP 400", "stopped the reply"), and its reason."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return RemoteError(f"{endpoint.name} {what}: {_message(body)}.{hint}", _KINDS.get(code, "RemoteError"))


@contextmanager
def _translated(endpoint: Endpoint, timeout: httpx2.Timeout) -> Iterator[None]:
    """httpx2's transport errors as RemoteErrors that say what to check."""
    where = f"{endpoint.name} ({endpoint.api_base})"
    try:
        yield
    except httpx2.ConnectTimeout:
        raise RemoteError(f"{where} did not answer within {timeout.connect:g} s. Is the address right, and "
                          "is the server running?") from None
    except httpx2.ReadTimeout:
        raise RemoteError(f"{where} sent nothing for {timeout.read:g} s, so LM Station gave up waiting.") from None
    except httpx2.ConnectError as exc:
        reason = re.sub(r"^\[Errno -?\d+\] ", "", str(exc)).rstrip(".") or "no answer"
        raise RemoteError(f"Could not connect to {where}: {reason[0].lower()}{reason[1:]}. Is the server running, "
                          "and is the address right?") from None
    except (httpx2.UnsupportedProtocol, httpx2.InvalidURL) as exc:
        raise RemoteError(f"{endpoint.url} is not an address LM Station can use ({str(exc).rstrip('.')}).") from None
    except httpx2.TransportError as exc:  # the connection broke mid-reply, a proxy failed, ...
        raise RemoteError(f"The connection to {where} failed: {exc or type(exc).__name__}.") from None
