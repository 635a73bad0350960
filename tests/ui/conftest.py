"""Qt runs offscreen in tests (CI has no display). After each test the garbage collector runs
here, on the GUI thread: Qt objects a test left in reference cycles would otherwise be freed by
a collection on whichever thread allocates next, an engine thread say, which crashes."""

import gc
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def collect_on_the_gui_thread():
    yield
    gc.collect()
