"""The generation settings beside the chat: system prompt and sampling, as plain values."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QSpinBox, QWidget


def _float_box(value: float, low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox(minimum=low, maximum=high, singleStep=step, decimals=decimals)
    box.setValue(value)
    return box


class SamplingPanel(QWidget):
    """Temperature, top-p, top-k, min-p, repetition penalty, max new tokens and seed."""

    system_prompt_edited = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.system_prompt = QLineEdit(placeholderText="System prompt (this conversation)")
        self.temperature = _float_box(0.7, 0.0, 2.0, 0.05)
        self.top_p = _float_box(0.9, 0.01, 1.0, 0.05)
        self.top_k = QSpinBox(minimum=0, maximum=1000, value=0, specialValueText="off")
        self.min_p = _float_box(0.0, 0.0, 1.0, 0.01)
        self.repetition_penalty = _float_box(1.0, 0.5, 2.0, 0.05)
        self.max_new_tokens = QSpinBox(minimum=1, maximum=32768, value=1024, singleStep=64)
        self.use_seed = QCheckBox("Fixed seed")
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        form = QFormLayout(self)
        form.addRow(QLabel("<b>System prompt</b>"))
        form.addRow(self.system_prompt)
        form.addRow(QLabel("<b>Sampling</b>"))
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k", self.top_k)
        form.addRow("Min-p", self.min_p)
        form.addRow("Repetition penalty", self.repetition_penalty)
        form.addRow("Max new tokens", self.max_new_tokens)
        form.addRow(self.use_seed, self.seed)
        self.system_prompt.editingFinished.connect(lambda: self.system_prompt_edited.emit(self.system_prompt.text()))

    def generation(self) -> dict:
        """GenerationConfig fields for the next reply."""
        return {
            "temperature": self.temperature.value(),
            "top_p": self.top_p.value(),
            "top_k": self.top_k.value(),
            "min_p": self.min_p.value(),
            "repetition_penalty": self.repetition_penalty.value(),
            "max_new_tokens": self.max_new_tokens.value(),
            "seed": self.seed.value() if self.use_seed.isChecked() else None,
        }
