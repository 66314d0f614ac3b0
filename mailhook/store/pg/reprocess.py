"""`mailhook reprocess` on PostgreSQL: read stored raw deliveries back, and store what a new extraction finds.

The same as `Store.stored_deliveries` and `Store.reextract` on SQLite: events
already stored (by dedupe key) are left alone, new ones are added to the
delivery they came in, and the delivery's status and counts are updated, one
transaction per delivery, beside running nodes. A transaction PostgreSQL
aborts for a deadlock with a node's (the figure triggers lock campaigns and
pairs of numbers) is retried.

No wait is unbounded: a statement waits for another session's lock at most
`storage.busy_timeout` (`lock_timeout`), the delivery is tried `RETRIES`
times in all, and then the command stops with `RetryLater` (exit 75) naming
the delivery; a rerun carries on (what was added is not added twice). The
session's idle-in-transaction timeout lets the server roll back a transaction
this command left open if it is itself stopped; and every statement is one
exchange (attempts in multi-row INSERTs, never a pipeline), so a command
frozen mid-transaction is idle in it, not "active", once its last statement was
answered (docs/scaling.md, "A node that freezes").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors

from mailhook.errors import RetryLater
from mailhook.models import Extraction, Receipt, Status, stored_kind, utcnow
from mailhook.store.interface import StoredDelivery
from mailhook.store.pg.connection import open_database
from mailhook.store.pg.event_rows import insert_events
from mailhook.store.pg.session import bound_transactions
from mailhook.store.pg.text import clean
from mailhook.store.rows import rows
from mailhook.store.target import PostgresTarget

log = logging.getLogger("mailhook.store")

RETRIES = 3


class ReprocessStore:
    """Reads stored deliveries back and adds what a new extraction finds, on PostgreSQL."""

    def __init__(self, target: PostgresTarget, *, busy_timeout: float = 5.0, phone_region: str = "US",
                 **_: Any) -> None:
        self.target = target
        self.phone_region = phone_region
        self.busy_timeout = busy_timeout
        self.conn = open_database(target, connect_timeout=max(busy_timeout, 1.0))
        self.conn.autocommit = True  # each `transaction()` below commits on its own
        try:
            bound_transactions(self.conn, lock_wait=busy_timeout)
        except psycopg.Error as exc:
            self.conn.close()
            raise RetryLater(f"database {target}: {target.scrub(str(exc).strip())}") from None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def stored_deliveries(self, *, quarantined_only: bool) -> Iterator[StoredDelivery]:
        """Yield stored deliveries that still hold their raw bytes, oldest first, 500 per read."""
        where = "raw IS NOT NULL" + (" AND status = 'quarantined'" if quarantined_only else "")
        last = 0
        while True:
            try:
                with self.conn.transaction():
                    found = self.conn.execute(
                        f"SELECT id, channel, raw, status, content_type FROM deliveries WHERE {where} AND id > %s"
                        " ORDER BY id LIMIT 500", (last,)).fetchall()
            except psycopg.OperationalError as exc:
                raise RetryLater(f"database {self.target}: {self.target.scrub(str(exc).strip())}") from None
            if not found:
                return
            for id_, channel, raw, status, content_type in found:
                last = id_
                yield StoredDelivery(id_, stored_kind(channel, bytes(raw)), bytes(raw), status, content_type)

    def reextract(self, delivery_id: int, extraction: Extraction, size: int | None = None) -> Receipt:
        """Add the events a new extraction finds for a stored delivery (of `size` raw bytes) and update its status."""
        for attempt in range(RETRIES):
            try:
                return self._reextract(delivery_id, extraction, size)
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == RETRIES - 1:
                    raise RetryLater(f"delivery {delivery_id}: deadlocked with other writers {RETRIES} times") from None
                log.debug("delivery %d: deadlock with another writer, retrying", delivery_id)
            except errors.LockNotAvailable:
                if attempt == RETRIES - 1:
                    raise RetryLater(
                        f"delivery {delivery_id}: another session held a lock it needs {RETRIES} times for"
                        f" {self.busy_timeout:g} s (storage.busy_timeout; a node frozen in the middle of a batch,"
                        " or a long transaction: see docs/scaling.md, \"A node that freezes\"); rerun reprocess"
                        " later, it carries on where it stopped") from None
                log.warning("delivery %d: another session held a lock for %g s; trying again (%d of %d)",
                            delivery_id, self.busy_timeout, attempt + 2, RETRIES)
            except psycopg.OperationalError as exc:
                raise RetryLater(f"database {self.target}: {self.target.scrub(str(exc).strip())}") from None
        raise AssertionError("unreachable")

    def _reextract(self, delivery_id: int, extraction: Extraction, size: int | None) -> Receipt:
        conn = self.conn
        with conn.transaction():
            now = utcnow()
            found = rows(extraction, size)
            new, duplicates, types = insert_events(conn, delivery_id, now, found, region=self.phone_region)
            row = conn.execute("SELECT status, event_count FROM deliveries WHERE id = %s FOR UPDATE",
                               (delivery_id,)).fetchone()
            assert row is not None
            old_status, old_new = row
            status: Status
            if found.reason:
                status, error = ("duplicate" if old_status == "duplicate" else "quarantined"), found.reason
            else:
                status, error = ("stored" if new or old_new else "duplicate"), None
            conn.execute(
                "UPDATE deliveries SET status = %s, error = %s, notes = %s, event_count = event_count + %s,"
                " duplicate_count = %s WHERE id = %s",
                (status, clean(error), clean("\n".join(extraction.notes) or None), new, duplicates, delivery_id),
            )
        return Receipt(delivery_id, status, new, duplicates, found.reason, event_types=types)
