"""Speed over a sliding window, and the time left at that speed."""

from __future__ import annotations

from app.downloader.progress import SpeedMeter, human_bytes


def test_speed_and_eta_follow_the_recent_window() -> None:
    now = [0.0]
    meter = SpeedMeter(window_s=5.0, clock=lambda: now[0])
    assert meter.speed() == 0.0 and meter.eta(100) is None
    for second in range(11):  # 1 MB/s for ten seconds
        now[0] = float(second)
        meter.add(second * 1_000_000)
    assert meter.speed() == 1_000_000 and meter.eta(5_000_000) == 5.0
    for second in range(11, 17):  # then stalled: the speed drops to zero once the window has passed
        now[0] = float(second)
        meter.add(10_000_000)
    assert meter.speed() == 0.0 and meter.eta(1) is None


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (999, 1500, 3_000_000, 145_400_000_000)] == ["999 B", "1.5 KB", "3.0 MB",
                                                                                 "145.4 GB"]
