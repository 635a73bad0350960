"""The main window: a sidebar of pages, the pages, and a status bar (device, model, engine state).

Pages that arrive with later versions say what they will do and that they are not here yet.
The engine loads in the background: the window shows at once and stays responsive.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QMainWindow, QStackedWidget, QVBoxLayout, QWidget

from app.chats.store import ChatStore
from app.ui.chat_page import ChatPage
from app.ui.engine_bridge import EngineBridge

COMING = {
    "Models": "Your local models with their size and memory needs, downloads from Hugging Face and "
              "ModelScope, and import of folders and GGUF files.",
    "Quantize": "One-click 4-bit AWQ quantization of a model, with a before/after quality report.",
    "Server": "An OpenAI-compatible server on this machine, sharing the loaded model with the chat.",
    "Settings": "Models folder, device, KV-cache memory and context length, and the theme.",
}


def _coming_page(name: str, text: str) -> QWidget:
    page = QWidget()
    layout = QVBoxLayout(page)
    title = QLabel(f"<h2>{name}</h2>")
    body = QLabel(f"{text}<br><br><i>Coming in a later version of LM Station.</i>")
    body.setWordWrap(True)
    layout.addWidget(title)
    layout.addWidget(body)
    layout.addStretch(1)
    return page


class MainWindow(QMainWindow):
    def __init__(self, store: ChatStore, bridge: EngineBridge, model: Path | None = None,
                 engine_options: dict | None = None):
        super().__init__()
        self.setWindowTitle("LM Station")
        self.resize(1280, 800)
        self.bridge = bridge
        self.chat = ChatPage(store, bridge)
        self.sidebar = QListWidget()
        self.sidebar.setFixedWidth(150)
        self.pages = QStackedWidget()
        for name, page in [("Chat", self.chat)] + [(n, _coming_page(n, t)) for n, t in COMING.items()]:
            self.sidebar.addItem(name)
            self.pages.addWidget(page)
        self.sidebar.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.sidebar.setCurrentRow(0)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.device_label, self.model_label, self.state_label = QLabel(), QLabel("No model"), QLabel("Starting")
        for label in (self.state_label, self.model_label, self.device_label):
            self.statusBar().addPermanentWidget(label)
        # Queued to this window's (the GUI) thread: the bridge emits from its own and the engine's threads.
        queued = Qt.ConnectionType.QueuedConnection
        bridge.state_changed.connect(self._on_state, queued)
        bridge.loaded.connect(self._on_loaded, queued)
        bridge.load_failed.connect(self._on_load_failed, queued)
        bridge.request_load.emit({**(engine_options or {}), "model": str(model) if model else None})

    @Slot(str)
    def _on_state(self, state: str) -> None:
        self.state_label.setText({"loading": "Loading model…", "ready": "Ready", "empty": "No model"}.get(state, state))
        self.chat.set_engine_ready(state == "ready")

    @Slot(str)
    def _on_load_failed(self, message: str) -> None:
        self.statusBar().showMessage(f"Could not load the model: {message}")

    @Slot(dict)
    def _on_loaded(self, stats: dict) -> None:
        self.model_label.setText(Path(stats.get("model", "")).name)
        self.chat.set_context_limit(stats.get("max_model_len", 0))
        self.device_label.setText(f"{stats.get('device', '')} · {stats.get('dtype', '')} · "
                                  f"{stats.get('cache_tokens', 0):,} cache tokens")
