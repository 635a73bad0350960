"""Qt runs offscreen in tests (CI has no display)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
