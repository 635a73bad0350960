"""The Quantize wizard's steps as widgets: which model, which calibration text, which settings
(with estimates), and the run. Each says when it changed; the wizard (app/ui/quantize_page.py)
decides what may happen next."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup, QComboBox, QFileDialog, QFormLayout, QFrame, QHBoxLayout, QLabel, QLayout, QLineEdit,
    QListWidget, QPushButton, QRadioButton, QSpinBox, QVBoxLayout, QWidget,
)

from app.downloader import human_bytes
from app.library import LocalModel
from app.ui.quantize_bridge import QuantizeBridge
from app.ui.quantize_plan import DEFAULT_SAMPLES, DEFAULT_SEQLEN, GROUP_SIZES, Estimate, duration
from app.ui.quantize_status import QuantizeStatus

STEPS = ("Model", "Calibration text", "Settings", "Quantize", "Report")
FIELD_WIDTH = 420  # combo boxes, spin boxes and the name: wide enough, never the whole page
TEXT_SUFFIXES = (".txt", ".jsonl")
ABOUT = (("LM Station runs some text through the model to see which weights meet the largest activations, "
          "protects those, and rounds every weight of the decoder layers to 4 bits (AWQ)."),
         ("The 4-bit copy goes into your library beside the original, which stays as it is. It needs about a "
          "third of the memory, and answers faster on a GPU."),
         ("A report then compares both: perplexity on text never used for calibration, size on disk, speed, and "
          "the same questions answered by each."))


def card(title: str | None, *items: QWidget | QLayout) -> QFrame:
    frame = QFrame(objectName="assistantBubble")
    layout = QVBoxLayout(frame)
    layout.setContentsMargins(16, 12, 16, 14)
    if title:
        layout.addWidget(QLabel(f"<b>{title}</b>"))
    for item in items:
        if isinstance(item, QLayout):
            layout.addLayout(item)
        else:
            layout.addWidget(item)
    layout.addStretch(1)
    return frame


def muted(text: str = "") -> QLabel:
    return QLabel(text, objectName="muted", wordWrap=True)


def _step_layout(widget: QWidget, title: str, text: str) -> QVBoxLayout:
    layout = QVBoxLayout(widget)
    layout.addWidget(QLabel(f"<h3>{title}</h3>"))
    layout.addWidget(muted(text))
    return layout


def _form(labels: dict[str, QLabel]) -> QFormLayout:
    form = QFormLayout()
    for name, label in labels.items():
        form.addRow(muted(name), label)
    return form


class EstimateForm(QWidget):
    """Time, disk and memory of a run, in words (app/ui/quantize_plan.py's estimate)."""

    def __init__(self) -> None:
        super().__init__()
        self.time, self.disk, self.memory = (QLabel("", wordWrap=True) for _ in range(3))
        form = _form({"Time": self.time, "Disk": self.disk, "Memory": self.memory})
        form.setContentsMargins(0, 0, 0, 0)
        self.setLayout(form)

    def show_estimate(self, e: Estimate, gpu: bool) -> None:
        where = "the GPU" if gpu else "the CPU"
        self.time.setText(f"about {duration(e.seconds)}: {e.layers} layers × about {duration(e.seconds_per_layer)} "
                          f"on {where}, then about {duration(e.report_seconds)} for the report (a rough guide; the "
                          "run shows the real time left)")
        self.disk.setText(f"about {human_bytes(e.disk_bytes)} for the 4-bit copy (the original's weights: "
                          f"{human_bytes(e.source_weight_bytes)})")
        self.memory.setText(
            f"about {human_bytes(e.work_bytes)} of GPU memory (one layer and the calibration activations); the "
            f"model waits in RAM ({human_bytes(e.model_bytes)})" if gpu else
            f"about {human_bytes(e.model_bytes + e.work_bytes)} of RAM: the model in float32, one layer's work and "
            "the calibration activations")


class StepBar(QWidget):
    """The wizard's steps in a row: done, current (highlighted), to come (muted)."""

    def __init__(self) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 4)
        self.labels: list[QLabel] = []
        for number, name in enumerate(STEPS, start=1):
            if number > 1:
                layout.addWidget(muted("›"))
            self.labels.append(QLabel(f"{number}  {name}"))
            layout.addWidget(self.labels[-1])
        layout.addStretch(1)

    def show_step(self, step: int) -> None:
        for index, label in enumerate(self.labels):
            label.setObjectName("stepCurrent" if index == step else "stepDone" if index < step else "step")
            label.style().unpolish(label)  # the style sheet's rules follow the new name
            label.style().polish(label)


