"""The daemon's one clock: wall time plus an offset that only tests move.

Everything that stamps or compares times (tiers, the store, TTL, usage) takes this callable, so a
test can jump hours ahead without sleeping. The offset moves only through the Admin AdvanceClock RPC,
which the daemon refuses unless it was started with `admin.debug_clock = true` -- a TEST-ONLY setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self._base = base
        self.offset = 0.0
        self.on_advance: list[Callable[[float], None]] = []  # told the new offset (the shm catalog's readers)

    def __call__(self) -> float:
        return self._base() + self.offset

    def advance(self, seconds: float) -> float:
        """Move forward (never back: expiry and token-hours assume time does not run backwards)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds
        for tell in self.on_advance:
            tell(self.offset)
        return self()
