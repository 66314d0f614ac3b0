"""Capped exponential back-off, shared by the IMAP door's reconnects and the backlog's retries."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """Capped exponential delays: first * 2**failures up to `cap`, each within [half, all] of it with `jitter`."""

    first: float
    cap: float
    failures: int = 0
    # Many IMAP clients reconnecting at once spread out; the backlog's single loop needs no spreading.
    jitter: bool = True

    def upcoming(self) -> float:
        """Return the delay the next `next()` is based on (before jitter), without counting a failure."""
        return min(self.cap, self.first * 2.0 ** min(self.failures, 32))

    def next(self) -> float:
        """Return the delay before the next attempt and count one more failure."""
        delay = self.upcoming()
        self.failures += 1
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def reset(self) -> None:
        """Start again from the first delay after a success."""
        self.failures = 0
