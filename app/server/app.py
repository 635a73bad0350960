"""The FastAPI application: OpenAI's endpoints over an Engine (or any ``backend.Backend``, such as
app/cluster's Ray Serve replicas), one submitted request per call.

Deltas come from the backend into an asyncio queue per request. A client that goes away cancels
its request (its KV blocks are freed at once); errors the engine reports before the first token
get their HTTP status, later ones end the stream with an error event. Requests past
``max_requests`` in flight are answered 429 rather than queued forever.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from app.engine import Engine
from app.engine.outputs import Delta, TokenLogprob
from app.server import errors, protocol
from app.server.backend import Backend, EngineBackend, Reply, ServedModel
from app.server.config import ServerConfig
from app.server.limits import BodySizeLimit

RequestLog = Callable[[dict], None]


def create_app(source: Engine | Backend, config: ServerConfig | None = None,
               on_request: RequestLog | None = None) -> FastAPI:
    backend = EngineBackend(source) if isinstance(source, Engine) else source
    config = config or ServerConfig()
    config.validate()
    app = FastAPI(title="LM Station", description="OpenAI-compatible API over the model loaded in LM Station.",
                  version="1")
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    in_flight = 0

    def authorize(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise errors.APIError(401, "missing API key: send it as 'Authorization: Bearer KEY'",
                                  code="invalid_api_key")
        if header[7:].strip() != config.api_key:
            raise errors.APIError(401, "incorrect API key", code="invalid_api_key")

    def log(request: Request, endpoint: str, started: float, status: int, final: Delta | None) -> None:
        if on_request is None:
            return
        stats = final.stats if final else None
        decode = stats.decode_tokens_per_s if stats else None
        on_request({"time": time.time(), "client": request.client.host if request.client else "",
                    "endpoint": endpoint, "status": status, "duration_s": time.perf_counter() - started,
                    "prompt_tokens": stats.prompt_tokens if stats else 0,
                    "completion_tokens": stats.completion_tokens if stats else 0,
                    "tokens_per_s": decode, "error": final.error if final else None})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **backend.health()}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(name) for name in backend.model_names()]}

    @app.get("/v1/models/{model}", dependencies=[Depends(authorize)])
    async def get_model(model: str) -> dict:
        return _model_card((await backend.model(model)).name)

    async def serve(request: Request, endpoint: str, served: ServedModel, submit: dict, gen, respond,
                    stream_chunks) -> Any:
        nonlocal in_flight
        if in_flight >= config.max_requests:
            raise errors.APIError(429, f"the server is busy ({config.max_requests} requests in flight); retry shortly",
                                  code="too_many_requests")
        started = time.perf_counter()
        in_flight += 1
        pending = backend.submit(served, gen, **submit)
        try:
            first = await pending.next()
        except BaseException:
            in_flight -= 1
            pending.cancel()
            raise
        if first.finished and first.error:
            in_flight -= 1
            log(request, endpoint, started, _status(first), first)
            raise errors.APIError.from_engine(first.error, first.error_type)
        if stream_chunks is None:
            try:
                final, text, logprobs = await _collect(request, pending, first)
            finally:
                in_flight -= 1
                pending.cancel()
            log(request, endpoint, started, _outcome(final), final)
            if final is None:  # the client left
                return JSONResponse({}, status_code=499)
            if final.error:
                raise errors.APIError.from_engine(final.error, final.error_type)
            return respond(final, text, logprobs)

        final: Delta | None = None
        released = False

        def release() -> None:
            """Once, however the stream ends: after its last event, when the client left mid-stream
            (its KV blocks go back now), or when it left before the first event was sent (the
            generator never started, so only the response's background task gets here)."""
            nonlocal in_flight, released
            if released:
                return
            released = True
            in_flight -= 1
            pending.cancel()
            log(request, endpoint, started, _outcome(final), final)

        async def events() -> AsyncIterator[str]:
            nonlocal final
            try:
                async for chunk, delta in stream_chunks(pending, first):
                    if delta is not None and delta.finished:
                        final = delta
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                release()

        return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(release),
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: protocol.ChatCompletionRequest, request: Request) -> Any:
        served = await backend.model(body.model)
        name, gen = served.name, body.generation_config(served.max_model_len)
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        messages = [m.as_engine_message() for m in body.messages]

        def respond(final: Delta, text: str, logprobs: list[TokenLogprob]) -> dict:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": protocol.finish_reason(final.finish_reason),
                      "logprobs": protocol.chat_logprobs(logprobs) if gen.logprobs is not None else None}
            return {**protocol.envelope("chat.completion", request_id, name, [choice], created),
                    "usage": protocol.usage(final.stats)}

        async def chunks(pending: Reply, first: Delta):
            def chunk(delta: dict, reason: str | None = None, logprobs: list[TokenLogprob] | None = None) -> dict:
                choice = {"index": 0, "delta": delta, "finish_reason": reason,
                          "logprobs": protocol.chat_logprobs(logprobs) if logprobs else None}
                return protocol.envelope("chat.completion.chunk", request_id, name, [choice], created)

            yield chunk({"role": "assistant", "content": ""}), None
            async for delta in _deltas(pending, first):
                if delta.error:
                    yield errors.APIError.from_engine(delta.error, delta.error_type).body(), delta
                    return
                if delta.text or delta.logprobs:
                    yield chunk({"content": delta.text}, logprobs=delta.logprobs), None
                if delta.finished:
                    yield chunk({}, protocol.finish_reason(delta.finish_reason)), delta
                    if body.stream_options and body.stream_options.include_usage:
                        yield {**protocol.envelope("chat.completion.chunk", request_id, name, [], created),
                               "usage": protocol.usage(delta.stats)}, None

        return await serve(request, "chat", served, {"messages": messages}, gen, respond,
                           chunks if body.stream else None)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: protocol.CompletionRequest, request: Request) -> Any:
        served = await backend.model(body.model)
        name, gen = served.name, body.generation_config(served.max_model_len)
        prompt = body.text()
        request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def respond(final: Delta, text: str, logprobs: list[TokenLogprob]) -> dict:
            choice = {"index": 0, "text": text, "finish_reason": protocol.finish_reason(final.finish_reason),
                      "logprobs": protocol.completion_logprobs(logprobs) if gen.logprobs is not None else None}
            return {**protocol.envelope("text_completion", request_id, name, [choice], created),
                    "usage": protocol.usage(final.stats)}

        async def chunks(pending: Reply, first: Delta):
            offset = 0
            async for delta in _deltas(pending, first):
                if delta.error:
                    yield errors.APIError.from_engine(delta.error, delta.error_type).body(), delta
                    return
                reason = protocol.finish_reason(delta.finish_reason) if delta.finished else None
                if delta.text or delta.logprobs or delta.finished:
                    logprobs = protocol.completion_logprobs(delta.logprobs, offset) if delta.logprobs else None
                    choice = {"index": 0, "text": delta.text, "finish_reason": reason, "logprobs": logprobs}
                    yield protocol.envelope("text_completion", request_id, name, [choice], created), delta
                    offset += len(delta.text)
                if delta.finished and body.stream_options and body.stream_options.include_usage:
                    yield {**protocol.envelope("text_completion", request_id, name, [], created),
                           "usage": protocol.usage(delta.stats)}, None

        return await serve(request, "completions", served, {"prompt": prompt}, gen, respond,
                           chunks if body.stream else None)

    return app


def _model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lmstation"}


def _status(delta: Delta) -> int:
    return errors.engine_error(delta.error_type)[0]


def _outcome(final: Delta | None) -> int:
    """The status a served request ends with, for the log: 499 when the client left first."""
    if final is None:
        return 499
    return _status(final) if final.error else 200


async def _deltas(pending: Reply, first: Delta) -> AsyncIterator[Delta]:
    delta = first
    while True:
        yield delta
        if delta.finished:
            return
        delta = await pending.next()


async def _collect(request: Request, pending: Reply, first: Delta
                   ) -> tuple[Delta | None, str, list[TokenLogprob]]:
    """The whole reply: (final delta, text, logprobs); final is None when the client left first
    (a watcher notices, and cancels the request)."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.5)
        left.set()
        pending.cancel()

    left = asyncio.Event()
    watcher = asyncio.create_task(watch())
    text, logprobs, delta = [first.text], list(first.logprobs or []), first
    try:
        while not delta.finished:
            delta = await pending.next()
            text.append(delta.text)
            logprobs.extend(delta.logprobs or [])
    finally:
        watcher.cancel()
    if left.is_set():
        return None, "", []
    return delta, "".join(text), logprobs
