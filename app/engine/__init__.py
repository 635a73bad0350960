"""The inference engine (no Qt here). Public surface: EngineConfig, GenerationConfig, Engine, pipeline."""

from app.engine.config import EngineConfig, GenerationConfig
from app.engine.engine import Completion, Engine, RequestHandle
from app.engine.errors import EngineError
from app.engine.outputs import Delta, RequestStats
from app.engine.pipeline import pipeline

__all__ = [
    "EngineConfig", "GenerationConfig", "Engine", "RequestHandle", "Completion", "Delta", "RequestStats",
    "EngineError", "pipeline",
]
