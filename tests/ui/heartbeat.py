"""How long the GUI thread's event loop stalls: the acceptance measure of a responsive window."""

from __future__ import annotations

import threading
import time
from typing import Self

import shiboken6
from PySide6.QtCore import Qt, QTimer


class Heartbeat:
    """The longest gap between ticks of a 10 ms timer on the GUI thread: how long it stalled.

    Measures from its creation to ``stop()``: the end of its ``with`` block, or the first emission of
    ``until``, a signal the GUI thread emits. Stopped, the timer is gone, even when the test failed:
    a failed test's frames outlive it in its traceback, and a timer of theirs would tick on into
    later tests, to be freed on whichever thread collects them."""

    def __init__(self, until=None) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.last = time.perf_counter()
        self.longest = 0.0
        self.timer.timeout.connect(self._tick)
        if until is not None:
            until.connect(self.stop, Qt.ConnectionType.DirectConnection)  # at once, on the emitting (GUI) thread
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    def stop(self, *_signal_args) -> None:
        if self.timer is None:
            return
        assert threading.current_thread() is threading.main_thread(), "stop() belongs on the GUI thread"
        self._tick()  # a stall just before the end counts too
        self.timer.stop()
        shiboken6.delete(self.timer)  # here, on the GUI thread
        self.timer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
