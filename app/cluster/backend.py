"""The HTTP app's backend in the cluster: each model's Ray Serve deployment, reached through its
handle, with replies streamed back from whichever replica served them.

A replica that dies mid-request ends its requests here with a ``ReplicaDiedError`` delta, which the
app turns into OpenAI's error shape (503 before the first token, an error event after it); the
client may retry, and the retry goes to a live replica.
"""

from __future__ import annotations

from ray.exceptions import RayActorError, RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from app.cluster.request import ReplicaRequest, conversation_key
from app.engine.config import GenerationConfig
from app.engine.outputs import Delta
from app.engine.tokenizer import Message
from app.server import errors
from app.server.backend import ServedModel


class ReplicaReply:
    """One request's deltas from a replica; Ray's failures become the request's last delta."""

    def __init__(self, responses: DeploymentResponseGenerator):
        self.responses = responses
        self.finished = False

    async def next(self) -> Delta:
        try:
            delta = await self.responses.__anext__()
        except StopAsyncIteration:
            delta = _failed("the replica ended the reply before its last token", "ReplicaError")
        except RayActorError as exc:  # its process died, or cannot be reached
            delta = _failed(f"the replica serving this request stopped ({type(exc).__name__}); retry the request",
                            "ReplicaDiedError")
        except RayError as exc:
            delta = _failed(f"the replica failed: {exc}", "ReplicaError")
        self.finished = delta.finished
        return delta

    def cancel(self) -> None:
        if not self.finished:
            self.responses.cancel()


class ClusterBackend:
    def __init__(self, handles: dict[str, DeploymentHandle]):
        self.handles = handles
        self.streams = {name: handle.options(stream=True) for name, handle in handles.items()}
        self.served: dict[str, ServedModel] = {}  # asked of a replica once per model

    def health(self) -> dict:
        return {"models": self.model_names()}

    def model_names(self) -> list[str]:
        return list(self.handles)

    async def model(self, requested: str) -> ServedModel:
        if requested not in self.handles:
            raise errors.APIError(404, f"the model '{requested}' does not exist here; served models: "
                                       f"{', '.join(self.handles)}", param="model", code="model_not_found")
        if requested not in self.served:
            try:
                self.served[requested] = await self.handles[requested].describe.remote()
            except RayError as exc:
                raise errors.APIError(503, f"no replica of '{requested}' is ready: {exc}",
                                      code="model_not_loaded") from exc
        return self.served[requested]

    def submit(self, model: ServedModel, gen: GenerationConfig, *, prompt: str | None = None,
               messages: list[Message] | None = None) -> ReplicaReply:
        request = ReplicaRequest(gen, prompt, messages, conversation_key(prompt, messages))
        return ReplicaReply(self.streams[model.name].generate.remote(request))


def _failed(message: str, error_type: str) -> Delta:
    return Delta(request_id=0, finished=True, finish_reason="error", error=message, error_type=error_type)
