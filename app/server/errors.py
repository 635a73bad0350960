"""Every error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the HTTP
status a client fault deserves (4xx), never a 500 for one."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# The engine's error classes (Delta.error_type) -> (status, OpenAI type, code)
ENGINE_ERRORS = {
    "ContextOverflowError": (400, "invalid_request_error", "context_length_exceeded"),
    "RequestError": (400, "invalid_request_error", None),
    "NoModelLoadedError": (503, "server_error", "model_not_loaded"),
    "TensorParallelError": (500, "server_error", None),
    "ReplicaDiedError": (503, "server_error", "replica_died"),  # app/cluster: a replica's process died mid-request
}


def engine_error(error_type: str | None) -> tuple[int, str, str | None]:
    """(status, OpenAI type, code) for an engine error class's name: any kind of RequestError
    (a bad picture, say) is the client's fault."""
    from app.engine.errors import RequestError

    if error_type in ENGINE_ERRORS:
        return ENGINE_ERRORS[error_type]
    kinds, requests = [RequestError], set()
    while kinds:
        kind = kinds.pop()
        requests.add(kind.__name__)
        kinds.extend(kind.__subclasses__())
    return (400, "invalid_request_error", None) if error_type in requests else (500, "server_error", None)


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.type = type or _TYPES.get(status, "server_error")
        self.param, self.code = param, code

    @classmethod
    def from_engine(cls, error: str, error_type: str | None) -> "APIError":
        status, kind, code = engine_error(error_type)
        return cls(status, error, type=kind, code=code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def install(app: FastAPI) -> None:
    """Routes FastAPI's own errors (validation, unknown paths and methods) through the same shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(where) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif param:
            message = f"{param}: {message}"
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = "request_too_large" if exc.status_code == 413 else None
        return APIError(exc.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()
