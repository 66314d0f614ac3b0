"""The PostgreSQL write path: `PgStore.write` puts a batch in one transaction, as `store.write.Store` does.

The same semantics as the SQLite store (deliveries, events deduplicated by
`dedupe_key`, a repeated Message-ID stored as a duplicate, attempts, the
quarantine, `pending` deliveries and their completion, IMAP folder positions
in the same transaction as the deliveries they cover), made safe for several
nodes writing at once:

- an event is inserted `ON CONFLICT (dedupe_key) DO NOTHING RETURNING id`:
  of two nodes storing the same notification at the same instant, one
  inserts it and the other, once the first commits, counts a duplicate;
- before its first statement a batch takes transaction advisory locks on its
  Message-IDs and dedupe keys (hashed), in sorted order, so a Message-ID
  stored by another node moments ago is seen, and two batches holding the
  same notifications in different orders wait for each other instead of
  deadlocking;
- a connection lost before COMMIT is retried once on a new connection (nothing
  was committed); a deadlock or serialization failure is retried; any other
  storage failure raises `RetryLater` for the whole batch and the next batch
  reconnects, with capped exponential back-off between attempts;
- a batch that meets lock timeouts on every try first ends the sessions of
  nodes frozen in the middle of an exchange for `frozen.FROZEN_AFTER` seconds
  (whose locks no server timeout frees), and is then tried once more.

PostgreSQL's text cannot hold the NUL character, nor a lone surrogate (an
undecodable byte kept by `surrogateescape`): in text columns and payloads each
is stored as U+FFFD (the raw bytes, `bytea`, keep them). A delivery that
PostgreSQL still refuses (a value too long for an index, say) is not answered
with a temporary failure it would meet again on every retry: it is stored
quarantined with its raw bytes and the refusal as its `error`, so it is
acknowledged, kept, and can be reprocessed (docs/security.md, "PostgreSQL store").
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

import psycopg
from psycopg import errors as pg_errors

from mailhook.backoff import Backoff
from mailhook.errors import RetryLater
from mailhook.models import Delivery, FolderPosition, Receipt, Status, utcnow
from mailhook.store.pg import deliveries
from mailhook.store.pg.connection import Connection
from mailhook.store.pg.event_rows import insert_events
from mailhook.store.pg.frozen import FROZEN_AFTER, end_frozen
from mailhook.store.pg.keys import First, first_deliveries, lock_keys
from mailhook.store.pg.lease import fence, passed
from mailhook.store.pg.session import LOCK_WAIT
from mailhook.store.pg.text import clean
from mailhook.store.pg.upkeep import Upkeep
from mailhook.store.rows import Completion, Rows, Work, delivery_status, rows
from mailhook.store.target import PostgresTarget

log = logging.getLogger("mailhook.store")

RETRIES = 3

# One delivery's error that fails (or quarantines) only that delivery; anything else fails the batch.
# ProgramLimitExceeded (class 54: an index row or a tsvector too large) is the item's own values, never the server's
# state: it is an OperationalError in psycopg, which the batch would otherwise meet as "storage unavailable".
_ITEM_ERRORS = (psycopg.IntegrityError, psycopg.DataError, pg_errors.ProgramLimitExceeded, ValueError, OverflowError)
# Failures after which the same batch, tried again at once, should succeed.
_TRANSIENT = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.LockNotAvailable)


class _Redo(Exception):
    """An item failed in a batch written without savepoints: write the batch again with them."""


class PgStore(Upkeep):
    """Writes deliveries and their events to PostgreSQL on one connection, one transaction per batch."""

    def __init__(self, target: PostgresTarget, *, phone_region: str = "US", connect_timeout: float = 10.0,
                 backoff: Backoff | None = None, lock_wait: float = LOCK_WAIT,
                 frozen_after: float = FROZEN_AFTER) -> None:
        self.frozen_after = frozen_after
        self.phone_region = phone_region
        # The batch under way: each Message-ID's first delivery, and those the current item added.
        self._first: dict[str, First] = {}
        self._added: list[str] = []
        super().__init__(target, connect_timeout=connect_timeout, backoff=backoff, lock_wait=lock_wait)

    # -- writing -------------------------------------------------------------------------------

    def write(self, items: Sequence[Work]) -> list[Receipt | Exception]:
        """Store a batch in one transaction; return each item's receipt or its own error.

        As `Store.write`: a storage failure raises `RetryLater` for the whole
        batch (and nothing of it is committed); an error confined to one item
        fails only that item. Receipts are returned only after COMMIT returned.
        """
        retried = 0
        ended = False
        fresh = self.conn is None or self.conn.closed
        found = [_prepare(item) for item in items]
        # Without a savepoint per item (two round trips each) unless an item fails: then the batch is
        # rolled back and written again, each item in its own savepoint.
        careful = False
        while True:
            conn = self.connection()
            committing = False
            try:
                with conn.transaction():
                    fence(conn, [item[0].position for item in items
                                 if not isinstance(item, Completion) and item[0].position is not None])
                    lock_keys(conn, found)
                    self._first = first_deliveries(conn, found)
                    results = [self._write_item(conn, item, rows, careful=careful)
                               for item, rows in zip(items, found, strict=True)]
                    committing = True
                return results
            except _Redo:
                careful = True
                continue
            except _TRANSIENT as exc:
                retried += 1
                if retried > RETRIES:
                    # Locks that outlast every try may be a frozen node's (frozen.py): ended, the batch has one more.
                    if isinstance(exc, pg_errors.LockNotAvailable) and not ended and self._end_frozen(conn):
                        ended = True
                        continue
                    raise RetryLater(f"storage busy: {self._words(exc)}") from None
                log.info("batch retried after %s", type(exc).__name__)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                lost = conn.closed or conn.broken
                if lost:
                    self._lost()
                # A connection lost before COMMIT committed nothing: try once more on a new one.
                if lost and not committing and not fresh and retried == 0:
                    retried += 1
                    fresh = True
                    log.info("database connection lost (%s); reconnecting", self._words(exc))
                    continue
                if lost:
                    self._retry_at = time.monotonic() + self.backoff.next()
                    self._last_error = self._words(exc)
                    raise RetryLater(f"database unreachable ({self.target}): {self._words(exc)}") from None
                raise RetryLater(f"storage unavailable: {self._words(exc)}") from None
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    self._lost()
                raise RetryLater(f"storage unavailable: {self._words(exc)}") from None

    def _end_frozen(self, conn: Connection) -> int:
        """End the sessions of nodes frozen mid-exchange (`frozen.end_frozen`); 0 when that fails too."""
        try:
            return end_frozen(conn, after=self.frozen_after)
        except psycopg.Error as exc:
            log.info("could not look for frozen sessions: %s", self._words(exc))
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            return 0

    def _write_item(self, conn: Connection, item: Work, found: Rows | Exception | None, *,
                    careful: bool) -> Receipt | Exception:
        if isinstance(found, Exception):  # failed before any statement: nothing to undo
            return self._failed(conn, item, found)
        added = self._added = []
        try:
            if not careful:
                return self._write_item_now(conn, item, found)
            with conn.transaction():  # a savepoint: this item's failure leaves the others
                return self._write_item_now(conn, item, found)
        except _ITEM_ERRORS as exc:
            if not careful:
                raise _Redo from exc
            for message_id in added:  # rolled back: the batch has not stored it after all
                self._first.pop(message_id, None)
            return self._failed(conn, item, exc)

    def _write_item_now(self, conn: Connection, item: Work, found: Rows | None) -> Receipt:
        if isinstance(item, Completion):
            return self._complete(conn, item)
        return self._write_one(conn, item[0], found)

    def _failed(self, conn: Connection, item: Work, exc: Exception) -> Receipt | Exception:
        """Answer an item that could not be stored: a pending delivery is quarantined (kept), anything else fails."""
        if isinstance(item, Completion):
            kept = self._quarantine(conn, item.delivery_id, exc)
            if kept is not None:
                return kept
        else:
            kept = self._keep(conn, item[0], exc)
            if kept is not None:
                return kept
        log.error("delivery could not be stored: %s", exc)
        return exc

    def _keep(self, conn: Connection, delivery: Delivery, exc: Exception) -> Receipt | None:
        """Store a delivery PostgreSQL refused as it came, quarantined with the refusal; None if that fails too.

        A temporary failure instead would be met again on every retry (a 451
        or 503 loop): what SQLite would have stored must at least be kept here.
        """
        words = self._words(exc)
        words = words if len(words) <= 300 else words[:300] + "..."  # a driver's message may quote the whole value
        reason = f"not stored on PostgreSQL: {words}; raw bytes kept, events not stored"
        try:
            with conn.transaction():
                now = utcnow()
                delivery_id = self._insert_delivery(conn, delivery, delivery.sha256, now, "quarantined",
                                                    Rows(reason, None, None, None, ()), delivery.raw)
                position = delivery.position
                if position is not None:  # kept, so the folder moves past it: the poller must not fetch it again
                    deliveries.advance(conn, position, now)
        except _ITEM_ERRORS as again:
            log.error("delivery could not be kept either: %s", again)
            return None
        log.error("delivery %d quarantined: %s", delivery_id, reason)
        return Receipt(delivery_id, "quarantined", error=reason)

    def _write_one(self, conn: Connection, delivery: Delivery, found: Rows | None) -> Receipt:
        """Store one delivery with its rows (bounded already), or pending when it has none yet."""
        now = utcnow()
        sha256 = delivery.sha256
        if found is None:
            return Receipt(self._insert_delivery(conn, delivery, sha256, now, "pending", None, delivery.raw), "pending")
        if delivery.position is not None and (stored := passed(conn, delivery.position, delivery.source)):
            return stored  # another poller of the folder stored it already (mailhook.store.pg.lease)
        seen, same_bytes = self._seen(conn, found.message_id, sha256, None)
        delivery_id = self._insert_delivery(conn, delivery, sha256, now, "quarantined" if found.reason else "stored",
                                            found, None if same_bytes else delivery.raw)
        return self._finish(conn, delivery_id, now, found, seen=seen, position=delivery.position)

    def _complete(self, conn: Connection, completion: Completion) -> Receipt:
        delivery_id = completion.delivery_id
        found = completion.extraction
        if not isinstance(found, Rows):
            row = conn.execute("SELECT size FROM deliveries WHERE id = %s", (delivery_id,)).fetchone()
            found = rows(found, row[0] if row else 0)
        seen, same_bytes = self._seen(conn, found.message_id, completion.sha256, delivery_id)
        row = conn.execute(
            "UPDATE deliveries SET error = %s, message_id = %s, subject = %s, notes = %s,"
            " raw = CASE WHEN %s THEN NULL ELSE raw END WHERE id = %s AND status = 'pending' RETURNING received_at",
            (clean(found.reason), clean(found.message_id), clean(found.subject), clean(found.notes), same_bytes,
             delivery_id),
        ).fetchone()
        if row is None:
            current = conn.execute(
                "SELECT status, error, message_id FROM deliveries WHERE id = %s", (delivery_id,)
            ).fetchone()
            if current is None:
                raise ValueError(f"delivery {delivery_id} no longer exists")
            return Receipt(delivery_id, current[0], error=current[1], message_id=current[2])
        if found.message_id:
            self._stored_first(clean(found.message_id), delivery_id, completion.sha256)
        return self._finish(conn, delivery_id, row[0], found, seen=seen, position=None)

    def _quarantine(self, conn: Connection, delivery_id: int, exc: Exception) -> Receipt | None:
        reason = f"events could not be stored: {exc}"
        done = conn.execute(
            "UPDATE deliveries SET status = 'quarantined', error = %s WHERE id = %s AND status = 'pending'",
            (clean(reason), delivery_id),
        ).rowcount
        if not done:
            return None
        log.error("delivery %d quarantined: %s", delivery_id, reason)
        return Receipt(delivery_id, "quarantined", error=reason)

    def _seen(self, conn: Connection, message_id: str | None, sha256: str, own_id: int | None) -> tuple[bool, bool]:
        """Say whether another delivery has this Message-ID, and whether the first one has these exact bytes.

        From the batch's first deliveries (`keys.first_deliveries`, kept current as
        the batch stores more); the database is asked only when the first one
        is the delivery itself.
        """
        if not message_id:
            return False, False
        first = self._first.get(clean(message_id))
        if first is None or first[0] != own_id:
            return first is not None, first is not None and first[1] == sha256
        return deliveries.seen(conn, message_id, sha256, own_id)

    def _insert_delivery(self, conn: Connection, delivery: Delivery, sha256: str, now: str, status: Status,
                         found: Rows | None, raw: bytes | None) -> int:
        delivery_id = deliveries.insert_delivery(conn, delivery, sha256, now, status, found, raw)
        if found is not None and found.message_id:
            self._stored_first(clean(found.message_id), delivery_id, sha256)
        return delivery_id

    def _stored_first(self, message_id: str, delivery_id: int, sha256: str) -> None:
        """Note a delivery this batch stored with a Message-ID, if it is that Message-ID's first."""
        if message_id not in self._first:
            self._first[message_id] = (delivery_id, sha256)
            self._added.append(message_id)

    def _finish(self, conn: Connection, delivery_id: int, now: str, found: Rows, *, seen: bool,
                position: FolderPosition | None) -> Receipt:
        new, duplicates, types = insert_events(conn, delivery_id, now, found, region=self.phone_region)
        status = delivery_status(found, seen=seen, new=new, duplicates=duplicates)
        conn.execute("UPDATE deliveries SET status = %s, event_count = %s, duplicate_count = %s WHERE id = %s",
                     (status, new, duplicates, delivery_id))
        if position is not None:
            deliveries.advance(conn, position, now)
        return Receipt(delivery_id, status, new, duplicates, found.reason, found.message_id, types)

    # -- reads on the writer's connection --------------------------------------------------------

    def position(self, account: str, folder: str) -> FolderPosition | None:
        """Return how far `folder` of `account` has been stored, if at all (a committed read)."""
        conn = self.connection()
        try:
            stored = deliveries.position(conn, account, folder)
            conn.rollback()
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._lost()
            raise RetryLater(f"storage unavailable: {self._words(exc)}") from None
        return stored


def _prepare(item: Work) -> Rows | Exception | None:
    """Return the rows an item stores (None: a delivery stored pending), or the error that fails it alone.

    A completion's rows are bounded when written (by the size stored); here they only name its keys.
    """
    try:
        if isinstance(item, Completion):
            return item.extraction if isinstance(item.extraction, Rows) else rows(item.extraction)
        delivery, extraction = item
        if extraction is None:
            return None
        # Rows holding a lone surrogate (a JSON `"\udc80"` escape) come back mended, as every store holds them.
        return rows(extraction, len(delivery.raw))
    except _ITEM_ERRORS as exc:
        return exc

