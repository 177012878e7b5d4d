"""Clocks for tests: the real one, moved on at will (``alfred_jobs.clock``'s port, injected through
``memory_deps(clock=...)``; never a module global patched)."""

from __future__ import annotations

from alfred_jobs.clock import SystemClock


class ShiftedClock(SystemClock):
    """The real clock plus ``offset`` seconds (``now`` and ``monotonic``): a test moves time on by
    raising ``offset``, and everything on this clock sees the same later time."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return super().now() + self.offset

    def monotonic(self) -> float:
        return super().monotonic() + self.offset


class RecordingSleepClock(SystemClock):
    """The real clock whose ``sleep`` only records how long it was asked to sleep."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