class ModelStep(QWidget):
    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.models: list[LocalModel] = []
        self.combo = QComboBox(maximumWidth=FIELD_WIDTH)
        self.facts = {name: QLabel("") for name in ("Architecture", "Parameters", "Weights", "On disk")}
        self.defaults = EstimateForm()
        self.note = muted()
        left = QVBoxLayout()
        left.addWidget(card("The model", _form(self.facts), self.note))
        left.addWidget(card("With the default settings", self.defaults))
        cards = QHBoxLayout()
        cards.addLayout(left, 1)
        cards.addWidget(card("What happens", *[muted(f"{n}.  {text}") for n, text in enumerate(ABOUT, 1)]), 1)
        layout = _step_layout(self, "Which model?", "Models in your library with 16- or 32-bit weights; the "
                                                    "original stays as it is.")
        layout.addWidget(self.combo)
        layout.addLayout(cards)
        layout.addStretch(1)
        self.combo.currentIndexChanged.connect(self._on_changed)

    def set_models(self, models: list[LocalModel]) -> None:
        """Keeps the chosen model chosen when it is still there."""
        chosen = self.selected()
        self.models = models
        self.combo.blockSignals(True)
        self.combo.clear()
        for model in models:
            self.combo.addItem(model.name, str(model.path))
        index = self.combo.findData(str(chosen.path)) if chosen else -1
        self.combo.setCurrentIndex(max(index, 0) if models else -1)
        self.combo.blockSignals(False)
        self._on_changed()

    def selected(self) -> LocalModel | None:
        index = self.combo.currentIndex()
        return self.models[index] if 0 <= index < len(self.models) else None

    def _on_changed(self) -> None:
        model = self.selected()
        self.note.setText("" if model else "No model to quantize: the library holds none with 16- or 32-bit "
                                           "weights. Download one under Models › Discover, or import a folder.")
        texts = ("",) * len(self.facts)
        if model is not None:
            texts = (model.architecture, f"{model.parameters / 1e6:,.0f} million", model.weight_type,
                     human_bytes(model.size_bytes))
        for label, text in zip(self.facts.values(), texts):
            label.setText(text)
        self.changed.emit()


