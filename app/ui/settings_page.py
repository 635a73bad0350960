"""Settings: where models live, which device runs them (or which GPUs a model is split over),
KV-cache memory, context length, theme.

Each change is stored at once. The theme and the models folder apply at once; the engine
settings apply when a model loads next, and "Reload model" does that now.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout,
    QWidget,
)

from app import paths
from app.downloader import TokenStore
from app.ui.settings import THEMES, AppSettings

HUBS = {"hf": "Hugging Face", "modelscope": "ModelScope"}


class SettingsPage(QWidget):
    theme_changed = Signal(str)
    models_dir_changed = Signal()
    reload_requested = Signal()
    split_changed = Signal(int)  # GPUs models now load split over (1: none)

    def __init__(self, settings: AppSettings, tokens: TokenStore | None = None):
        super().__init__()
        self.settings = settings
        self.tokens = tokens or TokenStore()
        self.models_dir = QLineEdit(str(paths.models_dir()), readOnly=True)
        browse = QPushButton("Change…")
        default = QPushButton("Default")
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.models_dir, 1)
        folder_row.addWidget(browse)
        folder_row.addWidget(default)

        self.device = QComboBox()
        self.device.addItem("Automatic (the first GPU, else the CPU)", "auto")
        # Tensor parallelism: one box per GPU, filled by set_devices; shown with 2 or more GPUs.
        self.gpu_boxes: dict[int, QCheckBox] = {}
        self.gpu_row = QWidget()
        self.gpu_box_row = QHBoxLayout()
        self.gpu_box_row.setContentsMargins(0, 0, 0, 0)
        self.split_note = QLabel(objectName="muted", wordWrap=True)
        gpu_column = QVBoxLayout(self.gpu_row)
        gpu_column.setContentsMargins(0, 0, 0, 0)
        gpu_column.addLayout(self.gpu_box_row)
        gpu_column.addWidget(self.split_note)
        self.cache_percent = QSpinBox(minimum=0, maximum=95, singleStep=5, suffix=" % of free memory",
                                      specialValueText="Automatic (85% of a GPU's free memory, 10% of RAM)")
        self.cache_percent.setValue(settings.cache_percent)
        self.kv_cache_dtype = QComboBox()
        for label, value in (("As the model computes (16-bit)", "auto"), ("8-bit: twice the context", "int8"),
                             ("4-bit: nearly four times the context", "int4")):
            self.kv_cache_dtype.addItem(label, value)
        self.kv_cache_dtype.setCurrentIndex(max(0, self.kv_cache_dtype.findData(settings.kv_cache_dtype)))
        self.kv_cache_dtype.setToolTip("Keys and values quantized per token and head as they are stored: more "
                                       "conversation fits in the same memory, answers change very slightly.")
        self.max_context = QSpinBox(minimum=0, maximum=1_048_576, singleStep=1024, suffix=" tokens",
                                    specialValueText="The model's own")
        self.max_context.setValue(settings.max_context)
        self.theme = QComboBox()
        for theme in THEMES:
            self.theme.addItem({"system": "Follow the system", "light": "Light", "dark": "Dark"}[theme], theme)
        self.theme.setCurrentIndex(THEMES.index(settings.theme))
        self.reload_button = QPushButton("Reload model with these settings")
        self.mirrors: dict[str, QLineEdit] = {}
        self.token_fields: dict[str, QLineEdit] = {}
        for source, hub in HUBS.items():
            mirror = QLineEdit(settings.endpoint(source) or "", placeholderText=f"{hub} itself")
            mirror.editingFinished.connect(lambda s=source, m=mirror: settings.set_endpoint(s, m.text()))
            token = QLineEdit(self.tokens.get(source) or "", echoMode=QLineEdit.EchoMode.Password,
                              placeholderText="Only for gated or private models")
            token.editingFinished.connect(lambda s=source, t=token: self._save_token(s, t.text()))
            self.mirrors[source], self.token_fields[source] = mirror, token

        form = QFormLayout()
        form.addRow("Models folder", folder_row)
        form.addRow("Device", self.device)
        form.addRow("Split models over", self.gpu_row)
        self._form = form
        form.addRow("KV-cache memory", self.cache_percent)
        form.addRow("KV-cache precision", self.kv_cache_dtype)
        form.addRow("Longest context", self.max_context)
        form.addRow("Theme", self.theme)
        for source, hub in HUBS.items():
            form.addRow(f"{hub} mirror", self.mirrors[source])
            form.addRow(f"{hub} access token", self.token_fields[source])
        note = QLabel("Device, split, KV-cache memory and precision, and context take effect when a model loads.", objectName="muted")
        reload_row = QHBoxLayout()
        reload_row.addWidget(self.reload_button)
        reload_row.addStretch(1)
        column = QWidget(maximumWidth=760)
        inner = QVBoxLayout(column)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addWidget(QLabel("<h2>Settings</h2>"))
        inner.addLayout(form)
        inner.addWidget(note)
        inner.addLayout(reload_row)
        layout = QVBoxLayout(self)
        layout.addWidget(column)
        layout.addStretch(1)

        browse.clicked.connect(self._pick_models_dir)
        default.clicked.connect(lambda: self.set_models_dir(""))
        self.device.currentIndexChanged.connect(lambda: setattr(settings, "device", self.device.currentData()))
        self.cache_percent.valueChanged.connect(lambda v: setattr(settings, "cache_percent", v))
        self.kv_cache_dtype.currentIndexChanged.connect(
            lambda _: setattr(settings, "kv_cache_dtype", self.kv_cache_dtype.currentData()))
        self.max_context.valueChanged.connect(lambda v: setattr(settings, "max_context", v))
        self.theme.currentIndexChanged.connect(self._on_theme)
        self.reload_button.clicked.connect(self.reload_requested)
        self.set_devices([])

    def _save_token(self, source: str, token: str) -> None:
        """Kept in the system keyring where there is one, else in a file only this user can read."""
        if token.strip():
            self.tokens.set(source, token.strip())
        else:
            self.tokens.delete(source)

    def set_devices(self, devices: list[dict]) -> None:
        """Fills the device list from what the engine found; the stored choice stays selected."""
        self.device.blockSignals(True)
        while self.device.count() > 1:
            self.device.removeItem(1)
        for d in devices:
            label = "CPU" if d["id"] == "cpu" else f"GPU {d['id'].split(':')[1]}: {d['name']}"
            self.device.addItem(f"{label} ({d['memory_bytes'] / 2**30:.0f} GiB)", d["id"])
        index = self.device.findData(self.settings.device)
        self.device.setCurrentIndex(max(0, index))
        self.device.blockSignals(False)

        gpus = [int(d["id"].split(":")[1]) for d in devices if d["id"].startswith("cuda:")]
        if devices:  # GPUs picked on another machine, or since removed, are forgotten
            self.settings.gpus = [gpu for gpu in self.settings.gpus if gpu in gpus]
        while self.gpu_box_row.count():
            widget = self.gpu_box_row.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self.gpu_boxes = {}
        for gpu in gpus:
            box = QCheckBox(f"GPU {gpu}", checked=gpu in self.settings.gpus)
            box.toggled.connect(self._on_gpus)
            self.gpu_box_row.addWidget(box)
            self.gpu_boxes[gpu] = box
        self.gpu_box_row.addStretch(1)
        self._form.setRowVisible(self.gpu_row, len(gpus) >= 2)
        self._show_split()

    def _on_gpus(self) -> None:
        self.settings.gpus = [gpu for gpu, box in self.gpu_boxes.items() if box.isChecked()]
        self._show_split()
        self.split_changed.emit(self.settings.split)

    def _show_split(self) -> None:
        picked, split = len(self.settings.gpus), self.settings.split
        if split > 1:
            text = (f"Models load split over these {split} GPUs (tensor parallelism): each holds 1/{split} of the "
                    "weights and of the KV cache, and the Device above is not used.")
        elif picked <= 1:
            text = "Pick 2, 4 or 8 GPUs to run models too large for one of them (or faster) across them."
        else:
            text = f"Pick 2, 4 or 8 GPUs to split a model over ({picked} picked: models load on the Device above)."
        self.split_note.setText(text)

    def _pick_models_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Models folder", str(paths.models_dir()))
        if folder:
            self.set_models_dir(folder)

    def set_models_dir(self, folder: str) -> None:
        self.settings.models_dir = folder
        self.settings.apply_paths()
        self.models_dir.setText(str(paths.models_dir()))
        self.models_dir_changed.emit()

    def _on_theme(self) -> None:
        self.settings.theme = self.theme.currentData()
        self.theme_changed.emit(self.settings.theme)
