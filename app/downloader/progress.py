"""What a download looks like from outside: plain frozen values the GUI can pass across threads."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class FileProgress:
    path: str
    size: int | None  # None when the hub did not say
    done: int  # bytes on disk
    complete: bool  # verified and in place


@dataclass(frozen=True)
class DownloadSnapshot:
    job_id: int
    repo: str
    source: str
    dest: Path
    state: JobState
    revision: str | None  # the commit once known, else what was asked for
    files: tuple[FileProgress, ...]  # empty until the listing is in
    current_file: str | None
    done_bytes: int
    total_bytes: int  # of the files whose size is known
    speed_bps: float  # over the last few seconds
    eta_s: float | None  # None while the speed is unknown
    error: str | None  # why it failed

    @property
    def fraction(self) -> float | None:
        return self.done_bytes / self.total_bytes if self.total_bytes else None


class SpeedMeter:
    """Bytes per second over a sliding window, so a stall shows up within seconds."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, done_bytes: int) -> None:
        now = self.clock()
        self.samples.append((now, done_bytes))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def reset(self) -> None:
        self.samples.clear()

    def speed(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return max(b1 - b0, 0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self, remaining_bytes: int) -> float | None:
        speed = self.speed()
        return remaining_bytes / speed if speed > 0 else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
