"""The write path: `Store.write` puts a batch of deliveries and their events in one durable transaction."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from mailhook.errors import RetryLater
from mailhook.models import Delivery, Extraction, FolderPosition, Receipt, Status, utcnow
from mailhook.privileges import FILE_MODE
from mailhook.store import deliveries, figure_triggers
from mailhook.store.connection import connect, migrate, statements
from mailhook.store.deliveries import INSERT_DELIVERY, INSERT_DELIVERY_ONCE, insert_delivery
from mailhook.store.event_rows import LARGEST_ROWID, Started, insert_event_rows
from mailhook.store.rows import Completion, Rows, Work, delivery_status, mended, rows
from mailhook.store.upkeep import Upkeep
from mailhook.store.upkeep import WalCheckpoint as WalCheckpoint  # where the writers have long imported it

log = logging.getLogger("mailhook.store")


# From this many items a batch defers its figures (store/figure_triggers.py) to one set-based pass at
# its end. Since the insert trigger sorts nothing (schema 9) row by row is the cheaper up to 32
# at least (bench/store_calls.py --callgrind, instructions per email: batches of 8, 799 k row by
# row against 848 k deferred; of 16, 740 k against 774 k; of 32, 736 k against 753 k), so 17
# is safe, not the crossing, which lies higher; a backfill's 256 are deferred.
DEFER_FIGURES_AT = 17


# SETTLE's parts as statements, each with the event types it needs among the new events (None: any).
_SETTLE = tuple((tuple(statements(part)), needs) for part, needs in figure_triggers.SETTLE_NEEDS)

# The WAL is copied back into the database once it holds this many bytes of pages: 8,000 of the 2 KiB
# pages of a database mailhook creates, 4,000 of an older file's 4 KiB as before (SQLite's default is
# 1,000 pages). A page that many commits change (the right-most leaves, the figures, full-text structure) is
# copied once per checkpoint, each copy a read of the WAL and a write of the database: bench/store_frames.py
# --checkpoints counts, per distinct email at 2 KiB pages and batches of 2, 5.0 pages copied at 4,000 pages
# (8 MiB), 3.9 at 8,000. The WAL stays below journal_size_limit.
CHECKPOINT_BYTES = 4000 * 4096


def checkpoint_pages(page_size: int) -> int:
    """Return the WAL pages (of `page_size` bytes) after which a commit checkpoints: CHECKPOINT_BYTES of them."""
    return CHECKPOINT_BYTES // page_size


# With a checkpointer thread beside the writer (store/checkpointer.py) the copying is off the commits'
# path, and it checkpoints at twice CHECKPOINT_BYTES (32 MiB): pages copied per message 6.0 -> 4.8 in
# 40,000 SMTP messages (docs/performance-log.md, "ckpt12"). The writer's own auto-checkpoint is only the net
# for a checkpointer that fell behind, at four times CHECKPOINT_BYTES (64 MiB, the WAL's journal_size_limit).
CHECKPOINTER_FACTOR = 2
NET_FACTOR = 4


# What fails one item of a batch alone (a UnicodeEncodeError, mended and written again, is a ValueError).
_ITEM_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, OverflowError)


class Store(Upkeep):
    """Writes deliveries and their events on one connection, one transaction per batch."""

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 5.0, mode: int = FILE_MODE, phone_region: str = "US"
    ) -> None:
        self.path = Path(path)
        self._busy_ms = int(busy_timeout * 1000)
        self.phone_region = phone_region
        self.conn = connect(path, busy_timeout=busy_timeout, mode=mode, buffered_wal=True)
        migrate(self.conn, phone_region=phone_region)
        # The statement journals and savepoints' sub-journal in memory, not in a temporary file
        # that every commit creates, writes (more pages than the WAL gets) and unlinks. They hold
        # at most the pages one transaction changes; the writer sorts only a batch's own rows.
        self.conn.execute("PRAGMA temp_store=MEMORY")
        (self.page_size,) = self.conn.execute("PRAGMA page_size").fetchone()
        self.checkpoint_at(checkpoint_pages(self.page_size))
        # Whether new events get consecutive ids (`event_rows._insert_events_plain_sql`): only a hand-made row can
        # hold the largest rowid (mailhook's own ids grow by one from 1).
        self._sequential_ids = self.conn.execute(
            "SELECT coalesce(max(id), 0) < ? FROM events", (LARGEST_ROWID,)).fetchone()[0] == 1

    def checkpoint_at(self, pages: int) -> None:
        """Have a commit that leaves `pages` or more in the WAL checkpoint it (SQLite's auto-checkpoint)."""
        self.conn.execute(f"PRAGMA wal_autocheckpoint={pages}")

    def write(self, items: Sequence[Work]) -> list[Receipt | Exception]:
        """Store a batch in one durable transaction; return each item's receipt or its own error.

        An item is a delivery with its extraction (stored with its events), a
        delivery with None (stored `pending`, its events to follow), or a
        `Completion` of a pending delivery. A storage failure (locked, disk
        full, I/O) raises `RetryLater` for the whole batch; an error confined to
        one item fails only that item.
        """
        conn = self.conn
        deferred = len(items) >= DEFER_FIGURES_AT
        try:
            try:
                self._begin(deferred=deferred)
                results = self._write_items(items, deferred=deferred)
                if deferred:
                    self._settle(results)
                    conn.execute("DELETE FROM figures_deferred")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise RetryLater(f"storage unavailable: {exc}") from exc
        return results

    def _settle(self, results: list[Receipt | Exception]) -> None:
        """Count a deferred batch's new events into the figures, running only the parts of SETTLE they need.

        The receipts name the type of every event the batch inserted (a failed
        item's were rolled back); a part that needs none of those types would
        change nothing, and still cost its statements' setup (a campaign's name
        refresh alone opens 14 temporary tables).
        """
        types = {kind for result in results if isinstance(result, Receipt) for kind in result.event_types}
        if not types:
            return
        for part, needs in _SETTLE:
            if needs is None or not needs.isdisjoint(types):
                for statement in part:
                    self.conn.execute(statement)

    def _begin(self, *, deferred: bool) -> None:
        """Begin the batch's write transaction, deferring its figures to `_settle` if asked."""
        self.conn.execute("BEGIN IMMEDIATE")
        if deferred:
            # Events get ids above the largest one now (INTEGER PRIMARY KEY, the write lock held).
            self.conn.execute("INSERT INTO figures_deferred (since) SELECT coalesce(max(id), 0) FROM events")

    def _write_items(self, items: Sequence[Work], *, deferred: bool) -> list[Receipt | Exception]:
        """Write the items together; only when one of them fails, write them all again one by one.

        A savepoint per item costs two statements, and every page an item changes
        that an earlier one had changed is copied to the sub-journal first. Nor is
        there one savepoint for the batch: under it every page the batch changes
        was copied too (4% of the CPU of storing one email alone, bench/store_calls.py).
        Items rarely fail: undone together, with the whole transaction, they are
        written again in a new one, each in its own savepoint, so the results are
        those of writing each item alone (after any other writer's commit in between).
        """
        try:
            return list(self._write_together(items, mending=False))
        except _ITEM_ERRORS:
            self.conn.execute("ROLLBACK")
            self._begin(deferred=deferred)
            return [self._write_alone(item) for item in items]

    def _write_alone(self, item: Work) -> Receipt | Exception:
        """Write one item in its own savepoint: its error (or its quarantine) is its own, the batch goes on."""
        conn = self.conn
        conn.execute("SAVEPOINT item")
        try:
            try:
                result = self._write_item(item, mending=False)
            except UnicodeEncodeError:
                # A lone surrogate sqlite3 cannot encode (an undecodable byte, a JSON "\udc80"): store
                # every value as PostgreSQL does, with U+FFFD for it (`raw` keeps the bytes).
                conn.execute("ROLLBACK TO item")
                result = self._write_item(item, mending=True)
            conn.execute("RELEASE item")
        except _ITEM_ERRORS as exc:
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
            if isinstance(item, Completion) and (kept := self._quarantine(item.delivery_id, exc)):
                return kept
            log.error("delivery could not be stored: %s", exc)
            return exc
        return result

    def _write_item(self, item: Work, *, mending: bool) -> Receipt:
        """Store one item; with `mending`, every text value with its lone surrogates as U+FFFD (`rows.mended`)."""
        return self._write_together([item], mending=mending)[0]

    def _write_together(self, items: Sequence[Work], *, mending: bool) -> list[Receipt]:
        """Store items in order: each one's delivery, then all their events at once, then each one's status.

        The events go in a few multi-row INSERTs, not one statement each: FTS5
        writes its pending terms out as a new segment whenever a statement that
        wrote to it ends, so an INSERT per event made a segment (and merge work)
        per event. Rows, ids and figures are those of writing the items one by one.
        """
        started = [self._start(item, mending=mending) for item in items]
        pending = [step for step in started if isinstance(step, Started)]
        if pending:
            insert_event_rows(self.conn, pending, region=self.phone_region, sequential_ids=self._sequential_ids)
        return [step if isinstance(step, Receipt) else self._finish(step) for step in started]

    def _start(self, item: Work, *, mending: bool) -> Receipt | Started:
        """Store an item's delivery (or complete a pending one); return what its events need, or its receipt."""
        if isinstance(item, Completion):
            return self._complete(item, mending=mending)
        return self._write_one(item[0], item[1], mending=mending)

    def _write_one(
        self, delivery: Delivery, extraction: Extraction | Rows | None, *, mending: bool = False
    ) -> Receipt | Started:
        now = utcnow()
        sha256 = delivery.sha256  # a property: hashed on each use
        if extraction is None:
            delivery_id = insert_delivery(self.conn, delivery, sha256, now, "pending", None, delivery.raw,
                                          mending=mending)
            return Receipt(delivery_id, "pending")
        found = rows(extraction, len(delivery.raw))
        if mending:
            found = mended(found)
        raw: bytes | None
        if found.message_id and found.events and not found.reason:
            # A delivery with events: whether its Message-ID was seen cannot change its status (`delivery_status`:
            # its events decide), only whether it keeps its bytes, which the INSERT itself finds out.
            seen, raw, sql = False, delivery.raw, INSERT_DELIVERY_ONCE
        else:
            seen, same_bytes = deliveries.seen(self.conn, found.message_id, sha256, None)
            raw, sql = None if same_bytes else delivery.raw, INSERT_DELIVERY
        # Inserted as it ends when every event is new (nearly always), so that `_finish` need not update it.
        expected = (delivery_status(found, seen=seen, new=len(found.events), duplicates=0), len(found.events), 0)
        delivery_id = insert_delivery(self.conn, delivery, sha256, now, expected[0], found, raw, mending=mending,
                                      event_count=expected[1], sql=sql)
        return Started(delivery_id, now, found, seen, delivery.position, expected)

    def _complete(self, completion: Completion, *, mending: bool = False) -> Receipt | Started:
        """Store the events of a delivery stored `pending`, and give it its final status."""
        delivery_id = completion.delivery_id
        found = completion.extraction
        if not isinstance(found, Rows):  # a worker bounds the rows it makes; these it could not make
            (size,) = self.conn.execute("SELECT size FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() or (0,)
            found = rows(found, size)
        if mending:
            found = mended(found)
        seen, same_bytes = deliveries.seen(self.conn, found.message_id, completion.sha256, delivery_id)
        row = self.conn.execute(
            "UPDATE deliveries SET error = ?, message_id = ?, subject = ?, notes = ?,"
            " raw = CASE WHEN ? THEN NULL ELSE raw END WHERE id = ? AND status = 'pending' RETURNING received_at",
            (found.reason, found.message_id, found.subject, found.notes, same_bytes, delivery_id),
        ).fetchone()
        if row is None:
            # Completed already (by `mailhook reprocess`, say): report it as it stands, adding nothing.
            current = self.conn.execute(
                "SELECT status, error, message_id FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            if current is None:
                raise ValueError(f"delivery {delivery_id} no longer exists")
            return Receipt(delivery_id, current[0], error=current[1], message_id=current[2])
        # Its events carry the time it was received (and acknowledged), as they would have inline.
        return Started(delivery_id, row[0], found, seen, None, None)

    def _quarantine(self, delivery_id: int, exc: Exception) -> Receipt | None:
        """Quarantine a pending delivery whose events cannot be stored (it was acknowledged; keep it)."""
        reason = f"events could not be stored: {exc}"
        done = self.conn.execute(
            "UPDATE deliveries SET status = 'quarantined', error = ? WHERE id = ? AND status = 'pending'",
            (reason, delivery_id),
        ).rowcount
        if not done:
            return None
        log.error("delivery %d quarantined: %s", delivery_id, reason)
        return Receipt(delivery_id, "quarantined", error=reason)

    def _finish(self, step: Started) -> Receipt:
        """Give a delivery whose events are inserted its status and counts, unless it was inserted with them."""
        new, duplicates, types = step.new, step.duplicates, tuple(step.types)
        status = delivery_status(step.found, seen=step.seen, new=new, duplicates=duplicates)
        if (status, new, duplicates) != step.inserted:
            self.conn.execute(
                "UPDATE deliveries SET status = ?, event_count = ?, duplicate_count = ? WHERE id = ?",
                (status, new, duplicates, step.delivery_id),
            )
        if step.position is not None:
            deliveries.advance(self.conn, step.position, step.now)
        return Receipt(step.delivery_id, status, new, duplicates, step.found.reason, step.found.message_id, types)

    def _insert_events(self, delivery_id: int, now: str, extraction: Rows) -> tuple[int, int, tuple[str, ...]]:
        """Insert one delivery's events and their attempts; return how many were new, how many not, the new types."""
        step = Started(delivery_id, now, extraction, False, None, None)
        insert_event_rows(self.conn, [step], region=self.phone_region, sequential_ids=self._sequential_ids)
        return step.new, step.duplicates, tuple(step.types)

    def position(self, account: str, folder: str) -> FolderPosition | None:
        """Return how far `folder` of `account` has been stored, if at all."""
        return deliveries.position(self.conn, account, folder)

    def reextract(self, delivery_id: int, extraction: Extraction, size: int | None = None) -> Receipt:
        """Add the events a new extraction finds for a stored delivery (of `size` raw bytes) and update its status."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = utcnow()
            found = mended(rows(extraction, size))  # reprocessing is rare: no need to try unmended first
            new, duplicates, types = self._insert_events(delivery_id, now, found)
            old_status, old_new = conn.execute(
                "SELECT status, event_count FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            status: Status
            if found.reason:
                status, error = ("duplicate" if old_status == "duplicate" else "quarantined"), found.reason
            else:
                status, error = ("stored" if new or old_new else "duplicate"), None
            conn.execute(
                "UPDATE deliveries SET status = ?, error = ?, notes = ?, event_count = event_count + ?,"
                " duplicate_count = ? WHERE id = ?",
                (status, error, found.notes, new, duplicates, delivery_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return Receipt(delivery_id, status, new, duplicates, found.reason, event_types=types)
