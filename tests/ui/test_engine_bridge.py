"""The engine bridge with a real engine on a tiny checkpoint, driven through Qt signals."""

from __future__ import annotations

import time

import pytest


from app.ui.engine_bridge import start_bridge, stop_bridge
from tests.ui.heartbeat import Heartbeat

CHAT = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture
def bridge(qtbot, tiny_model_factory):
    folder, _ = tiny_model_factory("llama")
    bridge, thread = start_bridge()
    with qtbot.waitSignal(bridge.loaded, timeout=60_000) as loaded:
        bridge.request_load.emit({"model": str(folder), "device": "cpu", "dtype": "float32", "block_size": 16,
                                  "num_cache_blocks": 64})
    assert loaded.args[0]["device"] == "cpu"
    yield bridge
    stop_bridge(bridge, thread)


def test_reply_streams_in_several_updates_without_stalling_the_gui(qtbot, bridge) -> None:
    deltas: list[tuple[int, str, int]] = []
    bridge.delta.connect(lambda key, text, n: deltas.append((key, text, n)))
    with Heartbeat() as beat, qtbot.waitSignal(bridge.finished, timeout=60_000) as done:
        bridge.request_generate.emit(7, CHAT, {"temperature": 0.0, "max_new_tokens": 40, "ignore_eos": True})
    key, result = done.args
    assert key == 7 and result["finish_reason"] == "length" and result["error"] is None
    assert result["stats"]["completion_tokens"] == 40 and result["stats"]["ttft_s"] > 0
    assert len(deltas) > 1 and sum(n for _, _, n in deltas) == 40 and all(k == 7 for k, _, _ in deltas)
    assert beat.longest < 0.1, f"the GUI thread stalled {beat.longest * 1e3:.0f} ms"


def test_stop_ends_a_reply_within_half_a_second(qtbot, bridge) -> None:
    with qtbot.waitSignal(bridge.delta, timeout=60_000):
        bridge.request_generate.emit(1, CHAT, {"temperature": 0.8, "max_new_tokens": 100_000, "ignore_eos": True})
    start = time.perf_counter()
    with qtbot.waitSignal(bridge.finished, timeout=5_000) as done:
        bridge.request_stop.emit(1)
    assert time.perf_counter() - start < 0.5
    assert done.args[0] == 1 and done.args[1]["finish_reason"] == "cancelled"
    # Stopped before the engine saw it: finishes at once, nothing generated.
    with qtbot.waitSignal(bridge.finished, timeout=5_000) as done:
        bridge.request_stop.emit(2)
        bridge.request_generate.emit(2, CHAT, {"max_new_tokens": 10})
    assert done.args == [2, {"finish_reason": "cancelled", "error": None, "stats": None}]


def test_bad_requests_come_back_as_messages_and_keep_the_model(qtbot, bridge, tmp_path) -> None:
    with qtbot.waitSignal(bridge.load_failed, timeout=30_000) as failed:
        bridge.request_load.emit({"model": str(tmp_path / "missing"), "device": "cpu"})
    assert "missing" in failed.args[0]
    with qtbot.waitSignal(bridge.finished, timeout=30_000) as done:
        bridge.request_generate.emit(3, CHAT, {"temperature": -1.0})
    assert done.args[1]["finish_reason"] == "error" and "temperature" in done.args[1]["error"]
    with qtbot.waitSignal(bridge.finished, timeout=60_000) as done:  # the loaded model still serves
        bridge.request_generate.emit(4, CHAT, {"temperature": 0.0, "max_new_tokens": 5, "ignore_eos": True})
    assert done.args[1]["finish_reason"] == "length"


def test_devices_and_memory_come_as_plain_values(qtbot, bridge) -> None:
    with qtbot.waitSignal(bridge.devices, timeout=10_000) as found:
        bridge.request_devices.emit()
    devices = found.args[0]
    assert devices[-1]["id"] == "cpu" and devices[-1]["memory_bytes"] > 2**30
    with qtbot.waitSignal(bridge.memory, timeout=10_000) as memory:
        bridge.request_memory.emit("cpu")
    snapshot = memory.args[0]
    assert snapshot["device"] == "cpu" and 0 < snapshot["used_bytes"] < snapshot["total_bytes"] == devices[-1]["memory_bytes"]


def test_a_load_reports_its_progress(qtbot, tiny_model_factory) -> None:
    folder, _ = tiny_model_factory("qwen2")
    bridge, thread = start_bridge()
    heard: list[tuple[float, str]] = []
    bridge.load_progress.connect(lambda fraction, stage: heard.append((fraction, stage)))  # called on the engine thread
    try:
        with qtbot.waitSignal(bridge.loaded, timeout=60_000):
            bridge.request_load.emit({"model": str(folder), "device": "cpu", "dtype": "float32", "block_size": 16,
                                      "num_cache_blocks": 64})
    finally:
        stop_bridge(bridge, thread)
    weights = [f for f, stage in heard if stage == "weights"]
    assert len(weights) > 5 and weights == sorted(weights) and weights[-1] == 1.0 and 0 < weights[0] < 0.5
    assert heard[-1] == (1.0, "warming up")
