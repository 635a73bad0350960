"""Python's garbage collector, run by the GUI thread only, on a timer and on request, instead of
wherever allocations (or the engine) happen to trigger it.

A collection frees every unreachable object on the thread that runs it: on an engine thread it
frees Qt objects that must die on the GUI thread (a timer still registered with the GUI's event
loop, say), which crashes the app. And a pass over everything torch and transformers keep alive
holds the GIL 200–400 ms, stalling the window whichever thread runs it. So, while the window lives:

- the automatic collector is off; the GUI thread collects the young generation every second and
  everything every minute;
- what exists once a model has loaded is frozen out of the collector's view (``gc.freeze``), so
  those passes stay short;
- when the engine lets a model go (an unload, a replaced or failed load) it does not collect on its
  own thread: the bridge asks for ``collect_all`` here, which thaws, collects everything (the
  model's reference cycles, once per load) and freezes what is left.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, Qt, QTimer, Slot

YOUNG_MS = 1000
FULL_EVERY = 60  # young passes between full ones


class GuiCollector(QObject):
    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        self._ticks = 0
        self._stopped = False
        self._timer = QTimer(self, interval=YOUNG_MS, timeout=self._collect)
        gc.disable()
        self._timer.start()

    def watch(self, bridge) -> None:
        """Collects and freezes for an EngineBridge (app/ui/engine_bridge.py): its signals come from
        the bridge's and the engine's threads; the work is done here, on the GUI thread."""
        queued = Qt.ConnectionType.QueuedConnection
        bridge.collect_requested.connect(self.collect_all, queued)
        bridge.loaded.connect(self.freeze, queued)

    def _collect(self) -> None:
        self._ticks += 1
        gc.collect(2 if self._ticks % FULL_EVERY == 0 else 0)

    @Slot()
    def collect_all(self) -> None:
        """Everything, the frozen objects too (a model let go was frozen with them); what is left is frozen again."""
        if self._stopped:  # stop() collected already; an engine shutting down after the window asks in vain
            return
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    @Slot()
    def freeze(self) -> None:
        """A model has loaded: it, and what its load imported, leave the collector's view."""
        if not self._stopped:
            gc.freeze()

    def stop(self) -> None:
        """Back to the automatic collector (the window is closing), after a last collection here:
        nothing this thread let go is left for a collection on another thread."""
        self._stopped = True
        self._timer.stop()
        gc.unfreeze()
        gc.collect()
        if self._was_enabled:
            gc.enable()
