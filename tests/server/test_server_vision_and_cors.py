"""Pictures through the server (image_url parts) on a tiny vision model, and CORS off unless asked."""

from __future__ import annotations

import base64
import io
import urllib.request

import openai
import pytest

from app.engine import Engine, EngineConfig, GenerationConfig
from app.server import ServerConfig, ServerThread
from tests.engine.vision.chats import picture
from tests.tiny_models import write_tiny_llava


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llava")
    write_tiny_llava(folder)
    with Engine() as engine:
        engine.load(EngineConfig(model=folder, device="cpu", dtype="float32")).result()
        server = ServerThread(engine, ServerConfig(port=0))
        server.start()
        yield engine, server, folder.name
        server.stop()


def data_url(seed: int) -> str:
    out = io.BytesIO()
    picture(40, 30, seed).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_a_picture_as_a_data_url_gets_the_engines_reply(vision_server) -> None:
    engine, server, model = vision_server
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    url = data_url(1)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=6,
                                           extra_body={"ignore_eos": True})
    # The same conversation straight into the engine: the same tokens and prompt length.
    direct = engine.submit(messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                                  {"type": "image_url", "image_url": {"url": url}}]}],
                           gen=GenerationConfig(temperature=0, max_new_tokens=6, ignore_eos=True)).result()
    assert reply.choices[0].message.content == direct.text
    assert reply.usage.prompt_tokens == direct.stats.prompt_tokens > 16  # the picture's places included
    other = client.chat.completions.create(
        model=model, temperature=0, max_tokens=6, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               {"type": "image_url", "image_url": {"url": data_url(2)}}]}])
    assert other.usage.prompt_tokens == reply.usage.prompt_tokens


def test_web_addresses_and_broken_pictures_are_refused_clearly(vision_server) -> None:
    _, server, model = vision_server
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    for url, words in (("https://example.com/cat.png", "web"), ("data:image/png;base64,bm90IGEgcGljdHVyZQ==", "")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=model, max_tokens=2, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
        assert refused.value.body["type"] == "invalid_request_error" and words in refused.value.body["message"]


def test_cors_only_when_enabled(vision_server) -> None:
    engine, server, _ = vision_server
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}

    def allowed_origin(base: str) -> str | None:
        request = urllib.request.Request(base + "/chat/completions", method="OPTIONS", headers=preflight)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.headers.get("access-control-allow-origin")
        except urllib.error.HTTPError as err:
            return err.headers.get("access-control-allow-origin")

    assert allowed_origin(server.base_url) is None
    open_to = ServerThread(engine, ServerConfig(port=0, cors_origins=("http://localhost:3000",)))
    open_to.start()
    try:
        assert allowed_origin(open_to.base_url) == "http://localhost:3000"
    finally:
        open_to.stop()
