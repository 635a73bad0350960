"""The GUI's one door to the engine: a QObject living in its own QThread, owning the Engine.

The GUI asks through the request signals (load, generate, stop, unload); each runs in the
bridge's thread, never in the GUI's. Answers come back as signals carrying plain values (text,
ints, dicts of numbers and strings), queued to the GUI thread by Qt, so the window keeps painting
while a model loads or a reply streams. No tensor ever crosses this boundary.

Replies are keyed by an int the GUI picks (``reply``), so the GUI can stop one before the
engine has even seen it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThread, Signal, Slot

if TYPE_CHECKING:  # the engine (and torch) load in the bridge's thread, after the window shows
    from app.engine import Engine
    from app.engine.outputs import Delta


class EngineBridge(QObject):
    # requests (emit from any thread; the slots run in the bridge's thread)
    request_load = Signal(dict)  # EngineConfig fields; model None: the starter model
    request_generate = Signal(int, list, dict)  # reply key, chat messages, GenerationConfig fields
    request_stop = Signal(int)  # reply key
    request_unload = Signal()
    request_import_gguf = Signal(str)  # a .gguf file; answered by ``gguf_imported``
    request_devices = Signal()
    request_memory = Signal(str)  # device id ("cpu", "cuda:0"); answered by ``memory``
    request_server_start = Signal(dict)  # app.server.ServerConfig fields; answered by ``server_state``
    request_server_stop = Signal()

    # answers
    state_changed = Signal(str)  # "empty" | "loading" | "ready"
    load_progress = Signal(float, str)  # share done, stage: "converting" | "weights" | "warming up"
    loaded = Signal(dict)  # the engine's stats: model, device, dtype, kernels, cache tokens, ...
    load_failed = Signal(str)
    delta = Signal(int, str, int)  # reply key, new text, new tokens
    gguf_imported = Signal(str, str)  # the new model folder (or ""), the error (or "")
    devices = Signal(list)  # [{"id", "name", "memory_bytes"}], GPUs first, the CPU last
    memory = Signal(dict)  # {"device", "used_bytes", "total_bytes"}
    finished = Signal(int, dict)  # reply key, {"finish_reason", "error", "error_type", "stats"}
    server_state = Signal(dict)  # {"running", "url", "error"}
    server_request = Signal(dict)  # one served request: time, client, endpoint, tokens, tok/s, status
    # The engine let a model go: what it kept in reference cycles waits for a collection on the GUI
    # thread (app/ui/collector.py), never on the engine's, where it would free Qt objects too.
    collect_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._engine: Engine | None = None
        self._handles: dict[int, int] = {}  # reply key -> engine request id
        self._stopped: set[int] = set()  # keys stopped before the engine saw them
        self.request_load.connect(self._load)
        self.request_generate.connect(self._generate)
        self.request_stop.connect(self._stop)
        self.request_unload.connect(self._unload)
        self.request_import_gguf.connect(self._import_gguf)
        self.request_devices.connect(self._devices)
        self.request_memory.connect(self._memory)
        self.request_server_start.connect(self._server_start)
        self.request_server_stop.connect(self._server_stop)
        self._server = None  # app.server.ServerThread while the server runs

    @property
    def engine(self) -> Engine:
        if self._engine is None:  # created in the bridge's thread, on first use
            from app.engine import Engine

            self._engine = Engine(collect=self.collect_requested.emit)
        return self._engine

    @Slot(dict)
    def _load(self, options: dict) -> None:
        from app.engine import EngineConfig

        known = {f.name for f in fields(EngineConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            self.load_failed.emit(f"unknown engine settings: {', '.join(unknown)}")
            return
        self.state_changed.emit("loading")
        if options.get("model") is None:  # the starter model, converted here on first use (slow)
            from app.library import resolve_model

            self.load_progress.emit(0.0, "converting")
            try:
                options = {**options, "model": resolve_model(None)}
            except (OSError, ValueError) as exc:
                self.state_changed.emit("empty" if self.engine.stats().get("state") == "empty" else "ready")
                self.load_failed.emit(f"the starter model is not available: {exc}")
                return
        self.engine.load(EngineConfig(**options), self.load_progress.emit).add_done_callback(self._on_loaded)

    def _on_loaded(self, future: Future) -> None:  # runs on the engine thread
        error = future.exception()
        if error is None:  # the stats first: "ready" then finds the window knowing the model
            self.loaded.emit(future.result())
            self.state_changed.emit("ready")
        else:  # the engine keeps the model it had, if any
            self.state_changed.emit("empty" if self.engine.stats().get("state") == "empty" else "ready")
            self.load_failed.emit(str(error))

    @Slot(int, list, dict)
    def _generate(self, reply: int, messages: list, options: dict) -> None:
        if reply in self._stopped:
            self._stopped.discard(reply)
            self.finished.emit(reply, {"finish_reason": "cancelled", "error": None, "stats": None})
            return
        from app.engine import GenerationConfig

        try:
            gen = GenerationConfig(**options)
        except TypeError as exc:
            self.finished.emit(reply, {"finish_reason": "error", "error": str(exc), "stats": None})
            return

        def on_delta(d: Delta) -> None:  # runs on the engine thread: emit and return
            if d.text or d.token_ids:
                self.delta.emit(reply, d.text, len(d.token_ids))
            if d.finished:
                self._handles.pop(reply, None)
                stats = d.stats.as_dict() if d.stats is not None else None
                self.finished.emit(reply, {"finish_reason": d.finish_reason, "error": d.error,
                                           "error_type": d.error_type, "stats": stats})

        handle = self.engine.submit(messages=messages, gen=gen, on_delta=on_delta)
        self._handles[reply] = handle.request_id

    @Slot(int)
    def _stop(self, reply: int) -> None:
        request_id = self._handles.get(reply)
        if request_id is None:
            self._stopped.add(reply)
        else:
            self.engine.cancel(request_id)

    @Slot()
    def _unload(self) -> None:
        if self._engine is not None:
            self._engine.unload().result()
        self.state_changed.emit("empty")

    @Slot(str)
    def _import_gguf(self, file: str) -> None:
        """Converts on a thread of its own: a large file takes minutes, and replies keep streaming."""

        def convert() -> None:
            from app.engine.errors import EngineError
            from app.library import import_gguf

            try:
                self.gguf_imported.emit(str(import_gguf(Path(file))), "")
            except (OSError, ValueError, EngineError) as exc:
                self.gguf_imported.emit("", str(exc))

        threading.Thread(target=convert, name="lmstation-gguf-import", daemon=True).start()

    @Slot()
    def _devices(self) -> None:
        from app.engine.devices import list_devices

        self.devices.emit(list_devices())

    @Slot(str)
    def _memory(self, device: str) -> None:
        from app.engine.devices import memory_in_use

        self.memory.emit(memory_in_use(device))

    @Slot(dict)
    def _server_start(self, options: dict) -> None:
        """The OpenAI-compatible server over this bridge's engine: the chat and outside clients
        share the loaded model (and its batches)."""
        from app.server import ServerConfig, ServerThread
        from app.server.config import ServerConfigError

        self._server_stop(announce=False)
        try:
            server = ServerThread(self.engine, ServerConfig(**options), on_request=self.server_request.emit)
            server.start()
        except (ServerConfigError, TypeError) as exc:
            self.server_state.emit({"running": False, "url": "", "error": str(exc)})
            return
        self._server = server
        self.server_state.emit({"running": True, "url": server.base_url, "error": ""})

    @Slot()
    def _server_stop(self, announce: bool = True) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if announce:
            self.server_state.emit({"running": False, "url": "", "error": ""})

    def shutdown(self) -> None:
        """Stops the engine thread (call from the bridge's thread, or after its QThread ended)."""
        self._server_stop(announce=False)
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def start_bridge() -> tuple[EngineBridge, QThread]:
    """A bridge moved to a new, started QThread. Stop with stop_bridge()."""
    thread = QThread()
    thread.setObjectName("lmstation-engine-bridge")
    bridge = EngineBridge()
    bridge.moveToThread(thread)
    thread.start()
    return bridge, thread


def stop_bridge(bridge: EngineBridge, thread: QThread) -> None:
    thread.quit()
    thread.wait()
    bridge.shutdown()
