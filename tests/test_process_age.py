"""The process age the app logs its start-up timings with: the time it has really run."""

from __future__ import annotations

import subprocess
import sys
import time

from app.process_age import process_age_s


def test_a_new_process_reports_the_time_since_it_was_started() -> None:
    code = "import time; time.sleep(0.3); from app.process_age import process_age_s; print(process_age_s())"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    elapsed = time.monotonic() - started
    age = float(done.stdout)
    # at least its own sleep; at most the time since the parent started it, give or take 2 clock ticks
    assert 0.3 <= age <= elapsed + 0.02, f"the child says {age:.3f} s; it was started {elapsed:.3f} s ago"


def test_the_age_grows_with_the_time_waited() -> None:
    before = process_age_s()
    time.sleep(0.2)
    assert 0.19 <= process_age_s() - before <= 1.0
