"""Wall-clock seconds per stage of a run (the demos' and the comparison's ``wall_seconds``)."""

from __future__ import annotations

import time


class Laps:
    """Wall seconds per stage: ``lap(name)`` records the time since the previous call (or creation) under ``name``."""

    def __init__(self):
        self.walls: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.walls[name] = round(now - self._clock, 2)
        self._clock = now
