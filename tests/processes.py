"""Killing a real process at a chosen moment, for the tests that check what survives a kill -9."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kill_after_marker(args: list[str], marker: str, then_s: float, env: dict | None = None,
                      marker_timeout_s: float = 180.0) -> None:
    """Runs ``args`` from the repository root, waits for it to print ``marker``, lets it go on for
    ``then_s`` seconds, then kills it (SIGKILL: nothing gets to clean up or flush). A process that
    never prints the marker is killed after ``marker_timeout_s``, failing the test instead of hanging it."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    deadline = threading.Timer(marker_timeout_s, proc.kill)
    deadline.start()
    try:
        line = proc.stdout.readline().strip()
        deadline.cancel()
        assert line == marker, f"expected {marker!r} within {marker_timeout_s:.0f} s, got {line!r}"
        time.sleep(then_s)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