class DataStep(QWidget):
    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.files: list[Path] = []
        self.builtin_radio = QRadioButton("Built in: Python's own documentation")
        self.files_radio = QRadioButton("My own text files")
        self.builtin_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.builtin_radio)
        group.addButton(self.files_radio)
        self.files_list = QListWidget(maximumHeight=140)
        self.add_button = QPushButton("Add files…")
        self.remove_button = QPushButton("Remove")
        self.refused = QLabel("", objectName="notice", wordWrap=True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        options = QHBoxLayout()
        options.addWidget(card(None, self.builtin_radio, muted(
            "English prose and code examples that ship with every Python: a good start for chat and coding models. "
            "A held-out fifth of it, never used for calibration, measures perplexity in the report.")), 1)
        options.addWidget(card(None, self.files_radio, muted(
            "Plain .txt files (one document each) or .jsonl files (a \"text\" field on each line)."),
            self.files_list, buttons, self.refused), 1)
        layout = _step_layout(self, "Calibration text", "A few hundred passages show the quantizer which weights "
                                                        "matter. Text like what you will ask the model works best.")
        layout.addLayout(options)
        layout.addStretch(1)
        self.builtin_radio.toggled.connect(self._on_changed)
        self.add_button.clicked.connect(self._pick)
        self.remove_button.clicked.connect(self._remove)
        self._on_changed()

    def chosen(self) -> list[Path]:
        """The user's files, or none: the built-in text."""
        return list(self.files) if self.files_radio.isChecked() else []

    def problem(self) -> str | None:
        if self.files_radio.isChecked() and not self.files:
            return "Add at least one .txt or .jsonl file, or use the built-in text."
        return None

    def add_files(self, files: list[Path]) -> None:
        """What the file picker gives; anything but .txt and .jsonl files is refused, by name."""
        refused = [f for f in files if f.suffix.lower() not in TEXT_SUFFIXES or not f.is_file()]
        self.files += [f for f in files if f not in refused and f not in self.files]
        self.refused.setText(f"Not a .txt or .jsonl file: {', '.join(f.name for f in refused)}." if refused else "")
        if self.files:
            self.files_radio.setChecked(True)
        self._on_changed()

    def _pick(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Calibration text", "", "Text (*.txt *.jsonl)")
        self.add_files([Path(f) for f in files])

    def _remove(self) -> None:
        row = self.files_list.currentRow()
        if 0 <= row < len(self.files):
            del self.files[row]
        self._on_changed()

    def _on_changed(self) -> None:
        self.files_list.clear()
        self.files_list.addItems([str(f) for f in self.files])
        self.files_list.setEnabled(self.files_radio.isChecked())
        self.remove_button.setEnabled(bool(self.files))
        self.changed.emit()


class SettingsStep(QWidget):
    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.group_size = QComboBox(maximumWidth=FIELD_WIDTH)
        for size in GROUP_SIZES:
            self.group_size.addItem(str(size), size)
        self.samples = QSpinBox(minimum=1, maximum=4096, value=DEFAULT_SAMPLES, maximumWidth=FIELD_WIDTH)
        self.seqlen = QSpinBox(minimum=16, maximum=8192, singleStep=64, value=DEFAULT_SEQLEN, maximumWidth=FIELD_WIDTH)
        self.out_name = QLineEdit(maximumWidth=FIELD_WIDTH)
        self.out_where = muted()
        self.estimates = EstimateForm()
        form = QFormLayout()
        form.addRow("Group size", self.group_size)
        form.addRow("", muted("Weights that share one scale: smaller groups keep a little more quality and take a "
                              "little more space."))
        form.addRow("Calibration samples", self.samples)
        form.addRow("Tokens per sample", self.seqlen)
        form.addRow("", muted("More text calibrates more surely and takes longer; 128 × 512 is what AWQ's authors "
                              "use."))
        form.addRow("Save as", self.out_name)
        form.addRow("", self.out_where)
        columns = QHBoxLayout()
        columns.addLayout(form, 1)
        columns.addWidget(card("Estimates", self.estimates), 1)
        layout = _step_layout(self, "Settings", "The defaults suit most models; the estimates follow your choices.")
        layout.addLayout(columns)
        layout.addStretch(1)
        self.group_size.currentIndexChanged.connect(self.changed)
        self.samples.valueChanged.connect(self.changed)
        self.seqlen.valueChanged.connect(self.changed)
        self.out_name.textChanged.connect(self.changed)

    def values(self) -> dict:
        """QuantizeConfig fields."""
        return {"group_size": self.group_size.currentData(), "calib_samples": self.samples.value(),
                "calib_seqlen": self.seqlen.value()}

    def name(self) -> str:
        return self.out_name.text().strip()


class RunStep(QWidget):
    def __init__(self, quantizer: QuantizeBridge) -> None:
        super().__init__()
        self.status = QuantizeStatus(quantizer)
        self.settings = muted()
        self.outcome = QLabel("", objectName="notice", wordWrap=True)
        layout = _step_layout(self, "Quantizing", "Layer by layer: the model waits in memory while each layer is "
                                                  "calibrated and rounded in turn. Cancel leaves nothing behind.")
        layout.addWidget(card("Progress", self.status, self.settings))
        layout.addWidget(self.outcome)
        layout.addStretch(1)

    def show_job(self, job: dict) -> None:
        options = job["quantize"]
        data = ", ".join(Path(f).name for f in options.get("calib_data", ())) or "Python's documentation"
        self.settings.setText(
            f"Group size {options['group_size']} · {options.get('calib_samples', DEFAULT_SAMPLES)} samples × "
            f"{options.get('calib_seqlen', DEFAULT_SEQLEN)} tokens of {data} · saved in {Path(options['out']).parent}")
        self.outcome.setText("")
