"""``pipeline(model)(prompts)``: the engine for scripts, batched, without threads to manage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine import Completion, Engine
from app.engine.tokenizer import Message


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


class Pipeline:
    def __init__(self, model_dir: Path, **engine_options: Any):
        self.engine = Engine()
        self.engine.load(EngineConfig(model=model_dir, **engine_options)).result()

    def __call__(
        self, inputs: str | list[Message] | list[str | list[Message]], gen: GenerationConfig | None = None, **gen_options: Any
    ) -> Completion | list[Completion]:
        """A prompt or a message list gives one Completion; a list of them gives a list, run as one batch."""
        gen = gen or GenerationConfig(**gen_options)
        single = isinstance(inputs, str) or _is_messages(inputs)
        items = [inputs] if single else list(inputs)
        handles = [
            self.engine.submit(messages=item, gen=gen) if _is_messages(item) else self.engine.submit(item, gen=gen)
            for item in items
        ]
        results = [h.result() for h in handles]
        return results[0] if single else results

    def close(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pipeline(model: str | Path | None = None, **engine_options: Any) -> Pipeline:
    """model: a folder, a library name, or None for the starter model."""
    from app.library import resolve_model

    return Pipeline(resolve_model(model), **engine_options)
