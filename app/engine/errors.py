"""Errors the engine reports to its callers, each with a message a user can act on."""


class EngineError(Exception):
    """Base class: anything the engine refuses or fails at, with a clear message."""


class ModelNotFoundError(EngineError):
    """The model path or name does not exist."""


class UnsupportedModelError(EngineError):
    """The checkpoint's architecture or a feature of its config is not implemented."""


class ModelLoadError(EngineError):
    """The checkpoint exists but cannot be read (missing or corrupt weight files...)."""


class RequestError(EngineError):
    """A request cannot be served (prompt too long, bad sampling values...)."""


class ContextOverflowError(RequestError):
    """The prompt does not fit the model's context window."""


class NoModelLoadedError(EngineError):
    """A request arrived while no model is loaded."""


class TensorParallelError(EngineError):
    """A tensor-parallel rank died or failed mid-step: the ranks are out of step, so the model
    cannot run any more; its requests fail and the engine unloads it."""
