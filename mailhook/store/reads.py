"""Reads beside the writer: pending deliveries for the backlog, totals, IMAP folder positions, quarantined sources."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mailhook.errors import RetryLater
from mailhook.models import Delivery, FolderPosition, stored_kind
from mailhook.store.connection import connect

log = logging.getLogger("mailhook.store")


class Reader(Protocol):
    """Reads claimed pending deliveries back, as received (in a worker process too)."""

    def read(self, ids: Sequence[int]) -> list[tuple[int, Delivery]]:
        """Read back the deliveries among `ids` that are still pending; `RetryLater` if unreadable."""
        ...

    def close(self) -> None:
        """Close the connection, if open."""
        ...


def open_pending_reader(source: Path | str) -> Reader:
    """Return a reader of pending deliveries for a queue's `source`: a SQLite file's Path, or PostgreSQL's conninfo."""
    if isinstance(source, str):
        from mailhook.store.pg.pending import PgPendingReader  # psycopg is an optional extra

        return PgPendingReader(source)
    return PendingReader(source)


class PendingReader:
    """Reads deliveries stored `pending` on a read-only connection of its own, for the extraction backlog."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def ids(self, after: int, limit: int) -> list[tuple[int, int]]:
        """Return the ids and sizes of pending deliveries after id `after`, oldest first; `RetryLater` if unreadable."""
        return [(row[0], row[1]) for row in self._query(
            "SELECT id, size FROM deliveries WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?", (after, limit)
        )]

    def read(self, ids: Sequence[int]) -> list[tuple[int, Delivery]]:
        """Read back the deliveries among `ids` that are still pending, as received; `RetryLater` if unreadable."""
        found = self._query(
            "SELECT id, channel, received_at, raw, envelope_from, envelope_to, remote_addr, content_type, source"
            " FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) AND status = 'pending' ORDER BY id",
            (json.dumps(list(ids)),),
        )
        return [
            (id_, Delivery(channel=channel, raw=raw, received_at=received_at, kind=stored_kind(channel, raw),
                           envelope_from=sender, envelope_to=tuple(json.loads(to)) if to else (),
                           remote_addr=peer, content_type=content_type, source=source))
            for id_, channel, received_at, raw, sender, to, peer, content_type, source in found
            if raw is not None
        ]

    def close(self) -> None:
        """Close the connection, if open."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            if self._conn is None:
                self._conn = connect(self.path, readonly=True)
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self.close()
            raise RetryLater(f"storage unavailable: {exc}") from exc


def _read_once(path: str | Path, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Run one query on a read-only connection of its own, apart from any open write transaction."""
    conn = connect(path, readonly=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def pending_count(path: str | Path) -> int:
    """Return how many deliveries are stored `pending`."""
    try:
        count: int = _read_once(path, "SELECT count(*) FROM deliveries WHERE status = 'pending'")[0][0]
    except sqlite3.Error as exc:
        raise RetryLater(f"storage unavailable: {exc}") from exc
    return count


def totals(path: str | Path) -> tuple[int, int, int]:
    """Return how many deliveries the database holds, how many of them are quarantined, and how many events."""
    try:
        found = _read_once(path, "SELECT (SELECT count(*) FROM deliveries),"
                           " (SELECT count(*) FROM deliveries WHERE status = 'quarantined'),"
                           " (SELECT count(*) FROM events)")
    except sqlite3.Error as exc:
        raise RetryLater(f"storage unavailable: {exc}") from exc
    deliveries, quarantined, events = found[0]
    return deliveries, quarantined, events


def committed_position(path: str | Path, account: str, folder: str) -> FolderPosition | None:
    """Return the committed IMAP position (UIDVALIDITY, last UID) of `folder` (table imap_checkpoints)."""
    found = _read_once(
        path, "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE account = ? AND folder = ?", (account, folder)
    )
    return FolderPosition(account, folder, found[0][0], found[0][1]) if found else None


def quarantined_sources(path: str | Path, sources: Sequence[str]) -> set[str]:
    """Return which of `sources` (deliveries.source) are stored and still quarantined."""
    if not sources:
        return set()
    found = _read_once(
        path,
        f"SELECT source FROM deliveries WHERE status = 'quarantined' AND source IN ({', '.join('?' * len(sources))})",
        tuple(sources),
    )
    return {row[0] for row in found}
