"""The Quantize page: a wizard for a 4-bit AWQ copy with settings of one's own (model, calibration
text, settings with estimates), then the run with per-layer progress and Cancel, then the report.

The page follows whatever job the QuantizeBridge runs, so a one-click run from the Models page
shows its progress and report here too. Bad input is caught before a run, in one message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

from app import paths
from app.library import LocalModel, describe_model, list_models
from app.ui.quantize_bridge import QuantizeBridge
from app.ui.quantize_plan import (
    DEFAULT_SAMPLES, DEFAULT_SEQLEN, GROUP_SIZES, can_quantize, default_group_size, estimate, group_size_problem, name_problem, output_folder,
    read_config,
)
from app.ui.quantize_report_view import QuantizeReportView
from app.ui.quantize_steps import DataStep, ModelStep, RunStep, SettingsStep, StepBar, muted

MODEL, DATA, SETTINGS, RUN, REPORT = range(5)


class QuantizePage(QWidget):
    load_and_chat = Signal(str)  # the new model's folder

    def __init__(self, quantizer: QuantizeBridge, engine_options: Callable[[], dict]):
        """``engine_options()``: the app's current EngineConfig settings (device, dtype), for the run and its report."""
        super().__init__()
        self.quantizer, self.engine_options = quantizer, engine_options
        self.tuning: dict = {}  # QuantizeConfig fields under the user's choices (tests make runs small)
        self.report_settings: dict = {}  # app/ui/quantize_report.py's DEFAULTS overridden (tests again)
        self.gpu = False
        self.steps = StepBar()
        self.model_step, self.data_step, self.settings_step = ModelStep(), DataStep(), SettingsStep()
        self.run_step, self.report_view = RunStep(quantizer), QuantizeReportView()
        self.stack = QStackedWidget()
        for step in (self.model_step, self.data_step, self.settings_step, self.run_step, self.report_view):
            self.stack.addWidget(step)
        self.problem = QLabel("", objectName="notice", wordWrap=True)
        self.back_button = QPushButton("Back")
        self.next_button = QPushButton("Next", objectName="primary")
        nav = QHBoxLayout()
        nav.addWidget(self.problem, 1)
        nav.addWidget(self.back_button)
        nav.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2>Quantize</h2>"))
        layout.addWidget(muted("A 4-bit AWQ copy of a model, with settings of your own. For the defaults, press "
                               "Quantize to 4-bit on the Models page."))
        layout.addWidget(self.steps)
        layout.addWidget(self.stack, 1)
        layout.addLayout(nav)

        self.model_step.changed.connect(self._on_model_changed)
        self.data_step.changed.connect(self._update)
        self.settings_step.changed.connect(self._update)
        self.report_view.load_and_chat.connect(self.load_and_chat)
        self.report_view.another.connect(lambda: self._show(MODEL))
        self.back_button.clicked.connect(self._back)
        self.next_button.clicked.connect(self._next)
        queued = Qt.ConnectionType.QueuedConnection  # the bridge emits from its relay thread
        quantizer.started.connect(self._on_started, queued)
        quantizer.finished.connect(self._on_finished, queued)
        quantizer.failed.connect(self._on_failed, queued)
        quantizer.cancelled.connect(self._on_cancelled, queued)
        self._show(MODEL)
        self.refresh_models()

    def refresh_models(self) -> None:
        """The library's unquantized models."""
        self.model_step.set_models([m for m in list_models()[0] if can_quantize(m)])

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's naming)
        """The library may have changed while the page was hidden (downloads, imports, Settings)."""
        if self.stack.currentIndex() == MODEL:
            self.refresh_models()
        super().showEvent(event)

    def selected_model(self) -> LocalModel | None:
        return self.model_step.selected()

    def set_devices(self, devices: list[dict]) -> None:
        """Estimates assume a GPU when there is one and Settings do not pin the CPU."""
        self.gpu = any(d["id"] != "cpu" for d in devices)
        self._update()

    # ---- the wizard ------------------------------------------------------------------------------
    def _on_model_changed(self) -> None:
        """A new model gets its own defaults: the group size that fits it and a free name."""
        model = self.selected_model()
        if model is not None:
            size = default_group_size(read_config(model))
            if size is not None:
                self.settings_step.group_size.setCurrentIndex(self.settings_step.group_size.findData(size))
            self.settings_step.out_name.setText(output_folder(paths.models_dir(), model.name).name)
        self._update()

    def _problem(self) -> str | None:
        """What keeps the current step from going on, in one sentence."""
        step, model = self.stack.currentIndex(), self.selected_model()
        if step in (MODEL, SETTINGS) and model is None:
            return "Pick a model."
        if step == DATA:
            return self.data_step.problem()
        if step == SETTINGS:
            if self.quantizer.running:
                return "A quantization is running; wait for it or cancel it on the Models page."
            return (group_size_problem(read_config(model), self.settings_step.group_size.currentData(), model.name)
                    or name_problem(paths.models_dir(), self.settings_step.name()))
        return None

    def _update(self) -> None:
        problem = self._problem()
        self.problem.setText(problem or "")
        self.next_button.setEnabled(problem is None)
        settings, model = self.settings_step, self.selected_model()
        settings.out_where.setText(f"in {paths.models_dir()}")
        if model is not None:  # the estimates of the defaults (first step) and of the chosen settings
            gpu, config = self.gpu and self.engine_options().get("device", "auto") != "cpu", read_config(model)
            default = default_group_size(config) or GROUP_SIZES[-1]
            self.model_step.defaults.show_estimate(
                estimate(model, config, default, DEFAULT_SAMPLES, DEFAULT_SEQLEN, gpu), gpu)
            values = settings.values()
            settings.estimates.show_estimate(estimate(model, config, values["group_size"], values["calib_samples"],
                                                      values["calib_seqlen"], gpu), gpu)

    def _show(self, step: int) -> None:
        self.stack.setCurrentIndex(step)
        self.steps.show_step(step)
        self.back_button.setVisible(step in (DATA, SETTINGS, RUN))
        self.back_button.setEnabled(step != RUN or not self.quantizer.running)
        self.next_button.setVisible(step < RUN)
        self.next_button.setText("Quantize" if step == SETTINGS else "Next")
        self._update()

    def _back(self) -> None:
        self._show(SETTINGS if self.stack.currentIndex() == RUN else self.stack.currentIndex() - 1)

    def _next(self) -> None:
        if self._problem() is not None:
            return
        if self.stack.currentIndex() < SETTINGS:
            self._show(self.stack.currentIndex() + 1)
            return
        chosen = {**self.settings_step.values(), "calib_data": [str(f) for f in self.data_step.chosen()]}
        out = paths.models_dir() / self.settings_step.name()
        self.quantizer.start(self.job(self.selected_model(), out, False, chosen))

    # ---- runs ------------------------------------------------------------------------------------
    def quick(self, folder: str) -> str | None:
        """Starts a run with the default settings; returns why it cannot run, if it cannot."""
        model = describe_model(Path(folder))
        size = default_group_size(read_config(model))
        if size is None:
            return (f"{model.name} cannot be stored in the AWQ format: none of the group sizes "
                    f"{', '.join(map(str, GROUP_SIZES))} divides its layers.")
        self.quantizer.start(self.job(model, output_folder(paths.models_dir(), model.name), True,
                                      {"group_size": size}))
        return None

    def job(self, model: LocalModel, out: Path, quick: bool, chosen: dict) -> dict:
        """What the worker process runs: plain values only."""
        options = self.engine_options()
        quantize = {**self.tuning, **chosen, "model": str(model.path), "out": str(out),
                    "device": options.get("device", "auto")}
        engine = {key: options[key] for key in ("device", "dtype", "kernels") if key in options}
        return {"quantize": quantize, "report": dict(self.report_settings), "engine": engine, "quick": quick}

    @Slot(dict)
    def _on_started(self, job: dict) -> None:
        self.run_step.show_job(job)
        self._show(RUN)

    @Slot(dict)
    def _on_finished(self, report: dict) -> None:
        self.report_view.show_report(report)
        self._show(REPORT)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.run_step.outcome.setText(f"Could not quantize: {message}")
        self._show(RUN)

    @Slot()
    def _on_cancelled(self) -> None:
        self.run_step.outcome.setText("Cancelled; nothing was written.")
        self._show(RUN)
