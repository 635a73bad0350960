"""Discover: the curated catalog with a fit indicator for this machine, and hub search.

Searching talks to the network, so it runs on a worker thread and answers through a signal.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton, QStackedWidget,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from app.downloader import CatalogEntry, DownloadError, DownloadRequest, Fit, SearchResult, fit, human_bytes, make_backend

SOURCE_NAMES = {"hf": "Hugging Face", "modelscope": "ModelScope"}
FIT_TEXT = {Fit.GPU: "● Fits your GPU", Fit.CPU: "● Runs on the CPU (slower)", Fit.TOO_BIG: "● Too big for this computer"}
FIT_COLOUR = {Fit.GPU: "#16a34a", Fit.CPU: "#d97706", Fit.TOO_BIG: "#dc2626"}
CATALOG_COLUMNS = ("Model", "Size", "Memory needed", "On this computer", "Good for")
SEARCH_COLUMNS = ("Repository", "Task", "Library", "Downloads", "Likes")


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.setWordWrap(False)
    return table


def _fill(table: QTableWidget, rows: list[tuple[str, ...]], stretch: int) -> None:
    table.setRowCount(len(rows))
    for r, cells in enumerate(rows):
        for c, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            table.setItem(r, c, item)
    table.resizeColumnsToContents()
    table.horizontalHeader().setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    if rows:
        table.selectRow(0)


class DiscoverPage(QWidget):
    download_requested = Signal(object)  # DownloadRequest
    _searched = Signal(object, str)  # results, error (from the search thread)

    def __init__(self, catalog: list[CatalogEntry], endpoints):
        """``endpoints(source)`` gives the mirror URL set in Settings, or None for the hub itself."""
        super().__init__()
        self.catalog, self.endpoints = catalog, endpoints
        self.results: list[SearchResult] = []
        self.gpu_bytes: int | None = None
        self.ram_bytes = 0
        self.query = QLineEdit(placeholderText="Search the hub by name, e.g. Qwen2.5 Instruct")
        self.source = QComboBox()
        for source, name in SOURCE_NAMES.items():
            self.source.addItem(name, source)
        self.search_button = QPushButton("Search")
        self.back_button = QPushButton("Recommended")
        self.catalog_table = _table(CATALOG_COLUMNS)
        self.results_table = _table(SEARCH_COLUMNS)
        self.tables = QStackedWidget()
        self.tables.addWidget(self.catalog_table)
        self.tables.addWidget(self.results_table)
        self.message = QLabel("", objectName="muted", wordWrap=True)
        self.download_button = QPushButton("Download")
        search_row = QHBoxLayout()
        search_row.addWidget(self.query, 1)
        search_row.addWidget(self.source)
        search_row.addWidget(self.search_button)
        search_row.addWidget(self.back_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.message, 1)
        bottom.addWidget(self.download_button)
        layout = QVBoxLayout(self)
        layout.addLayout(search_row)
        layout.addWidget(self.tables, 1)
        layout.addLayout(bottom)

        self.query.returnPressed.connect(self.search)
        self.search_button.clicked.connect(self.search)
        self.back_button.clicked.connect(lambda: self._show(self.catalog_table))
        self.download_button.clicked.connect(self.download_selected)
        self.catalog_table.itemDoubleClicked.connect(self.download_selected)
        self.results_table.itemDoubleClicked.connect(self.download_selected)
        self._searched.connect(self._on_searched, Qt.ConnectionType.QueuedConnection)
        self._show(self.catalog_table)
        self.show_catalog()

    def set_devices(self, devices: list[dict]) -> None:
        """The fit column judges against the largest GPU and the RAM."""
        gpus = [d["memory_bytes"] for d in devices if d["id"] != "cpu"]
        self.gpu_bytes = max(gpus) if gpus else None
        self.ram_bytes = next((d["memory_bytes"] for d in devices if d["id"] == "cpu"), 0)
        self.show_catalog()

    def show_catalog(self) -> None:
        rows, fits = [], [fit(e, self.gpu_bytes, self.ram_bytes) if self.ram_bytes else None for e in self.catalog]
        for e, where in zip(self.catalog, fits):
            quant = " · AWQ 4-bit" if e.quantization == "awq" else ""
            rows.append((f"{e.name} ({e.params_b:g}B{quant})", human_bytes(e.size_bytes), human_bytes(e.memory_bytes),
                         FIT_TEXT[where] if where else "", e.good_for))
        _fill(self.catalog_table, rows, stretch=4)
        for row, where in enumerate(fits):
            if where is not None:
                self.catalog_table.item(row, 3).setForeground(QColor(FIT_COLOUR[where]))

    def _show(self, table: QTableWidget) -> None:
        self.tables.setCurrentWidget(table)
        self.back_button.setVisible(table is self.results_table)

    def search(self) -> None:
        query, source = self.query.text().strip(), self.source.currentData()
        if not query:
            self._show(self.catalog_table)
            return
        self.message.setText(f"Searching {SOURCE_NAMES[source]} for “{query}”…")
        self.search_button.setEnabled(False)
        endpoint = self.endpoints(source)

        def run() -> None:  # a daemon thread: a hub that never answers cannot hold the app open
            try:
                self._searched.emit(make_backend(source, endpoint).search(query), "")
            except DownloadError as exc:
                self._searched.emit([], str(exc))

        threading.Thread(target=run, name="lmstation-hub-search", daemon=True).start()

    @Slot(object, str)
    def _on_searched(self, results: list[SearchResult], error: str) -> None:
        self.search_button.setEnabled(True)
        self.results = results
        _fill(self.results_table, [(r.repo, r.task or "", r.library or "", f"{r.downloads or 0:,}", f"{r.likes or 0:,}")
                                   for r in results], stretch=0)
        self._show(self.results_table)
        self.message.setText(error or (f"{len(results)} model{'s' if len(results) != 1 else ''} found." if results
                                           else "No models found."))

    def selected_request(self) -> DownloadRequest | None:
        source = self.source.currentData()
        if self.tables.currentWidget() is self.results_table:
            rows = self.results_table.selectionModel().selectedRows()
            return DownloadRequest(self.results[rows[0].row()].repo, source, endpoint=self.endpoints(source)) if rows else None
        rows = self.catalog_table.selectionModel().selectedRows()
        if not rows:
            return None
        entry = self.catalog[rows[0].row()]
        if source not in entry.repos:  # this model is not on the chosen hub: take it from the one that has it
            source = next(iter(entry.repos))
        return DownloadRequest(entry.repos[source], source, endpoint=self.endpoints(source))

    def download_selected(self) -> None:
        request = self.selected_request()
        if request is not None:
            self.download_requested.emit(request)
            self.message.setText(f"Downloading {request.repo}: see Downloads.")
