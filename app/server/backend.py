"""What the HTTP app serves from: the Engine in this process, or (``app/cluster``) Ray Serve
replicas on other machines. The app only needs the served models' names and context lengths,
a way to start a request whose deltas arrive on the event loop, and a way to cancel it; keeping
that surface this small is what lets one app (limits, errors, streaming) front both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.engine import Engine
from app.engine.config import GenerationConfig
from app.engine.outputs import Delta
from app.engine.tokenizer import Message
from app.server import errors


@dataclass(frozen=True)
class ServedModel:
    name: str  # what requests name in "model"
    max_model_len: int  # the default reply length is what the context leaves


class Reply(Protocol):
    """One request's deltas, in order; the last has ``finished`` set (with an error if it failed)."""

    async def next(self) -> Delta: ...

    def cancel(self) -> None:
        """Stops generating (the client left); a no-op once finished."""


class Backend(Protocol):
    def health(self) -> dict:
        """What /health reports beside its status."""

    def model_names(self) -> list[str]:
        """The models requests may name now (for /v1/models)."""

    async def model(self, requested: str) -> ServedModel:
        """The served model of that name, or an APIError (404 unknown, 503 none loaded)."""

    def submit(self, model: ServedModel, gen: GenerationConfig, *, prompt: str | None = None,
               messages: list[Message] | None = None) -> Reply:
        """Starts a request; must be called on the event loop that will await its deltas."""


class EngineReply:
    """A request on the local engine: its deltas handed from the engine thread to the event loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, **submit):
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()
        self.finished = False
        self.handle = engine.submit(on_delta=lambda d: loop.call_soon_threadsafe(self.queue.put_nowait, d), **submit)

    async def next(self) -> Delta:
        delta = await self.queue.get()
        self.finished = delta.finished
        return delta

    def cancel(self) -> None:
        if not self.finished:
            self.handle.cancel()


class EngineBackend:
    """The model loaded in this process's Engine (the GUI's, or ``lmstation serve``'s)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def health(self) -> dict:
        stats = self.engine.stats()
        return {"model": Path(stats["model"]).name if "model" in stats else None, "state": stats.get("state")}

    def model_names(self) -> list[str]:
        stats = self.engine.stats()
        return [Path(stats["model"]).name] if "model" in stats else []

    async def model(self, requested: str) -> ServedModel:
        stats = self.engine.stats()
        if "model" not in stats or stats.get("state") in ("empty", "loading"):
            raise errors.APIError(503, "no model is loaded (load one in LM Station first)", code="model_not_loaded")
        name = Path(stats["model"]).name
        if requested != name:
            raise errors.APIError(404, f"the model '{requested}' does not exist here; the loaded model is '{name}'",
                                  param="model", code="model_not_found")
        return ServedModel(name, stats["max_model_len"])

    def submit(self, model: ServedModel, gen: GenerationConfig, *, prompt: str | None = None,
               messages: list[Message] | None = None) -> EngineReply:
        return EngineReply(self.engine, asyncio.get_running_loop(), gen=gen, prompt=prompt, messages=messages)
