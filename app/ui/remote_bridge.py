"""One model on a remote OpenAI-compatible endpoint, as the chat sees the local engine: the same
request signals in and the same answer signals out as EngineBridge, so the chat page does not know
which one it talks to.

Each reply streams on a worker thread of its own: never on the GUI thread (a slow or dead endpoint
cannot stall the window), never on the engine's (the local model keeps serving meanwhile). Stop
answers at once; the worker notices at its next event and closes the connection, which tells the
server to stop too.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject, Signal, Slot

from app.remote import Endpoint, RemoteError, stream_chat


class RemoteBridge(QObject):
    # requests (from the GUI thread)
    request_generate = Signal(int, list, dict)  # reply key, chat messages, GenerationConfig fields
    request_stop = Signal(int)  # reply key

    # answers (from worker threads: connect them queued)
    delta = Signal(int, str, int)  # reply key, new text, new tokens (servers send one per event)
    finished = Signal(int, dict)  # reply key, {"finish_reason", "error", "error_type", "stats"}

    def __init__(self, endpoint: Endpoint, model: str, parent: QObject | None = None):
        """Give it a parent: its reply threads must never be the ones to delete it (Qt objects die
        on the GUI thread)."""
        super().__init__(parent)
        self.endpoint = endpoint  # replaced when the user edits the endpoint; a reply keeps the one it began with
        self.model = model
        self._running: dict[int, threading.Event] = {}  # reply key -> set to cancel it
        self._lock = threading.Lock()
        self.request_generate.connect(self._generate)
        self.request_stop.connect(self._stop)

    @Slot(int, list, dict)
    def _generate(self, reply: int, messages: list, options: dict) -> None:
        cancelled = threading.Event()
        with self._lock:
            self._running[reply] = cancelled
        threading.Thread(target=self._stream, args=(reply, self.endpoint, messages, options, cancelled),
                         name="lmstation-remote-reply", daemon=True).start()

    def _stream(self, reply: int, endpoint: Endpoint, messages: list, options: dict,
                cancelled: threading.Event) -> None:  # runs on the reply's worker thread
        def on_text(text: str) -> None:
            if not cancelled.is_set():
                self.delta.emit(reply, text, 1)

        try:
            result = stream_chat(endpoint, self.model, messages, options, on_text, cancelled)
            info = {"finish_reason": result.finish_reason, "error": None, "error_type": None, "stats": result.stats}
        except RemoteError as exc:
            info = {"finish_reason": "error", "error": str(exc), "error_type": exc.kind, "stats": None}
        except Exception as exc:  # a reply must end whatever happened, or the chat would wait for ever
            info = {"finish_reason": "error", "error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__,
                    "stats": None}
        self._finish(reply, info)

    @Slot(int)
    def _stop(self, reply: int) -> None:
        self._finish(reply, {"finish_reason": "cancelled", "error": None, "error_type": None, "stats": None})

    def _finish(self, reply: int, info: dict) -> None:
        """Whichever comes first, the stream's end or a stop, finishes the reply; the other is ignored."""
        with self._lock:
            cancelled = self._running.pop(reply, None)
        if cancelled is not None:
            cancelled.set()
            self.finished.emit(reply, info)

    def stop_all(self) -> None:
        """Cancels every reply in flight (the window is closing): their threads emit nothing more."""
        with self._lock:
            replies = list(self._running)
        for reply in replies:
            self._stop(reply)
