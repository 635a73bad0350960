"""Qt runs offscreen in tests (CI has no display). After each test the garbage collector runs
here, on the GUI thread: Qt objects a test left in reference cycles would otherwise be freed by
a collection on whichever thread allocates next, an engine thread say, which crashes. A failed
test's frames (kept in sys.last_traceback for post-mortem debugging) hold its widgets too, so
they are let go first: held there, they were freed later, on another thread, and crashed the run."""

import gc
import os
import sys

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def collect_on_the_gui_thread():
    yield
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()
