"""What the pipeline, the doors and the server need of a store: the whole interface a backend implements.

`mailhook.store.writer.Writer` (SQLite, group commit) and
`mailhook.store.pg.writer.PgWriter` (PostgreSQL, the same group commit, for
several nodes) implement it; `mailhook.store.open.open_storage` picks one for
the configured database. The doors and the pipeline, typed against this
Protocol, do not know which. (The backlog, the admin commands and the reports
still read the SQLite file directly.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Protocol

from mailhook.models import Delivery, Extraction, FolderPosition, Receipt
from mailhook.store.rows import Completion, Rows


class Storage(Protocol):
    """Stores deliveries durably, each with its events, and answers the few reads the doors need."""

    def submit(self, delivery: Delivery, extraction: Extraction | Rows | None) -> Future[Receipt]:
        """Store `delivery` with its extraction (None: raw bytes only, as `pending`); resolves once durable.

        The future raises `RetryLater` when the store cannot take it now.
        """
        ...

    def complete(self, completion: Completion) -> Future[Receipt]:
        """Store the events of a delivery stored `pending` before, and its final status."""
        ...

    def health(self) -> str | None:
        """Return why the store refuses writes now ("disk full", ...), or None when it takes them."""
        ...

    def committed_position(self, account: str, folder: str) -> FolderPosition | None:
        """Return how far an IMAP folder's messages are durably stored (the IMAP door resumes there)."""
        ...

    def quarantined_sources(self, sources: Sequence[str]) -> set[str]:
        """Return which of these IMAP message sources were stored quarantined."""
        ...

    def totals(self) -> tuple[int, int, int]:
        """Return how many deliveries the database holds, how many are quarantined, and how many events (blocking)."""
        ...

    @property
    def depth(self) -> int:
        """Return how many deliveries wait for the next commit."""
        ...

    @property
    def alive(self) -> bool:
        """Say whether the store still commits (its writer thread runs)."""
        ...

    def close(self) -> None:
        """Finish what is queued and release the store."""
        ...


class StoredRaw(Protocol):
    """A stored delivery's raw bytes, read back for `mailhook reprocess`."""

    @property
    def id(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def raw(self) -> bytes: ...

    @property
    def content_type(self) -> str | None: ...


class Rereading(Protocol):
    """What `mailhook reprocess` needs of a store (SQLite's `Store`, PostgreSQL's `ReprocessStore`)."""

    def stored_deliveries(self, *, quarantined_only: bool) -> Iterator[StoredRaw]:
        """Yield stored deliveries that still hold their raw bytes, oldest first."""
        ...

    def reextract(self, delivery_id: int, extraction: Extraction, size: int | None = None) -> Receipt:
        """Add the events a new extraction finds for a stored delivery and update its status."""
        ...
