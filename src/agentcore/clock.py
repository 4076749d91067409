"""The injected clock: everything time-dependent takes one, tests move it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float:
        """Seconds since the epoch."""


#: The real clock: ``time.time`` itself (read on every rate-limited request and
#: authentication; a wrapping function would add a Python call to each).
system_clock: Clock = time.time


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
