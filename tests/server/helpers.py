"""Plain HTTP calls for what the openai client will not send (bad JSON, no key, huge bodies), and
waiting for the engine to go idle."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_idle(engine, timeout_s: float = 30.0) -> dict:
    """The engine's stats once nothing runs or waits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.get("running") == 0 and stats.get("waiting") == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"the engine is still busy: {engine.stats()}")
