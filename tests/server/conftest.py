"""A server on 127.0.0.1 (a free port) over an Engine holding the starter model, for the module."""

from __future__ import annotations

import pytest

from app.engine import Engine, EngineConfig
from app.server import ServerConfig, ServerThread


@pytest.fixture(scope="module")
def engine(starter_model):
    with Engine() as engine:
        engine.load(EngineConfig(model=starter_model, device="cpu")).result()
        yield engine


@pytest.fixture(scope="module")
def server(engine):
    log: list[dict] = []
    thread = ServerThread(engine, ServerConfig(port=0, max_body_bytes=64 * 1024), on_request=log.append)
    thread.start()
    thread.log = log
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_name(starter_model) -> str:
    return starter_model.name
