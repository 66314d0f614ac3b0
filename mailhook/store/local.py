"""One node's lease and pending queue (SQLite): a single node shares its work with no one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mailhook.store.reads import PendingReader, pending_count


class SoleLease:
    """An IMAP folder's lease on a database only one node writes: always granted, never lost."""

    def acquire(self) -> bool:
        """Take the lease: always granted."""
        return True

    def held(self) -> bool:
        """Say that the lease is held: nothing can take it away."""
        return True

    def release(self) -> None:
        """Give the lease up: nothing to do."""


class LocalPendingQueue:
    """The pending deliveries of one SQLite file, read in id order on a read-only connection of its own."""

    shared = False

    def __init__(self, path: Path) -> None:
        self.source: Path | str = path
        self._reader = PendingReader(path)

    def claim(self, after: int, limit: int) -> list[tuple[int, int]]:
        """Return the next pending deliveries after `after` (no other node takes them: nothing to claim)."""
        return self._reader.ids(after, limit)

    def release(self, ids: Sequence[int]) -> None:
        """Nothing to release on a single node."""

    def count(self) -> int:
        """Return how many deliveries are stored `pending`."""
        return pending_count(self._reader.path)

    def close(self) -> None:
        """Close the read-only connection."""
        self._reader.close()
