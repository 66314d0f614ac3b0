"""What the pipeline, the doors and the server need of a store: the whole interface a backend implements.

`mailhook.store.writer.Writer` (SQLite, group commit) and
`mailhook.store.pg.writer.PgWriter` (PostgreSQL, the same group commit, for
several nodes) implement it; `mailhook.store.open.open_storage` picks one for
the configured database. The doors and the pipeline, typed against this
Protocol, do not know which. Two parts concern several nodes on one
database: a `Lease` keeps an IMAP folder's poller on one node at a time, and
a `PendingQueue` hands each `pending` delivery to one node's backlog. (The
admin commands and the reports still read the SQLite file directly.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailhook.models import Delivery, Extraction, FolderPosition, Receipt
from mailhook.store.rows import Completion, Rows


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    """A delivery as stored, read back for reprocessing (a `StoredRaw`, on either store)."""

    id: int
    kind: str
    raw: bytes
    status: str
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class PruneResult:
    """How many rows a prune deleted (or would delete)."""

    deliveries: int
    events: int
    attempts: int


class Lease(Protocol):
    """The right to poll one IMAP folder, held by at most one node at a time.

    On one node (SQLite) it is always granted; on a shared database a node
    that dies or loses the database loses it, and another node takes it.
    """

    def acquire(self) -> bool:
        """Try to take the lease without waiting; True when this node holds it now.

        Raises `RetryLater` when the database cannot be asked.
        """
        ...

    def held(self) -> bool:
        """Say whether this node still holds the lease (False once its database session is gone)."""
        ...

    def release(self) -> None:
        """Give the lease up (another node may take it at once)."""
        ...


class PendingQueue(Protocol):
    """The deliveries stored `pending`, handed out to the extraction backlog, each to one node at a time.

    `source` is what a worker process opens to read a claimed delivery's
    bytes (`store.reads.open_pending_reader`); `shared` says whether other
    nodes take from the same queue (then a node looks again now and then,
    for deliveries other nodes stored or left behind when they died).
    """

    @property
    def source(self) -> Path | str:
        """What a worker process opens to read claimed deliveries (a SQLite file, or PostgreSQL's conninfo)."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other nodes take from the same queue."""
        ...

    def claim(self, after: int, limit: int) -> list[tuple[int, int]]:
        """Claim up to `limit` pending deliveries after id `after`, oldest first: their (id, size).

        A delivery claimed here is not handed to another node until released
        (or until this node's database session ends). Raises `RetryLater`.
        """
        ...

    def release(self, ids: Sequence[int]) -> None:
        """Give claimed deliveries back (done, or to be tried again later)."""
        ...

    def count(self) -> int:
        """Return how many deliveries wait for their events, on every node; raises `RetryLater`."""
        ...

    def close(self) -> None:
        """Release every claim and the connection."""
        ...


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

    def lease(self, account: str, folder: str) -> Lease:
        """Return the lease that lets one node at a time poll `folder` of `account` (not yet taken)."""
        ...

    def pending_queue(self) -> PendingQueue:
        """Return a new queue of the deliveries stored `pending` (for the extraction backlog)."""
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
