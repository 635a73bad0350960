"""The Models page: the local library (what each model is, its size and the memory it needs),
load and unload, import of a folder or a GGUF file, delete with confirmation, and one-click 4-bit
quantization of an fp16/bf16/fp32 model (its progress shows here; the run itself belongs to the
Quantize page)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractItemView, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QMessageBox, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from app.library import LibraryError, LocalModel, link_folder, list_models, remove_model
from app.ui.quantize_bridge import QuantizeBridge
from app.ui.quantize_plan import can_quantize
from app.ui.quantize_status import QuantizeStatus

COLUMNS = ("Name", "Architecture", "Parameters", "Weights", "On disk", "Memory needed", "")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.0f} M"


class ModelsPage(QWidget):
    load_requested = Signal(str)  # a model folder
    unload_requested = Signal()
    gguf_import_requested = Signal(str)  # a .gguf file; the bridge converts it away from the GUI thread
    quantize_requested = Signal(str)  # a model folder, to quantize with the default settings

    def __init__(self, quantizer: QuantizeBridge | None = None):
        """Without a ``quantizer`` the page offers no quantization (a library on its own)."""
        super().__init__()
        self.quantizer = quantizer
        self.models: list[LocalModel] = []
        self.loaded_path: str | None = None
        self.split = 1  # GPUs a model loads split over (Settings); the memory column is per GPU then
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.load_button = QPushButton("Load")
        self.unload_button = QPushButton("Unload")
        self.import_folder_button = QPushButton("Import folder…")
        self.import_gguf_button = QPushButton("Import GGUF…")
        self.delete_button = QPushButton("Delete…")
        self.quantize_button = QPushButton("Quantize to 4-bit")
        self.quantize_button.setToolTip("Writes a 4-bit AWQ copy into the library with the default settings, loads it "
                                        "and shows a before/after report. Other settings: the Quantize page.")
        self.message = QLabel("", wordWrap=True, objectName="muted")
        buttons = QHBoxLayout()
        for button in (self.load_button, self.unload_button, self.quantize_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        for button in (self.import_folder_button, self.import_gguf_button, self.delete_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2>Models</h2>"))
        layout.addWidget(QLabel("Models on this computer. Memory needed counts the weights and a 4,096-token "
                                "conversation.", objectName="muted", wordWrap=True))
        layout.addWidget(self.table, 1)
        self.quantize_status = None
        if quantizer is not None:
            self.quantize_status = QuantizeStatus(quantizer)
            self.quantize_status.hide()
            layout.addWidget(self.quantize_status)
            queued = Qt.ConnectionType.QueuedConnection
            quantizer.started.connect(self._on_quantize_started, queued)
            quantizer.finished.connect(self._on_quantized, queued)
            quantizer.failed.connect(self._on_quantize_failed, queued)
            quantizer.cancelled.connect(self._on_quantize_cancelled, queued)
        layout.addWidget(self.message)
        layout.addLayout(buttons)

        self.load_button.clicked.connect(self._load)
        self.unload_button.clicked.connect(self.unload_requested)
        self.import_folder_button.clicked.connect(self._pick_folder)
        self.import_gguf_button.clicked.connect(self._pick_gguf)
        self.delete_button.clicked.connect(self._delete)
        self.quantize_button.clicked.connect(self._quantize)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemDoubleClicked.connect(self._load)
        self.refresh()

    def set_split(self, split: int) -> None:
        self.split = split
        self.refresh()

    def _memory(self, model: LocalModel) -> str:
        if self.split == 1:
            return _gib(model.memory_bytes)
        return f"{_gib(model.memory_per_gpu(self.split))} × {self.split} GPUs"

    def refresh(self) -> None:
        selected = self.selected()
        self.models, problems = list_models()
        self.table.setRowCount(len(self.models))
        for row, model in enumerate(self.models):
            loaded = str(model.path) == self.loaded_path
            architecture = f"{model.architecture} · reads pictures" if model.vision else model.architecture
            cells = (model.name, architecture, _count(model.parameters), model.weight_type,
                     _gib(model.size_bytes), self._memory(model), "● Loaded" if loaded else "")
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if loaded:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                item.setToolTip(str(model.path) + ("  (imported in place)" if model.linked else ""))
                self.table.setItem(row, column, item)
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        rows = [i for i, m in enumerate(self.models) if selected and m.path == selected.path]
        if self.models:
            self.table.selectRow(rows[0] if rows else 0)
        self.message.setText("\n".join(f"Not listed: {p}" for p in problems))
        self._update_buttons()

    def selected(self) -> LocalModel | None:
        rows = self.table.selectionModel().selectedRows()
        return self.models[rows[0].row()] if rows and rows[0].row() < len(self.models) else None

    def set_loaded(self, path: str | None) -> None:
        self.loaded_path = str(Path(path).resolve()) if path else None
        self.refresh()

    def _update_buttons(self) -> None:
        model = self.selected()
        self.load_button.setEnabled(model is not None and str(model.path) != self.loaded_path)
        self.delete_button.setEnabled(model is not None)
        self.unload_button.setEnabled(self.loaded_path is not None)
        self.quantize_button.setVisible(self.quantizer is not None and model is not None and can_quantize(model))
        self.quantize_button.setEnabled(self.quantizer is not None and not self.quantizer.running)

    def _load(self) -> None:
        model = self.selected()
        if model is not None:
            self.load_requested.emit(str(model.path))

    def import_folder(self, folder: Path) -> None:
        try:
            model = link_folder(folder)
        except LibraryError as exc:
            self.message.setText(f"Could not import {folder}: {exc}")
            return
        self.refresh()
        self.message.setText(f"Imported {model.name}.")

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a model folder (Hugging Face format)")
        if folder:
            self.import_folder(Path(folder))

    def _pick_gguf(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, "Import a GGUF file", "", "GGUF models (*.gguf)")
        if file:
            self.message.setText(f"Converting {Path(file).name}…")
            self.gguf_import_requested.emit(file)

    def on_gguf_imported(self, folder: str, error: str) -> None:
        self.refresh()
        self.message.setText(f"Could not import the GGUF file: {error}" if error else f"Imported {Path(folder).name}.")

    def _delete(self) -> None:
        model = self.selected()
        if model is None:
            return
        if str(model.path) == self.loaded_path:
            self.message.setText(f"{model.name} is loaded; unload it before deleting it.")
            return
        what = ("Forget it? Its files stay where they are." if model.linked
                else f"This deletes {_gib(model.size_bytes)} from disk and cannot be undone.")
        if QMessageBox.question(self, "Delete model", f"Delete {model.name}? {what}") != QMessageBox.StandardButton.Yes:
            return
        try:
            remove_model(model)
        except OSError as exc:
            self.message.setText(f"Could not delete {model.name}: {exc}")
            return
        self.refresh()
        self.message.setText(f"Deleted {model.name}.")

    def _quantize(self) -> None:
        model = self.selected()
        if model is not None:
            self.quantize_requested.emit(str(model.path))
            self._update_buttons()  # the run has started by now: no second one from a quick double click

    @Slot(dict)
    def _on_quantize_started(self, job: dict) -> None:
        self.quantize_status.show()
        self.message.setText("")
        self._update_buttons()

    def _quantize_ended(self, text: str) -> None:
        self.quantize_status.hide()
        self.refresh()
        self.message.setText(text)

    @Slot(dict)
    def _on_quantized(self, report: dict) -> None:
        out = Path(report["out"])
        self._quantize_ended(f"Wrote {out.name}, a 4-bit copy of {Path(report['source']).name}. "
                             "Its report is on the Quantize page.")

    @Slot(str)
    def _on_quantize_failed(self, message: str) -> None:
        self._quantize_ended(f"Could not quantize: {message}")

    @Slot()
    def _on_quantize_cancelled(self) -> None:
        self._quantize_ended("Quantization cancelled; nothing was written.")
