"""A progress bar for bulk imports, on stderr, written here (no dependency for forty lines).

Quiet when stderr is not a terminal (a scheduled job's log should not fill with carriage
returns); redrawn at most ten times a second so it costs nothing measurable per row.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    WIDTH = 28
    INTERVAL = 0.1

    def __init__(
        self, total: int, *, label: str = "rows", stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.total = max(0, total)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled if enabled is not None else _is_terminal(self.stream)
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.enabled:
            now = time.monotonic()
            if now - self._last_draw >= self.INTERVAL:
                self._last_draw = now
                self.draw(now)

    def render(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            eta = _duration(left) if self.done < self.total else "0:00"
            counts = f"{self.done:,}/{self.total:,} {self.label} {fraction:4.0%}"
            return f"[{bar}] {counts}  {rate:,.0f} {self.label}/s  ETA {eta}"
        return f"{self.done:,} {self.label}  {rate:,.0f} {self.label}/s"

    def draw(self, now: float | None = None) -> None:
        self.stream.write("\r" + self.render(now) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self.enabled:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
