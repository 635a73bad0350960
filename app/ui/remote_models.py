"""The remote endpoints the user saved and the models they serve: what the chat's model picker
offers besides the local engine, one RemoteBridge per model.

Model lists are fetched on worker threads (a slow or dead endpoint never stalls the window): every
saved endpoint when the window opens, and one whenever it is saved or tested. An endpoint keeps
the models it served last time until a listing succeeds, so a server that is down, or a key that
stopped working, shows up in the chat as a clear message rather than as a model gone missing.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import replace

from PySide6.QtCore import QObject, Qt, Signal, Slot

from app.remote import Endpoint, EndpointStore, RemoteError, list_models
from app.ui.chat_page import ChatModel
from app.ui.remote_bridge import RemoteBridge


class RemoteModels(QObject):
    changed = Signal()  # the endpoints, or the models on offer, changed
    listed = Signal(int, list, str)  # ticket, model ids, error ("" when listed)
    _answered = Signal(int, object, list, str)  # the same from the worker thread, with the endpoint asked

    def __init__(self, store: EndpointStore, parent: QObject | None = None):
        """Give it a parent (the window): the worker threads that hold it must never be the ones
        to delete it, since a Qt object has to die on the GUI thread."""
        super().__init__(parent)
        self.store = store
        self.endpoints: list[Endpoint] = store.load()
        self._bridges: dict[tuple[str, str], RemoteBridge] = {}  # (endpoint id, model) -> its bridge
        self._tickets = itertools.count(1)
        self._closed = False  # the window is closing: workers answer no more
        self._answered.connect(self._on_answered, Qt.ConnectionType.QueuedConnection)

    def refresh(self) -> None:
        for endpoint in self.endpoints:
            self.list_models(endpoint)

    def list_models(self, endpoint: Endpoint) -> int:
        """Asks the endpoint (saved or not: Test) for its models; ``listed`` answers with the returned ticket."""
        ticket = next(self._tickets)

        def ask() -> None:  # on a worker thread
            try:
                models, error = list_models(endpoint), ""
            except RemoteError as exc:
                models, error = [], str(exc)
            if not self._closed:
                self._answered.emit(ticket, endpoint, models, error)

        threading.Thread(target=ask, name="lmstation-remote-models", daemon=True).start()
        return ticket

    @Slot(int, object, list, str)
    def _on_answered(self, ticket: int, asked: Endpoint, models: list, error: str) -> None:
        saved = self.endpoint(asked.id)
        same_server = saved is not None and (saved.url, saved.key) == (asked.url, asked.key)
        if not error and same_server and tuple(models) != saved.models:
            self.store.set_models(saved.id, tuple(models))
            self._keep(replace(saved, models=tuple(models)))
            self.changed.emit()
        self.listed.emit(ticket, models, error)

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.id == endpoint_id), None)

    def save(self, endpoint: Endpoint) -> int:
        """Adds or updates an endpoint (keeping the models it had), then lists its models: returns that ticket."""
        before = self.endpoint(endpoint.id)
        endpoint = replace(endpoint, models=before.models if before else ())
        self.store.put(endpoint)
        self._keep(endpoint)
        for (endpoint_id, _), bridge in self._bridges.items():
            if endpoint_id == endpoint.id:
                bridge.endpoint = endpoint
        self.changed.emit()
        return self.list_models(endpoint)

    def remove(self, endpoint_id: str) -> None:
        self.store.remove(endpoint_id)
        self.endpoints = [e for e in self.endpoints if e.id != endpoint_id]
        self.changed.emit()

    def _keep(self, endpoint: Endpoint) -> None:
        """In the list in memory: in its place, or last when new."""
        at = next((i for i, e in enumerate(self.endpoints) if e.id == endpoint.id), len(self.endpoints))
        self.endpoints[at:at + 1] = [endpoint]

    def chat_models(self) -> list[ChatModel]:
        """Every saved endpoint's models, marked remote. Whether one reads pictures is the server's
        to say: pictures go, and a text-only model answers with its own clear refusal."""
        offered = []
        for endpoint in self.endpoints:
            for model in endpoint.models:
                if (endpoint.id, model) not in self._bridges:
                    self._bridges[endpoint.id, model] = RemoteBridge(endpoint, model, parent=self)
                bridge = self._bridges[endpoint.id, model]
                offered.append(ChatModel(key=f"remote:{endpoint.id}:{model}",
                                         label=f"{model} — {endpoint.name} (remote)",
                                         name=f"{model} — {endpoint.name}", bridge=bridge, vision=True))
        return offered

    def close(self) -> None:
        """Cancels the replies in flight and silences the listings (the window is closing)."""
        self._closed = True
        for bridge in self._bridges.values():
            bridge.stop_all()
