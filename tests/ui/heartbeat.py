"""How long the GUI thread's event loop stalls: the acceptance measure of a responsive window."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer


class Heartbeat:
    """The longest gap between ticks of a 10 ms timer on the GUI thread: how long it stalled."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.last = time.perf_counter()
        self.longest = 0.0
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now
