"""Reads beside the PostgreSQL writer, on a connection of their own: positions, quarantined sources, totals, a ping.

The writer's connection is always inside a batch's transaction; these reads
use a second, autocommit connection (each statement sees what is committed),
shared by the threads that ask under a lock, and reconnected once when lost.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from mailhook.errors import RetryLater
from mailhook.models import FolderPosition
from mailhook.store.pg.connection import Connection, connect
from mailhook.store.pg.deliveries import POSITION
from mailhook.store.target import PostgresTarget

PING_TIMEOUT = 2.0
"""Seconds a health probe waits to connect, and (as statement_timeout) for its answer."""


class PgReads:
    """A small autocommit connection for the reads the doors and the status line make."""

    def __init__(self, target: PostgresTarget, *, connect_timeout: float = PING_TIMEOUT) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read; `RetryLater` ("database unreachable ...") when the server cannot answer."""
        with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                try:
                    conn = self._connection()
                    return conn.execute(sql, params).fetchall()
                except psycopg.Error as exc:
                    lost = not fresh and (self._conn is None or self._conn.closed or self._conn.broken)
                    self.close_locked()
                    if lost and attempt == 1:
                        continue  # a connection that went stale (server restarted): one new try
                    raise RetryLater(f"database unreachable: {self.target.scrub(_line(exc))}") from None
        raise AssertionError("unreachable")

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            try:
                conn = connect(self.target, connect_timeout=self.connect_timeout)
            except RetryLater as exc:  # said to HTTP clients by /healthz: the reason, not where the server is
                raise RetryLater("database unreachable: " + str(exc).split("): ", 1)[-1]) from None
            conn.autocommit = True
            conn.execute(f"SET statement_timeout = {int(PING_TIMEOUT * 1000)}")
            self._conn = conn
        return self._conn

    def ping(self) -> str | None:
        """Return why the database cannot be reached or written now, or None when it answers as a primary."""
        try:
            row = self.query("SELECT current_setting('transaction_read_only')")
        except RetryLater as exc:
            return str(exc)
        if row and row[0][0] == "on":
            return "database read-only: a standby, not the primary"
        return None

    def position(self, account: str, folder: str) -> FolderPosition | None:
        """Return the committed IMAP position of `folder` of `account`."""
        found = self.query(POSITION, (account, folder))
        return FolderPosition(account, folder, found[0][0], found[0][1]) if found else None

    def quarantined_sources(self, sources: Sequence[str]) -> set[str]:
        """Return which of `sources` (deliveries.source) are stored and still quarantined."""
        if not sources:
            return set()
        found = self.query("SELECT source FROM deliveries WHERE status = 'quarantined'"
                           " AND source IN (SELECT jsonb_array_elements_text(%s::jsonb))", (json.dumps(list(sources)),))
        return {row[0] for row in found}

    def totals(self) -> tuple[int, int, int]:
        """Return how many deliveries the database holds, how many are quarantined, and how many events."""
        found = self.query("SELECT (SELECT count(*) FROM deliveries),"
                           " (SELECT count(*) FROM deliveries WHERE status = 'quarantined'),"
                           " (SELECT count(*) FROM events)")
        deliveries, quarantined, events = found[0]
        return int(deliveries), int(quarantined), int(events)

    def close(self) -> None:
        """Close the connection, if open."""
        with self._lock:
            self.close_locked()

    def close_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
