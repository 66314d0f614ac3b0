"""The PostgreSQL store's connection and its upkeep: opened and migrated at start, reopened after a loss, probed.

As `store.upkeep.Upkeep` is for `store.write.Store`: what `PgStore` does on its
connection besides writing. A lost connection is reopened by the next batch no
sooner than the capped exponential back-off allows (`write`).
"""

from __future__ import annotations

import contextlib
import logging
import time

import psycopg

from mailhook.backoff import Backoff
from mailhook.errors import RetryLater
from mailhook.store.pg.connection import Connection, connect, migrate
from mailhook.store.pg.session import LOCK_WAIT, bound_transactions
from mailhook.store.target import PostgresTarget
from mailhook.store.write import WalCheckpoint

log = logging.getLogger("mailhook.store")


class Upkeep:
    """One connection to PostgreSQL, reconnected with back-off, and the probes asked on it."""

    def __init__(self, target: PostgresTarget, *, connect_timeout: float = 10.0, backoff: Backoff | None = None,
                 lock_wait: float = LOCK_WAIT) -> None:
        self.target = target
        self.lock_wait = lock_wait
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff(0.25, 10.0)
        self._retry_at = 0.0
        self._last_error = ""
        # Connect and migrate now: a node that cannot reach its database at start says so at once (and `serve`
        # tries again), one whose settings the server refuses stops (ConfigError).
        self.conn: Connection | None = connect(target, connect_timeout=connect_timeout, strict=True)
        try:
            bound_transactions(self.conn, lock_wait=lock_wait)
            migrate(self.conn)
        except psycopg.Error as exc:
            self.conn.close()
            raise RetryLater(f"database unreachable ({target}): {self._words(exc)}") from None

    def connection(self) -> Connection:
        """Return the open connection, reconnecting (no sooner than the back-off allows) when it was lost."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        self.conn = None
        now = time.monotonic()
        if now < self._retry_at:
            raise RetryLater(f"database unreachable ({self.target}): {self._last_error}")
        try:
            conn = connect(self.target, connect_timeout=self.connect_timeout)
            bound_transactions(conn, lock_wait=self.lock_wait)
            migrate(conn)
        except (RetryLater, psycopg.Error) as exc:
            self._last_error = exc.args[0].split("): ", 1)[-1] if isinstance(exc, RetryLater) else self._words(exc)
            self._retry_at = time.monotonic() + self.backoff.next()
            raise RetryLater(f"database unreachable ({self.target}): {self._last_error}") from None
        self.backoff.reset()
        self._retry_at = 0.0
        log.info("connected to the database %s", self.target)
        self.conn = conn
        return conn

    @property
    def reachable(self) -> bool:
        """Say whether the store holds a live connection (not whether the server still answers)."""
        return self.conn is not None and not self.conn.closed

    def _lost(self) -> None:
        """Forget a connection that failed; the next batch reconnects."""
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    def _words(self, exc: BaseException) -> str:
        text = str(exc).strip()
        return self.target.scrub(text.splitlines()[0] if text else type(exc).__name__)

    def close(self) -> None:
        """Close the connection."""
        self._lost()

    def retry_now(self) -> None:
        """Let the next batch reconnect at once (a health probe just reached the server)."""
        self._retry_at = 0.0

    def checkpoint_wal(self) -> WalCheckpoint:
        """Do nothing: the server manages its own WAL (the SQLite writer's periodic checkpoint has no work here)."""
        return WalCheckpoint(busy=False, frames=0, copied=0, truncated=False)

    def check_writable(self) -> None:
        """Raise `RetryLater` unless the database takes writes now (reachable, and not a read-only standby)."""
        conn = self.connection()
        try:
            row = conn.execute("SELECT current_setting('transaction_read_only')").fetchone()
            conn.rollback()
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._lost()
            raise RetryLater(f"database unreachable ({self.target}): {self._words(exc)}") from None
        if row is not None and row[0] == "on":
            raise RetryLater(f"database read-only ({self.target}): a standby, not the primary")

