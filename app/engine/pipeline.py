"""``pipeline(model)(prompts)``: the engine for scripts, batched, without threads to manage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine import Completion, Engine


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _as_messages(value: Any) -> Any:
    """(text, picture or [pictures]) -> one user message with the pictures first; else as given."""
    if not isinstance(value, tuple):
        return value
    text, pictures = value
    pictures = pictures if isinstance(pictures, list) else [pictures]
    return [{"role": "user", "content": [*({"type": "image", "image": p} for p in pictures),
                                         {"type": "text", "text": text}]}]


class Pipeline:
    def __init__(self, model_dir: Path, **engine_options: Any):
        self.engine = Engine()
        self.engine.load(EngineConfig(model=model_dir, **engine_options)).result()

    def __call__(self, inputs: Any, gen: GenerationConfig | None = None, **gen_options: Any) -> Completion | list[Completion]:
        """A prompt, a message list or a (text, picture or [pictures]) pair gives one Completion;
        a list of them gives a list, run as one batch. Pictures: paths, bytes, data URLs or PIL
        images, for a vision-language model."""
        gen = gen or GenerationConfig(**gen_options)
        single = isinstance(inputs, (str, tuple)) or _is_messages(inputs)
        items = [_as_messages(item) for item in ([inputs] if single else list(inputs))]
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
