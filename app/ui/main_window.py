"""The main window: a sidebar of pages, the pages, and a status bar (engine state, model, device
and its memory). It owns the engine's and the quantizer's bridges and the remote endpoints' models,
and routes between pages.

The engine loads in the background: the window shows at once and stays responsive.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtWidgets import (
    QApplication, QHBoxLayout, QLabel, QListWidget, QMainWindow, QStackedWidget, QTabWidget, QWidget,
)

from app.chats.store import ChatStore
from app.downloader import CatalogEntry, DownloadRequest, JobState, TokenStore, load_catalog
from app.remote import EndpointStore
from app.ui.chat_page import ChatModel, ChatPage
from app.ui.collector import GuiCollector
from app.ui.connections_page import ConnectionsPage
from app.ui.discover_page import DiscoverPage
from app.ui.downloads_panel import Downloads, DownloadsPanel
from app.ui.engine_bridge import EngineBridge
from app.ui.models_page import ModelsPage
from app.ui.quantize_bridge import QuantizeBridge
from app.ui.quantize_page import QuantizePage
from app.ui.remote_models import RemoteModels
from app.ui.server_page import ServerPage
from app.ui.settings import AppSettings
from app.ui.settings_page import SettingsPage
from app.ui.theme import apply_theme

MEMORY_POLL_MS = 2000


class MainWindow(QMainWindow):
    def __init__(self, store: ChatStore, bridge: EngineBridge, model: Path | None = None,
                 engine_options: dict | None = None, settings: AppSettings | None = None,
                 downloads: Downloads | None = None, catalog: list[CatalogEntry] | None = None,
                 tokens: TokenStore | None = None):
        super().__init__()
        self.setWindowTitle("LM Station")
        self.resize(1280, 800)
        self.collector = GuiCollector(self)
        self.bridge = bridge
        self.settings = settings or AppSettings()
        self.settings.apply_paths()
        self.engine_options = engine_options or {}  # overrides the settings (tests, command line)
        self.device = "cpu"
        self.engine_state, self.engine_stats = "loading", {}  # the local engine's, for the chat's model list
        tokens = tokens or TokenStore()
        self.remote = RemoteModels(EndpointStore(self.settings.file.with_name("endpoints.json"), tokens), self)
        self.chat = ChatPage(store)
        self.quantizer = QuantizeBridge(self)
        self.models = ModelsPage(self.quantizer)
        self.quantize_page = QuantizePage(self.quantizer, self.current_engine_options)
        self.downloads = downloads or Downloads()
        self.discover = DiscoverPage(load_catalog() if catalog is None else catalog, self.settings.endpoint)
        self.downloads_panel = DownloadsPanel(self.downloads)
        self.models_tabs = QTabWidget()
        self.models_tabs.addTab(self.models, "On this computer")
        self.models_tabs.addTab(self.discover, "Discover")
        self.models_tabs.addTab(self.downloads_panel, "Downloads")
        self.settings_page = SettingsPage(self.settings, tokens)
        self.connections_page = ConnectionsPage(self.remote)
        self.settings_tabs = QTabWidget()
        self.settings_tabs.addTab(self.settings_page, "General")
        self.settings_tabs.addTab(self.connections_page, "Connections")
        self.sidebar = QListWidget(objectName="sidebar")
        self.sidebar.setFixedWidth(160)
        self.pages = QStackedWidget()
        self.server_page = ServerPage()
        pages = [("Chat", self.chat), ("Models", self.models_tabs), ("Quantize", self.quantize_page),
                 ("Server", self.server_page), ("Settings", self.settings_tabs)]
        for name, page in pages:
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
        self.collector.watch(bridge)
        bridge.state_changed.connect(self._on_state, queued)
        bridge.loaded.connect(self._on_loaded, queued)
        bridge.load_progress.connect(self._on_load_progress, queued)
        bridge.load_failed.connect(self._on_load_failed, queued)
        bridge.memory.connect(self._on_memory, queued)
        bridge.devices.connect(self.settings_page.set_devices, queued)
        bridge.devices.connect(self.discover.set_devices, queued)
        bridge.devices.connect(self.quantize_page.set_devices, queued)
        bridge.gguf_imported.connect(self.models.on_gguf_imported, queued)
        bridge.server_state.connect(self.server_page.on_state, queued)
        bridge.server_request.connect(self.server_page.on_request, queued)
        self.server_page.start_requested.connect(bridge.request_server_start)
        self.server_page.stop_requested.connect(bridge.request_server_stop)
        self.models.load_requested.connect(self.load)
        self.models.unload_requested.connect(bridge.request_unload)
        self.models.gguf_import_requested.connect(bridge.request_import_gguf)
        self.models.quantize_requested.connect(self._quantize)
        self.quantizer.finished.connect(self._on_quantized, queued)
        self.quantize_page.load_and_chat.connect(self._load_and_chat)
        self.discover.download_requested.connect(self._download)
        self.downloads_panel.load_requested.connect(self.load)
        self.downloads_panel.finished.connect(self._on_download_finished)
        self.settings_page.theme_changed.connect(lambda theme: apply_theme(QApplication.instance(), theme))
        self.settings_page.models_dir_changed.connect(self.models.refresh)
        self.settings_page.split_changed.connect(self.models.set_split)
        self.models.set_split(self.settings.split)
        self.settings_page.reload_requested.connect(lambda: self.load(self.models.loaded_path))
        self.remote.changed.connect(self._offer_models)
        self._offer_models()
        self.remote.refresh()
        self._memory_timer = QTimer(self, interval=MEMORY_POLL_MS,
                                    timeout=lambda: bridge.request_memory.emit(self.device))
        self._memory_timer.start()
        # The engine's thread imports torch for these: once the window is up, so the two don't share
        # the interpreter while it is built and shown.
        QTimer.singleShot(0, self, bridge.request_devices.emit)  # (not sent if the window is gone by then)
        QTimer.singleShot(0, self, lambda: self.load(str(model) if model else None))

    def current_engine_options(self) -> dict:
        return {**self.settings.engine_options(), **self.engine_options}

    def load(self, model: str | None) -> None:
        """Loads a model folder (None: the starter model) with the current settings."""
        self.bridge.request_load.emit({**self.current_engine_options(), "model": model})

    def show_page(self, page: QWidget) -> None:
        self.sidebar.setCurrentRow(self.pages.indexOf(page))

    def _offer_models(self) -> None:
        """The chat's model list: the local engine's model first, then every remote one."""
        name = Path(self.engine_stats.get("model", "")).name
        label = {"loading": "Loading a model…", "empty": "No model loaded"}.get(self.engine_state, name)
        local = ChatModel(key="local", label=label, name=name, bridge=self.bridge, ready=self.engine_state == "ready",
                          vision=bool(self.engine_stats.get("vision")),
                          context_tokens=self.engine_stats.get("max_model_len", 0))
        self.chat.set_models([local, *self.remote.chat_models()])

    def _quantize(self, folder: str) -> None:
        problem = self.quantize_page.quick(folder)
        if problem:
            self.models.message.setText(problem)

    @Slot(dict)
    def _on_quantized(self, report: dict) -> None:
        """A one-click run ends with its model loaded and its report open (unless the user went elsewhere)."""
        if not report["quick"]:
            return
        self.load(report["out"])
        if self.pages.currentWidget() is self.models_tabs:
            self.show_page(self.quantize_page)
        else:
            self.statusBar().showMessage(f"{Path(report['out']).name} is ready; its report is on the Quantize page.")

    def _load_and_chat(self, folder: str) -> None:
        if self.models.loaded_path != str(Path(folder).resolve()):
            self.load(folder)
        self.show_page(self.chat)

    def _download(self, request: DownloadRequest) -> None:
        try:
            self.downloads.start(request)
        except ValueError as exc:
            self.statusBar().showMessage(f"Could not start the download: {exc}")
            return
        self.models_tabs.setCurrentWidget(self.downloads_panel)

    def _on_download_finished(self, snapshot) -> None:
        if snapshot.state is JobState.DONE:
            self.models.refresh()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's naming)
        self.downloads.close()  # a running download pauses; its partial files wait for next time
        self.quantizer.shutdown()  # a running quantization is cancelled and leaves nothing behind
        self.remote.close()  # remote replies in flight are cancelled (their servers stop them too)
        self.collector.stop()
        super().closeEvent(event)

    @Slot(str)
    def _on_state(self, state: str) -> None:
        self.state_label.setText({"loading": "Loading model…", "ready": "Ready", "empty": "No model"}.get(state, state))
        self.engine_state = state
        if state == "empty":
            self.engine_stats = {}
            self.model_label.setText("No model")
            self.models.set_loaded(None)
        self._offer_models()

    @Slot(float, str)
    def _on_load_progress(self, fraction: float, stage: str) -> None:
        if self.state_label.text().startswith(("Loading", "Preparing", "Warming")):
            self.state_label.setText({"converting": "Preparing the starter model…", "warming up": "Warming up…"}.get(
                stage, f"Loading model… {fraction:.0%}"))

    @Slot(str)
    def _on_load_failed(self, message: str) -> None:
        self.statusBar().showMessage(f"Could not load the model: {message}")

    @Slot(dict)
    def _on_loaded(self, stats: dict) -> None:
        self.model_label.setText(Path(stats.get("model", "")).name)
        self.models.set_loaded(stats.get("model"))  # refreshes: a starter model converted just now appears
        self.engine_stats = stats
        self._offer_models()
        self.server_page.set_model(Path(stats.get("model", "")).name)
        self.device = stats.get("device", "cpu")
        self.bridge.request_memory.emit(self.device)

    @Slot(dict)
    def _on_memory(self, memory: dict) -> None:
        name = "RAM" if memory["device"] == "cpu" else f"GPU {memory['device'].partition(':')[2] or '0'}"
        self.device_label.setText(f"{name}: {memory['used_bytes'] / 2**30:.1f} of "
                                  f"{memory['total_bytes'] / 2**30:.1f} GB used")
