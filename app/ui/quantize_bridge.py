"""The GUI's door to quantization: runs one job at a time in its own process
(app/ui/quantize_job.py) and turns that process's messages into signals carrying plain values.

``start`` returns at once: a relay thread launches the process and waits on its pipe, so the GUI
thread never blocks, and Qt queues the signals to the widgets' thread. Cancel sets an event the
quantizer checks between stages; it removes what it had written.
"""

from __future__ import annotations

import multiprocessing
import threading

from PySide6.QtCore import QObject, Signal, Slot

from app.ui.quantize_job import run_job

_EXIT_WAIT_S = 30  # for the process to end after its last message (it frees a model's memory)


class QuantizeBridge(QObject):
    started = Signal(dict)  # the job: {"quantize": QuantizeConfig fields, "report", "engine", "quick"}
    progress = Signal(dict)  # QuantProgress fields: layer, layers, stage, elapsed_s, eta_s
    measuring = Signal(str)  # what the report measures now (the 4-bit model is written by then)
    finished = Signal(dict)  # the report (app/ui/quantize_report.py's build_report, with settings and time)
    failed = Signal(str)  # why; nothing was written
    cancelled = Signal()  # nothing was written, or the new model was removed again

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._busy = False
        self._cancel = None
        self._process = None
        self._relay_thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._busy

    @Slot(dict)
    def start(self, job: dict) -> None:
        if self._busy:  # the pages offer no second run while one is going
            raise RuntimeError("a quantization is already running")
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no Qt, no copy of the app
        self._busy = True
        self._cancel = context.Event()
        self.started.emit(job)
        self._relay_thread = threading.Thread(target=self._relay, args=(context, job, self._cancel),
                                              name="lmstation-quantize-relay", daemon=True)
        self._relay_thread.start()

    @Slot()
    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def _relay(self, context, job: dict, cancel) -> None:
        receiver, sender = context.Pipe(duplex=False)
        self._process = None
        process = context.Process(target=run_job, args=(job, sender, cancel), name="lmstation-quantize", daemon=True)
        final: tuple[str, object] = ("failed", None)
        try:
            process.start()
            self._process = process
            sender.close()  # the child holds the only writer now: its end means end of file here
            while True:
                kind, value = receiver.recv()
                if kind == "progress":
                    self.progress.emit(value)
                elif kind == "measuring":
                    self.measuring.emit(value)
                else:
                    final = (kind, value)
                    break
        except EOFError:
            pass  # the process died without a word; said below
        except OSError as exc:
            final = ("failed", f"Could not start the quantizer: {exc}")
        finally:
            sender.close()
            receiver.close()
        if self._process is process:  # it started
            process.join(_EXIT_WAIT_S)
            if process.is_alive():
                process.terminate()
                process.join()
        self._busy = False
        self._emit_end(*final, process.exitcode)

    def _emit_end(self, kind: str, value, exitcode: int | None) -> None:
        if kind == "finished":
            self.finished.emit(value)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(value or f"The quantizer stopped unexpectedly (exit code {exitcode}).")

    def shutdown(self, wait_s: float = 10.0) -> None:
        """Cancels a running job and waits for its process (stopped by force after ``wait_s``)."""
        thread = self._relay_thread
        if thread is None or not thread.is_alive():
            return
        self.cancel()
        thread.join(wait_s)
        if thread.is_alive() and self._process is not None:
            self._process.terminate()
            thread.join()
