"""A quantization's report: perplexity, size on disk and decode speed before and after, the same
three questions answered by both models side by side, and Load and chat."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame, QGridLayout, QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget,
)

from app.downloader import human_bytes
from app.ui.quantize_status import clock

MISSING = "—"


def _change(before: float | None, after: float | None, higher_is_better: bool) -> QLabel:
    """The relative change, green when it is an improvement and amber when it is a loss."""
    if not before or after is None:
        return _cell(MISSING)
    change = (after - before) / before
    label = _cell(f"{change:+.0%}".replace("-", "−"))
    if round(change, 2):
        label.setObjectName("better" if (change > 0) == higher_is_better else "worse")
    return label


def _card() -> tuple[QFrame, QGridLayout]:
    card = QFrame(objectName="assistantBubble")
    grid = QGridLayout(card)
    grid.setContentsMargins(14, 10, 14, 10)
    grid.setHorizontalSpacing(24)
    return card, grid


def _cell(text: str, header: bool = False, muted: bool = False) -> QLabel:
    label = QLabel(f"<b>{text}</b>" if header else text, wordWrap=True,
                   textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setTextFormat(Qt.TextFormat.RichText if header else Qt.TextFormat.PlainText)
    if muted:
        label.setObjectName("muted")
    label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    return label


class QuantizeReportView(QWidget):
    load_and_chat = Signal(str)  # the new model's folder
    another = Signal()

    def __init__(self):
        super().__init__()
        self.out = ""
        self.heading = QLabel("", wordWrap=True)
        self.summary = QLabel("", objectName="muted", wordWrap=True)
        self.error = QLabel("", objectName="notice", wordWrap=True)
        self.body = QVBoxLayout()
        self.load_chat_button = QPushButton("Load and chat", objectName="primary")
        self.another_button = QPushButton("Quantize another model")
        holder = QWidget()
        holder.setLayout(self.body)
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        scroll.setWidget(holder)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.another_button)
        buttons.addWidget(self.load_chat_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.heading)
        layout.addWidget(self.summary)
        layout.addWidget(self.error)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)
        self.load_chat_button.clicked.connect(lambda: self.load_and_chat.emit(self.out))
        self.another_button.clicked.connect(self.another)

    def show_report(self, report: dict) -> None:
        self.out = report["out"]
        settings = report["settings"]
        data = ", ".join(Path(p).name for p in settings["calib_data"]) or "Python's documentation"
        self.heading.setText(f"<h3>{Path(self.out).name} is ready</h3>")
        self.summary.setText(
            f"A 4-bit AWQ copy (group size {settings['group_size']}) of {Path(report['source']).name}, calibrated on "
            f"{settings['calib_samples']} samples × {settings['calib_seqlen']} tokens of {data} in "
            f"{clock(report['elapsed_s'])}. Saved in {self.out}.")
        self.error.setText(f"Part of the report could not be measured: {report['error']}" if report["error"] else "")
        self.error.setVisible(bool(report["error"]))
        while self.body.count():
            item = self.body.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.body.addWidget(self._figures(report))
        self.body.addWidget(self._answers(report))
        self.body.addStretch(1)

    @staticmethod
    def _figures(report: dict) -> QFrame:
        before, after = report["before"], report["after"]
        card, grid = _card()
        for column, text in enumerate(("", "Original", "4-bit", "Change")):
            grid.addWidget(_cell(text, header=True), 0, column)
        rows = (("Perplexity (lower is better)", "perplexity", lambda v: f"{v:.2f}", False),
                ("Size on disk", "size_bytes", human_bytes, False),
                ("Decode speed", "tokens_per_s", lambda v: f"{v:.1f} tokens/s", True))
        for row, (name, key, show, higher_is_better) in enumerate(rows, start=1):
            b, a = before.get(key), after.get(key)
            for column, text in enumerate((name, show(b) if b is not None else MISSING,
                                           show(a) if a is not None else MISSING)):
                grid.addWidget(_cell(text), row, column)
            grid.addWidget(_change(b, a, higher_is_better), row, 3)
        note = f"Perplexity over {report['ppl_text']}, never used for calibration. " + _speed_note(report)
        grid.addWidget(_cell(note, muted=True), len(rows) + 1, 0, 1, 4)
        grid.setColumnStretch(0, 2)
        for column in (1, 2, 3):
            grid.setColumnStretch(column, 1)
        return card

    @staticmethod
    def _answers(report: dict) -> QFrame:
        card, grid = _card()
        for column, text in enumerate(("Question", "Original", "4-bit")):
            grid.addWidget(_cell(text, header=True), 0, column)
        before, after = report["before"].get("answers", []), report["after"].get("answers", [])
        for row, prompt in enumerate(report["prompts"], start=1):
            cells = (prompt, before[row - 1] if before else MISSING, after[row - 1] if after else MISSING)
            for column, text in enumerate(cells):
                grid.addWidget(_cell(text, muted=column == 0), row, column)
        grid.addWidget(_cell("The same questions, answered greedily (no sampling) by both models.", muted=True),
                       len(report["prompts"]) + 1, 0, 1, 3)
        grid.setColumnStretch(0, 2)
        grid.setColumnStretch(1, 3)
        grid.setColumnStretch(2, 3)
        return card


def _speed_note(report: dict) -> str:
    """Where the speeds were measured; on a CPU, why the 4-bit model is no faster there."""
    device = report.get("speed_device", "")
    if device.startswith("cuda"):
        return "Speed: one conversation, on the GPU, which reads the 4-bit weights packed."
    if device == "cpu":
        return ("Speed: one conversation, on the CPU. There the 4-bit weights are expanded when the model loads, "
                "so it runs about as fast as the original; on a GPU it reads them packed and decodes faster.")
    return "Speed: one conversation, on the device set in Settings."
