"""The OpenAI-compatible HTTP server over the app's own Engine (FastAPI + uvicorn, in-process).

The chat window and outside clients share one loaded model and are batched together. Start it
from the GUI (ServerThread) or with ``lmstation serve``.
"""

from app.server.app import create_app
from app.server.config import ServerConfig
from app.server.thread import ServerThread

__all__ = ["ServerConfig", "ServerThread", "create_app"]
