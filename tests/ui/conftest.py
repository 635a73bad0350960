"""Qt runs offscreen in tests (CI has no display). The garbage collector runs on the GUI thread only,
as in the app (app/ui/collector.py): a collection frees whatever is unreachable on the thread that
runs it, and Qt objects a test left in reference cycles, freed on another thread (an engine's, a
download's), crash the run. So the automatic collector is off during each test, and after it the
GUI thread collects everything, frozen objects too (gc.freeze, app/ui/collector.py). A failed test's
frames (kept in sys.last_traceback for post-mortem debugging) hold its widgets and timers, so they
are let go first. A collection on another thread during a test fails it: the crash it may cause
comes later and elsewhere, if at all."""

import gc
import os
import sys
import threading

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def collect_on_the_gui_thread():
    elsewhere: list[str] = []

    def heard(phase: str, info: dict) -> None:
        if phase == "start" and threading.current_thread() is not threading.main_thread():
            elsewhere.append(f"generation {info['generation']} on {threading.current_thread().name}")

    enabled = gc.isenabled()
    gc.disable()
    gc.callbacks.append(heard)
    try:
        yield
    finally:
        gc.callbacks.remove(heard)
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                delattr(sys, name)
        gc.unfreeze()
        gc.collect()
        if enabled:
            gc.enable()
    assert not elsewhere, f"garbage collections off the GUI thread: {elsewhere}"
