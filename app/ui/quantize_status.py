"""A running quantization in words and a bar: layer i of n, what it does now, time left, Cancel.

The Models page (one-click runs) and the Quantize page (wizard runs) each show one, fed by the
same QuantizeBridge; what happens when a run ends is each page's own business.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QGridLayout, QLabel, QProgressBar, QPushButton, QWidget

from app.ui.quantize_bridge import QuantizeBridge

STAGES = {"loading": "loading the model", "calibrating": "running the calibration text through it",
          "scales": "searching activation-aware scales", "clipping": "searching clipping ranges",
          "quantizing": "rounding to 4 bits", "writing": "writing the 4-bit model", "done": "written"}
# Where in a layer's work each stage begins (the bar moves within a layer too).
_STAGE_SHARE = {"scales": 0.1, "clipping": 0.6, "quantizing": 0.85}
_BAR_STEPS = 1000


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def describe(p: dict) -> str:
    """'Layer 5 of 30 · searching clipping ranges · 1:02 elapsed · about 2 min left'."""
    stage = STAGES.get(p["stage"], p["stage"])
    if p["stage"] in ("loading", "calibrating"):
        where = stage[0].upper() + stage[1:]
    elif p["layer"] >= p["layers"]:
        where = f"All {p['layers']} layers done · {stage}"
    else:
        where = f"Layer {p['layer'] + 1} of {p['layers']} · {stage}"
    eta = p.get("eta_s")
    left = "estimating the time left" if eta is None else f"about {clock(eta)} left"
    return f"{where} · {clock(p['elapsed_s'])} elapsed · {left}"


def fraction(p: dict) -> float:
    if p["layer"] >= p["layers"]:
        return 1.0
    return (p["layer"] + _STAGE_SHARE.get(p["stage"], 0.0)) / max(1, p["layers"])


class QuantizeStatus(QWidget):
    def __init__(self, quantizer: QuantizeBridge):
        super().__init__()
        self.quantizer = quantizer
        self.title = QLabel("", wordWrap=True)
        self.detail = QLabel("", objectName="muted", wordWrap=True)
        self.bar = QProgressBar(minimum=0, maximum=_BAR_STEPS, textVisible=False)
        self.cancel_button = QPushButton("Cancel")
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title, 0, 0, 1, 2)
        layout.addWidget(self.bar, 1, 0)
        layout.addWidget(self.cancel_button, 1, 1)
        layout.addWidget(self.detail, 2, 0, 1, 2)
        layout.setColumnStretch(0, 1)
        self.cancel_button.clicked.connect(self._cancel)
        queued = Qt.ConnectionType.QueuedConnection  # the bridge emits from its relay thread
        quantizer.started.connect(self._on_started, queued)
        quantizer.progress.connect(self._on_progress, queued)
        quantizer.measuring.connect(self._on_measuring, queued)

    @Slot(dict)
    def _on_started(self, job: dict) -> None:
        options = job["quantize"]
        self.title.setText(f"<b>{Path(options['model']).name}</b> → <b>{Path(options['out']).name}</b>")
        self.detail.setText("Starting the quantizer…")
        self.bar.setValue(0)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")

    @Slot(dict)
    def _on_progress(self, p: dict) -> None:
        self.bar.setValue(round(_BAR_STEPS * fraction(p)))
        if self.cancel_button.isEnabled():
            self.detail.setText(describe(p))

    @Slot(str)
    def _on_measuring(self, what: str) -> None:
        self.bar.setValue(_BAR_STEPS)
        if self.cancel_button.isEnabled():
            self.detail.setText(f"The 4-bit model is written. Making its report: {what[0].lower()}{what[1:]}…")

    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.detail.setText("Cancelling: the quantizer stops at its next step and removes what it wrote…")
        self.quantizer.cancel()
