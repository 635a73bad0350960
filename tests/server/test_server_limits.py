"""Keys, the in-flight limit, disconnects and the settings the server refuses."""

from __future__ import annotations

import openai
import pytest

from app.server import ServerConfig, ServerThread
from app.server.config import ServerConfigError
from tests.server.helpers import get, post, wait_idle

QUESTION = [{"role": "user", "content": "Tell me a long story about a dragon."}]


def test_settings_refused_before_binding() -> None:
    with pytest.raises(ServerConfigError, match="API key"):
        ServerConfig(host="0.0.0.0").validate()
    ServerConfig(host="0.0.0.0", api_key="k").validate()
    ServerConfig(host="::1").validate()
    with pytest.raises(ServerConfigError, match="port"):
        ServerConfig(port=70000).validate()


def test_a_taken_port_is_a_clear_error(engine, server) -> None:
    with pytest.raises(ServerConfigError, match="cannot listen"):
        ServerThread(engine, ServerConfig(port=server.port)).start()


def test_api_key(engine, model_name) -> None:
    keyed = ServerThread(engine, ServerConfig(port=0, api_key="s3cret"))
    keyed.start()
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            openai.OpenAI(base_url=keyed.base_url, api_key="wrong", max_retries=0).models.list()
        assert refused.value.body["code"] == "invalid_api_key"
        status, body = post(keyed.base_url + "/chat/completions", b"{}")  # no key at all
        assert status == 401 and "missing API key" in body["error"]["message"]
        assert get(keyed.base_url.removesuffix("/v1") + "/health")["status"] == "ok"  # open: no data in it
        good = openai.OpenAI(base_url=keyed.base_url, api_key="s3cret", max_retries=0)
        assert good.models.list().data[0].id == model_name
    finally:
        keyed.stop()


def test_disconnect_mid_stream_frees_the_blocks(engine, client, model_name) -> None:
    idle = wait_idle(engine)["free_cache_tokens"]
    stream = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=400, stream=True,
                                            temperature=0, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert engine.stats()["free_cache_tokens"] < idle  # its prompt and first tokens hold blocks
    stream.close()
    assert wait_idle(engine, 10)["free_cache_tokens"] == idle


def test_disconnect_while_waiting_for_a_whole_reply(engine, server, model_name) -> None:
    idle = wait_idle(engine)["free_cache_tokens"]
    impatient = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=2000,
                                          extra_body={"ignore_eos": True})
    assert wait_idle(engine, 10)["free_cache_tokens"] == idle  # cancelled, not run to 2000 tokens
    assert server.log[-1]["status"] == 499


def test_requests_past_the_limit_get_429(engine, model_name) -> None:
    small = ServerThread(engine, ServerConfig(port=0, max_requests=1))
    small.start()
    try:
        client = openai.OpenAI(base_url=small.base_url, api_key="x", max_retries=0)
        stream = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=300, stream=True,
                                                extra_body={"ignore_eos": True})
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as busy:
            client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=2)
        assert busy.value.status_code == 429
        stream.close()
        wait_idle(engine)
        assert client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=2).usage.completion_tokens == 2
    finally:
        small.stop()



def test_a_client_gone_before_its_first_event_is_released(engine, model_name) -> None:
    """A client that asks for a stream and leaves before the first event reaches it: the response
    body never starts, so nothing inside it runs; the request must still be cancelled and leave the
    in-flight count, or a few such clients would leave the server answering 429 for good. Driven
    at the ASGI level, as uvicorn calls the app (spec 2.3), where that moment can be held open: the
    transport is slow to send the response head, and the disconnect is already waiting."""
    import json

    import anyio

    from app.server.app import create_app

    app = create_app(engine, ServerConfig(max_requests=1))

    async def call(body: dict) -> list[dict]:
        sent, pending = [], [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

        async def receive() -> dict:
            return pending.pop(0) if pending else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                await anyio.sleep(0.5)  # meanwhile the server notices the disconnect
            sent.append(message)

        path = b"/v1/chat/completions"
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path.decode(), "raw_path": path, "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 23333)}
        await app(scope, receive, send)
        return sent

    asked = {"model": model_name, "messages": QUESTION, "max_tokens": 400, "stream": True, "ignore_eos": True}
    sent = anyio.run(call, asked)
    assert not any(m["type"] == "http.response.body" and m.get("body") for m in sent)  # no event went out
    wait_idle(engine, 10)  # cancelled, not generating 400 tokens for nobody
    again = anyio.run(call, {**asked, "stream": False, "max_tokens": 2})
    assert again[0]["status"] != 429  # the first request no longer counts as in flight
