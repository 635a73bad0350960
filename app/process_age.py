"""How long this process has been running, for the start-up timings the app logs and self-tests.

psutil's ``create_time()`` on Linux adds the start tick to the boot time from ``/proc/stat``, which is
whole seconds: the age it gives is too large by the boot time's lost fraction, up to a second, fixed for
the machine's uptime. Linux's own clocks give it to a clock tick (10 ms): the start tick counts from
boot on the same clock as ``CLOCK_BOOTTIME``.
"""

from __future__ import annotations

import os
import sys
import time


def _linux_start_s() -> float:
    """The process's start on the CLOCK_BOOTTIME clock (to a clock tick, 10 ms)."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # the name in brackets may hold spaces
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the whole line: starttime


def process_age_s() -> float:
    """Seconds since this process started."""
    if sys.platform.startswith("linux"):
        return time.clock_gettime(time.CLOCK_BOOTTIME) - _linux_start_s()
    import psutil  # Windows and macOS keep the start time to the sub-second

    return time.time() - psutil.Process().create_time()
