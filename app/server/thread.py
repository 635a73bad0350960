"""The server on a thread of its own (its own event loop), for the GUI and the CLI alike: start()
returns once it listens, or raises why it cannot (the port taken, settings refused)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from app.engine import Engine
from app.server.app import RequestLog, create_app
from app.server.config import ServerConfig, ServerConfigError


class ServerThread:
    def __init__(self, engine: Engine, config: ServerConfig, on_request: RequestLog | None = None):
        self.config = config
        self.app = create_app(engine, config, on_request)  # validates the settings
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = config.port

    def start(self, timeout_s: float = 30.0) -> None:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise ServerConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}")
        self.port = sock.getsockname()[1]  # the one picked, for port 0
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                     timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="lmstation-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise ServerConfigError("the server stopped while starting")
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            raise ServerConfigError("the server did not start in time")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def base_url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/v1"

    def stop(self) -> None:
        """Stops listening; requests in flight are cancelled by their closed connections."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
