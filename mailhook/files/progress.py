"""`Progress`: the bar `mailhook ingest` draws on a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """A progress bar redrawn in place on stderr, only on a terminal: share of the input bytes, count, rate.

    Redrawn at most five times a second, so it costs nothing next to storing.
    """

    WIDTH = 30
    EVERY = 0.2

    def __init__(self, *, enabled: bool, total_bytes: int | None = None) -> None:
        self.enabled = enabled
        self.total = total_bytes
        self.count = 0
        self.bytes = 0
        self.started = self.drawn = time.monotonic()
        self.shown = False

    def tick(self, size: int = 0) -> None:
        self.count += 1
        self.bytes += size
        if self.enabled and self.count % 64 == 0 and (
            not self.shown or (now := time.monotonic()) - self.drawn >= self.EVERY
        ):
            now = time.monotonic()
            self.drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.started, 1e-9)
        text = f"{self.count:,} messages ({rate:,.0f}/s)"
        if self.total:
            share = min(self.bytes / self.total, 1.0)
            filled = int(share * self.WIDTH)
            text = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%} " + text
        print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)
        self.shown = True

    def done(self) -> None:
        if self.shown:
            # The summary line follows on the same line, replacing the bar.
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
