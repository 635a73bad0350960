"""The engine with its own thread: load, submit, stream, cancel, unload.

All model work happens on the engine thread, which owns the device. Callers on any thread
talk to it through a command queue and get deltas back through per-request queues (and an
optional callback, which runs on the engine thread and must return quickly).
"""

from __future__ import annotations

import gc
import itertools
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine_core import EngineCore
from app.engine.errors import EngineError, NoModelLoadedError, TensorParallelError
from app.engine.loader import model_loader
from app.engine.models.config import ModelConfig
from app.engine.outputs import Delta, RequestStats
from app.engine.tokenizer import Message

log = logging.getLogger(__name__)


class RequestHandle:
    """A submitted request: iterate it for deltas, or call result() for the whole reply."""

    def __init__(self, engine: "Engine", request_id: int):
        self.engine, self.request_id = engine, request_id
        self._queue: queue.Queue[Delta] = queue.Queue()
        self.final: Delta | None = None

    def _put(self, delta: Delta) -> None:
        self._queue.put(delta)

    def __iter__(self) -> Iterator[Delta]:
        while self.final is None:
            delta = self._queue.get()
            if delta.finished:
                self.final = delta
            yield delta

    def cancel(self) -> None:
        self.engine.cancel(self.request_id)

    def result(self) -> "Completion":
        text: list[str] = []
        tokens: list[int] = []
        for delta in self:
            text.append(delta.text)
            tokens.extend(delta.token_ids)
        assert self.final is not None
        if self.final.error:
            raise EngineError(self.final.error)
        return Completion("".join(text), tokens, self.final.finish_reason, self.final.stats, self.final.logits)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stats: RequestStats | None
    logits: list[torch.Tensor] | None = None


@dataclass
class _Submit:
    handle: RequestHandle
    prompt: str | None
    messages: list[Message] | None
    token_ids: list[int] | None
    gen: GenerationConfig
    on_delta: Callable[[Delta], None] | None


