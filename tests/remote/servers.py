"""Real OpenAI-compatible servers on 127.0.0.1 for the remote-endpoint tests: ``lmstation serve`` in
a process of its own, as a user runs it, or the project's server over an Engine in this process
(port 0: a free one), with a log of the requests it served."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.engine import Engine, EngineConfig
from app.server import ServerConfig, ServerThread

KEY = "sk-test-7f3a9c"  # what the served endpoints want


@contextmanager
def loaded_engine(model: Path, collect: Callable[[], object] = gc.collect, **config) -> Iterator[Engine]:
    """An engine in this process, on the CPU; ``collect`` as Engine's (a window's tests pass one
    that leaves the collection to the GUI thread, tests/ui/conftest.py)."""
    with Engine(collect=collect) as engine:
        engine.load(EngineConfig(model=model, device="cpu", **config)).result()
        yield engine


@contextmanager
def serving(engine: Engine, api_key: str | None = KEY) -> Iterator[ServerThread]:
    """A running server; its ``log`` lists the requests it served (endpoint, status, token counts)."""
    log: list[dict] = []
    server = ServerThread(engine, ServerConfig(port=0, api_key=api_key), on_request=log.append)
    server.start()
    server.log = log
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def lmstation_serve(model: Path, home: Path, log: Path, api_key: str = KEY) -> Iterator[str]:
    """``lmstation serve MODEL --api-key KEY`` on a free port until the block ends; yields its
    base URL. A process of its own: none of its threads share this process's interpreter (and
    garbage collector) with the window under test."""
    port = closed_port()
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "app", "serve", str(model), "--port", str(port),
                                   "--api-key", api_key, "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "LMSTATION_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while "Serving" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)


def closed_port() -> int:
    """A port nothing listens on (taken and let go at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logged(server: ServerThread, count: int, timeout_s: float = 10.0) -> dict:
    """The server's ``count``-th logged request, once it is there: a streamed reply is logged just
    after its last event, so a client can be done a moment before the log has it."""
    deadline = time.monotonic() + timeout_s
    while len(server.log) < count:
        assert time.monotonic() < deadline, f"the server logged {len(server.log)} requests, not {count}"
        time.sleep(0.01)
    return server.log[count - 1]
