"""The remote-endpoint client against a real LM Station server on 127.0.0.1 (the starter model):
model lists, streamed replies with the engine's stats, sampling settings, cancel, pictures, and a
clear message for each way it can go wrong."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from app.remote import Endpoint, RemoteError, list_models, openai_messages, openai_sampling, stream_chat
from tests.remote.servers import KEY, closed_port, loaded_engine, logged, serving
from tests.server.helpers import wait_idle

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(starter_model):
    with loaded_engine(starter_model, max_model_len=256) as engine:
        yield engine


@pytest.fixture(scope="module")
def server(engine):
    with serving(engine) as server:
        yield server


@pytest.fixture
def lab(server) -> Endpoint:
    return Endpoint("lab1", "Lab server", server.base_url, KEY)


def chat(endpoint: Endpoint, model: str, messages=QUESTION, **options) -> tuple[list[str], object]:
    pieces: list[str] = []
    reply = stream_chat(endpoint, model, messages, {"temperature": 0.0, "max_new_tokens": 48, **options},
                        pieces.append, threading.Event())
    return pieces, reply


def test_lists_the_served_model_and_streams_a_reply_with_the_engines_stats(lab, server, starter_model) -> None:
    assert list_models(lab) == [starter_model.name]
    before = len(server.log)
    pieces, reply = chat(lab, starter_model.name)
    assert len(pieces) > 1 and "Paris" in "".join(pieces)
    assert reply.finish_reason == "stop"
    served = logged(server, before + 1)
    assert served["endpoint"] == "chat" and served["status"] == 200
    stats = reply.stats
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (served["prompt_tokens"],
                                                                    served["completion_tokens"])
    assert 0 < stats["ttft_s"] <= stats["total_s"] and stats["decode_tokens_per_s"] > 0


def test_sampling_settings_reach_the_server(lab, starter_model) -> None:
    _, reply = chat(lab, starter_model.name, max_new_tokens=5, ignore_eos=True)
    assert reply.finish_reason == "length" and reply.stats["completion_tokens"] == 5
    seeded = [chat(lab, starter_model.name, temperature=1.0, top_k=40, seed=7, max_new_tokens=12)[0] for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert openai_sampling({"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                            "max_new_tokens": 64, "seed": None}) == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64}
    with pytest.raises(RemoteError, match="output_logits cannot be sent to a remote model"):
        openai_sampling({"output_logits": True})


def test_a_wrong_or_missing_key_is_named(server, starter_model) -> None:
    wrong = Endpoint("lab2", "Lab server", server.base_url, "sk-not-it")
    for call in (lambda: list_models(wrong), lambda: chat(wrong, starter_model.name)):
        with pytest.raises(RemoteError) as caught:
            call()
        assert caught.value.kind == "AuthenticationError"
        assert str(caught.value) == ("Lab server refused the API key (HTTP 401: incorrect API key). "
                                     "Check the key in Settings → Connections.")
    with pytest.raises(RemoteError, match=r"^Lab server wants an API key \(HTTP 401: missing API key"):
        list_models(Endpoint("lab3", "Lab server", server.base_url))


def test_a_dead_endpoint_and_a_silent_one_are_named() -> None:
    dead = Endpoint("d", "Old box", f"http://127.0.0.1:{closed_port()}")
    assert dead.api_base.endswith("/v1")
    with pytest.raises(RemoteError) as caught:
        list_models(dead)
    assert str(caught.value) == (f"Could not connect to Old box ({dead.api_base}): connection refused. "
                                 "Is the server running, and is the address right?")
    with socket.socket() as silent:  # takes the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.perf_counter()
        with pytest.raises(RemoteError, match=r"^Mute \(http://127\.0\.0\.1:\d+/v1\) sent nothing for 0\.5 s"):
            list_models(Endpoint("m", "Mute", f"http://127.0.0.1:{silent.getsockname()[1]}/v1"), timeout_s=0.5)
        assert time.perf_counter() - started < 5


def test_a_wrong_address_an_unknown_model_and_an_overlong_chat_are_named(lab, server, starter_model) -> None:
    elsewhere = Endpoint("w", "Lab server", server.base_url.replace("/v1", "/api"), KEY)
    with pytest.raises(RemoteError, match=r"answered HTTP 404: Not Found\. Is http://127\.0\.0\.1:\d+/api the API's "
                                          r"address\? It usually ends in /v1\."):
        list_models(elsewhere)
    with pytest.raises(RemoteError, match="answered HTTP 404: the model 'gpt-9' does not exist here"):
        chat(lab, "gpt-9")
    with pytest.raises(RemoteError) as caught:
        chat(lab, starter_model.name, [{"role": "user", "content": "word " * 400}])
    assert caught.value.kind == "ContextOverflowError" and "this model's context holds 256" in str(caught.value)


def test_cancel_ends_the_reply_and_the_server_stops_it(lab, engine, server, starter_model) -> None:
    cancelled, pieces, result = threading.Event(), [], []

    def on_text(text: str) -> None:
        pieces.append(text)
        cancelled.set()

    worker = threading.Thread(target=lambda: result.append(stream_chat(
        lab, starter_model.name, QUESTION, {"max_new_tokens": 200, "ignore_eos": True}, on_text, cancelled)))
    before = len(server.log)
    worker.start()
    worker.join(timeout=30)
    assert result and result[0].finish_reason == "cancelled" and len(pieces) < 20
    assert wait_idle(engine)["running"] == 0  # the closed connection cancelled the request on the server
    served = logged(server, before + 1)
    assert served["status"] == 499 and served["completion_tokens"] < 200


def png(tmp_path, name: str, colour: int):
    path = tmp_path / name
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color=(colour, 90, 200)).save(out, format="PNG")
    path.write_bytes(out.getvalue())
    return path


def test_pictures_go_as_data_urls_and_a_text_only_model_says_so(tmp_path, lab) -> None:
    from tests.tiny_models import write_tiny_llava

    write_tiny_llava(tmp_path / "tiny-llava")
    asking = [{"role": "user", "content": [{"type": "image", "image": str(png(tmp_path, "a.png", 10))},
                                           {"type": "text", "text": "What is this?"}]}]
    sent = openai_messages(asking)[0]["content"]  # a remote server cannot read this machine's files
    assert sent[0]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert sent[1] == {"type": "text", "text": "What is this?"}
    with loaded_engine(tmp_path / "tiny-llava", dtype="float32") as vision, serving(vision, api_key=None) as server:
        endpoint = Endpoint("v", "Vision box", server.base_url)
        _, with_picture = chat(endpoint, "tiny-llava", asking, max_new_tokens=4, ignore_eos=True)
        _, without = chat(endpoint, "tiny-llava", [{"role": "user", "content": "What is this?"}], max_new_tokens=4,
                          ignore_eos=True)
    assert with_picture.finish_reason == "length"
    assert with_picture.stats["prompt_tokens"] >= without.stats["prompt_tokens"] + 16  # the picture's places
    with pytest.raises(RemoteError, match=r"^Lab server answered HTTP 400: .*reads text only"):
        chat(lab, "SmolLM2-135M-Instruct", asking)
    (tmp_path / "a.png").unlink()
    with pytest.raises(RemoteError, match=r"^A picture in this chat could not be read \(a\.png: No such file"):
        chat(lab, "SmolLM2-135M-Instruct", asking)


def test_the_key_is_never_logged_nor_printed(lab, starter_model, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        list_models(lab)
        chat(lab, starter_model.name, max_new_tokens=4)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert all(KEY not in record.getMessage() for record in caplog.records)
    assert KEY not in repr(lab) and KEY not in str(lab)


def test_the_client_imports_neither_qt_nor_torch() -> None:
    code = ("import sys, app.remote; "
            "assert not {'torch', 'PySide6'} & set(sys.modules), sorted({'torch', 'PySide6'} & set(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