class Engine:
    def __init__(self, collect: Callable[[], object] = gc.collect) -> None:
        """``collect`` runs on the engine thread after a model is let go (an unload, a load that
        failed) to free what the model kept in reference cycles: gc.collect by default. A collection
        frees every unreachable object, on the thread that runs it; an app whose objects must die on
        a thread of its own (Qt's, on the GUI thread) passes a function that has it done there
        (app/ui/collector.py)."""
        self._collect = collect
        self._commands: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._core: EngineCore | None = None
        self._stats: dict[str, Any] = {"state": "empty"}
        self._thread = threading.Thread(target=self._loop, name="lmstation-engine", daemon=True)
        self._thread.start()

    # ---- caller side --------------------------------------------------------------------
    def load(self, config: EngineConfig | str | Path,
             on_progress: Callable[[float, str], None] | None = None) -> Future:
        """Loads a model (replacing the current one). The future resolves to the stats dict or
        raises the load error; a model folder that fails its checks leaves the current model in place.
        ``on_progress(fraction, stage)`` hears, on the engine thread, how far reading the weights got
        ("weights") and when the kernels warm up ("warming up")."""
        if not isinstance(config, EngineConfig):
            config = EngineConfig(model=config)
        return self._call(self._do_load, config, on_progress)

    def unload(self) -> Future:
        return self._call(self._do_unload)

    def submit(
        self,
        prompt: str | None = None,
        *,
        messages: list[Message] | None = None,
        token_ids: list[int] | None = None,
        gen: GenerationConfig | None = None,
        on_delta: Callable[[Delta], None] | None = None,
    ) -> RequestHandle:
        handle = RequestHandle(self, next(self._ids))
        self._commands.put(_Submit(handle, prompt, messages, token_ids, gen or GenerationConfig(), on_delta))
        return handle

    def cancel(self, request_id: int) -> None:
        self._commands.put(("cancel", request_id))

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self.unload().result()
            self._commands.put(None)
            self._thread.join()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _call(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        self._commands.put((future, fn, args))
        return future

    # ---- engine thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            idle = self._core is None or not self._core.has_work()
            try:
                command = self._commands.get(block=idle)
            except queue.Empty:
                command = False
            while command is not False:
                if command is None:
                    return
                self._handle(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = False
            if self._core is not None and self._core.has_work():
                self._core.step()
                self._stats = {"state": "busy", **self._core.stats()}
            elif self._core is not None:
                self._stats = {"state": "idle", **self._core.stats()}
            if self._core is not None and self._core.failure:
                self._drop_failed()

    def _handle(self, command) -> None:
        if isinstance(command, _Submit):
            self._accept(command)
        elif command[0] == "cancel":
            if self._core is not None:
                self._core.cancel(command[1])
        elif command[0] == "wake":  # a tensor-parallel rank failed: the loop looks at core.failure
            pass
        else:
            future, fn, args = command
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # the caller gets every failure, the thread lives on
                    future.set_exception(exc)

    def _accept(self, cmd: _Submit) -> None:
        handle = cmd.handle
        listening = cmd.on_delta is not None

        def emit(delta: Delta) -> None:
            nonlocal listening
            handle._put(delta)
            if not listening:
                return
            try:
                cmd.on_delta(delta)
            except Exception:  # the listener's failure ends its request, never the engine thread
                listening = False
                log.warning("request %s: its on_delta callback failed; cancelling it", handle.request_id,
                            exc_info=True)
                self._commands.put(("cancel", handle.request_id))

        try:
            if self._core is None:
                raise NoModelLoadedError("no model is loaded")
            prepared = {"token_ids": cmd.token_ids} if cmd.token_ids is not None else self._core.prepare(
                cmd.prompt, cmd.messages)
            self._core.add_request(gen=cmd.gen, emit=emit, request_id=handle.request_id, **prepared)
        except EngineError as exc:
            emit(Delta(handle.request_id, finished=True, finish_reason="error", error=str(exc),
                       error_type=type(exc).__name__))

    def _do_load(self, config: EngineConfig, on_progress: Callable[[float, str], None] | None) -> dict[str, Any]:
        model_dir = Path(config.model).expanduser()
        # Before the current model is touched:
        checked = model_loader.check_model_folder(model_dir, config.load_format, config.tensor_parallel)
        self._do_unload()
        self._stats = {"state": "loading", "model": str(model_dir)}
        try:
            self._core = self._start_core(config, model_dir, checked, on_progress)
        except BaseException:
            self._stats = {"state": "empty"}
            self._release_memory()
            raise
        self._core.watch(lambda: self._commands.put(("wake",)))
        self._stats = {"state": "idle", **self._core.stats()}
        return self.stats()

    @staticmethod
    def _start_core(config: EngineConfig, model_dir: Path, checked: ModelConfig,
                    on_progress: Callable[[float, str], None] | None) -> EngineCore:
        weights = None if on_progress is None else (lambda fraction: on_progress(fraction, "weights"))
        loaded = model_loader.load(config, model_dir, checked, weights)
        if on_progress is not None:
            on_progress(1.0, "warming up")
        try:
            core = EngineCore(loaded, config)
        except BaseException as exc:
            loaded.close()
            if loaded.workers is not None and loaded.workers.failure:  # the cause: a rank died or failed
                raise TensorParallelError(loaded.workers.failure) from exc
            raise
        if core.failure:  # a tensor-parallel rank failed while the core warmed up
            core.close()
            raise TensorParallelError(core.failure)
        return core

    def _do_unload(self, failure: EngineError | None = None) -> None:
        """failure: why the model cannot run any more; its requests fail with it and the stats show it."""
        if self._core is None:
            return
        if failure is None:
            self._core.fail_all("the model was unloaded")
        else:
            self._core.fail_all(str(failure), type(failure).__name__)
        self._core.close()
        self._core = None
        self._stats = {"state": "empty", **({"error": str(failure)} if failure else {})}
        self._release_memory()

    def _drop_failed(self) -> None:
        """A tensor-parallel rank failed: the model is unloaded, the engine stays up for the next load."""
        self._do_unload(TensorParallelError(self._core.failure))

    def _release_memory(self) -> None:
        self._collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
