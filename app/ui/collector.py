"""Python's garbage collector, run by the GUI thread on a timer instead of wherever allocations
happen to trigger it.

Left automatic, a full collection runs on whichever thread allocates (the engine's, say), where
it may free Qt objects that must die on the GUI thread, and a pass over everything torch and
transformers keep alive stalled the window 200–300 ms (measured in the quantize test). So the
automatic collector is off while the window lives; the GUI thread collects the young generation
every second and everything every minute; and what a loaded model holds is frozen out of the
collector's view (``gc.freeze``, by the engine bridge after a load; thawed before the next one,
so an unloaded model's cycles are found again)."""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

YOUNG_MS = 1000
FULL_EVERY = 60  # young passes between full ones


class GuiCollector(QObject):
    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        self._ticks = 0
        self._timer = QTimer(self, interval=YOUNG_MS, timeout=self._collect)
        gc.disable()
        self._timer.start()

    def _collect(self) -> None:
        self._ticks += 1
        gc.collect(2 if self._ticks % FULL_EVERY == 0 else 0)

    def stop(self) -> None:
        """Back to the automatic collector, everything in its view again (the window is closing)."""
        self._timer.stop()
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
