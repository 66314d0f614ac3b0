"""The write path: `Store.write` puts a batch of deliveries and their events in one durable transaction."""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailhook.derived import e164, sent_at
from mailhook.errors import RetryLater
from mailhook.models import Delivery, Extraction, FolderPosition, Receipt, Status, stored_kind, to_json, utcnow
from mailhook.privileges import FILE_MODE
from mailhook.store import figures
from mailhook.store.connection import connect, migrate, statements
from mailhook.store.interface import StoredDelivery
from mailhook.store.rows import Completion, Rows, Work, delivery_status, mend, mended, rows
from mailhook.store.schema import ATTEMPT_COLUMNS, EVENT_COLUMNS

log = logging.getLogger("mailhook.store")


# Events (or attempts) inserted by one statement: a batch's rows in statements of _ROWS_AT_ONCE, then of
# _ROWS_TAIL, then the rest, so that the statements' texts are 17 per table in sqlite3's statement cache
# (128). Each statement that writes to the full-text index ends with FTS5 writing its pending terms as a
# segment, to be merged later: a backfill's commit of 256 made 17 segments in rows of 16, 5 in rows of
# 64 (bench/store_calls.py --callgrind --batch 256: 692 k -> 678 k instructions per email; 667 k -> 637 k
# without compiling the statements, once per process). 64 rows of 34 parameters are 2,176, under
# SQLite's default limit since 3.32 (32,766); a build with a lower one gets rows of 16 (544), as before.
_ROWS_AT_ONCE = 64
_ROWS_TAIL = 16


def _chunks(total: int, sizes: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """Yield (start, count) of consecutive chunks of `total` rows: as many of each size in turn, then the rest."""
    start = 0
    for size in sizes:
        while total - start >= size:
            yield start, size
            start += size
    if start < total:
        yield start, total - start


@functools.cache
def _insert_events_sql(count: int) -> str:
    """Return the INSERT of `count` events, giving the id and dedupe_key of each one it inserted."""
    row = f"({', '.join('?' * (5 + len(EVENT_COLUMNS)))})"
    return (
        f"INSERT INTO events (delivery_id, received_at, event_time, from_e164, to_e164, {', '.join(EVENT_COLUMNS)}) "
        f"VALUES {', '.join([row] * count)} ON CONFLICT(dedupe_key) DO NOTHING RETURNING id, dedupe_key"
    )


# Events without RETURNING, which SQLite serves through a temporary table of the rows it returns:
# how many were inserted is the statement's change count (the triggers' inserts are not counted),
# the last one's id the connection's last inserted rowid (restored once the triggers have run). The
# ids of one statement's rows are consecutive (each row the table's largest rowid plus one) unless
# the table holds the largest possible rowid, from which SQLite picks them at random: `Store` then
# keeps RETURNING.
@functools.cache
def _insert_events_plain_sql(count: int) -> str:
    """Return the INSERT of `count` events, without RETURNING."""
    return _insert_events_sql(count).removesuffix(" RETURNING id, dedupe_key")


_INSERT_EVENT = _insert_events_plain_sql(1)
_LARGEST_ROWID = 2**63 - 1
_INSERTED_IDS = "SELECT id, dedupe_key FROM events WHERE id BETWEEN ? AND ?"


# Where the columns mailhook derives from take their values in an event's row.
_MODIFIED, _CREATED = EVENT_COLUMNS.index("modified"), EVENT_COLUMNS.index("created")


_FROM, _TO = EVENT_COLUMNS.index("from_number"), EVENT_COLUMNS.index("to_number")
_DEDUPE_KEY = EVENT_COLUMNS.index("dedupe_key")


@functools.cache
def _insert_attempts_sql(count: int) -> str:
    """Return the INSERT of `count` attempts."""
    row = f"({', '.join('?' * (1 + len(ATTEMPT_COLUMNS)))})"
    return f"INSERT INTO attempts (event_id, {', '.join(ATTEMPT_COLUMNS)}) VALUES {', '.join([row] * count)}"


_INSERT_DELIVERY = """
INSERT INTO deliveries (channel, received_at, status, error, message_id, envelope_from, envelope_to,
    subject, content_type, remote_addr, size, sha256, raw, notes, source, event_count, duplicate_count, sent_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# The same, keeping no copy of the bytes (`raw` NULL) when the first delivery with this Message-ID
# (?5) has the same SHA-256 (?12): what `Store._seen` says, asked inside the INSERT rather than by a
# statement of its own (bench/store_calls.py --callgrind: see `Store._write_one`). The scalar
# subquery of a VALUES list runs before the row is inserted, through `deliveries_message_id`.
_INSERT_DELIVERY_ONCE = _INSERT_DELIVERY.replace(
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,\n"
    "    CASE WHEN (SELECT f.sha256 FROM deliveries AS f WHERE f.message_id = ?5 ORDER BY f.id LIMIT 1) = ?12\n"
    "         THEN NULL ELSE ?13 END, ?14, ?15, ?16, ?17, ?18)")
assert _INSERT_DELIVERY_ONCE != _INSERT_DELIVERY


# From this many items a batch defers its figures (store/figures.py) to one set-based pass at
# its end. Since the insert trigger sorts nothing (schema 9) row by row is the cheaper up to 32
# at least (bench/store_calls.py --callgrind, instructions per email: batches of 8, 799 k row by
# row against 848 k deferred; of 16, 740 k against 774 k; of 32, 736 k against 753 k), so 17
# is safe, not the crossing, which lies higher; a backfill's 256 are deferred.
DEFER_FIGURES_AT = 17


# SETTLE's parts as statements, each with the event types it needs among the new events (None: any).
_SETTLE = tuple((tuple(statements(part)), needs) for part, needs in figures.SETTLE_NEEDS)

# The WAL is copied back into the database once it holds this many pages (16 MiB; SQLite's default
# is 1,000). A page that many commits change (the right-most leaves, the figures, full-text
# structure) is copied once per checkpoint: bench/store_frames.py --checkpoints counts 4.7
# pages copied per distinct email at 1,000, 2.4 at 4,000. The file stays below journal_size_limit.
CHECKPOINT_PAGES = 4000

# What fails one item of a batch alone (a UnicodeEncodeError, mended and written again, is a ValueError).
_ITEM_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, OverflowError)


@dataclass(slots=True)
class _Started:
    """A delivery stored (or completed) whose events are still to be inserted, and what they added."""

    delivery_id: int
    now: str
    found: Rows
    seen: bool
    position: FolderPosition | None
    inserted: tuple[Status, int, int] | None  # the status and counts its row was inserted with
    new: int = 0
    duplicates: int = 0
    types: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WalCheckpoint:
    """The outcome of one WAL checkpoint: WAL frames, how many were copied back, whether it was emptied."""

    busy: bool
    frames: int
    copied: int
    truncated: bool


class Store:
    """Writes deliveries and their events on one connection, one transaction per batch."""

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 5.0, mode: int = FILE_MODE, phone_region: str = "US"
    ) -> None:
        self.path = Path(path)
        self._busy_ms = int(busy_timeout * 1000)
        self.phone_region = phone_region
        self.conn = connect(path, busy_timeout=busy_timeout, mode=mode)
        migrate(self.conn, phone_region=phone_region)
        # The statement journals and savepoints' sub-journal in memory, not in a temporary file
        # that every commit creates, writes (more pages than the WAL gets) and unlinks. They hold
        # at most the pages one transaction changes; the writer sorts only a batch's own rows.
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
        # Whether new events get consecutive ids (`_insert_events_plain_sql`): only a hand-made row can
        # hold the largest rowid (mailhook's own ids grow by one from 1).
        self._sequential_ids = self.conn.execute(
            "SELECT coalesce(max(id), 0) < ? FROM events", (_LARGEST_ROWID,)).fetchone()[0] == 1

    def close(self) -> None:
        """Close the connection, refreshing the query planner's statistics first if the events have grown."""
        try:
            self.analyze_if_grown()
        except sqlite3.Error as exc:
            log.debug("statistics not refreshed: %s", exc)
        self.conn.close()

    def analyze_if_grown(self) -> bool:
        """Refresh the planner's statistics of `events` once they have doubled since the last time; say if it ran.

        Analysts' views sort by event_time; without statistics SQLite reads every
        matching row and sorts them instead of walking the event_time index. A
        sampled ANALYZE (analysis_limit) reads only the start of each index and
        misjudges event_type as selective, so it reads them all: ~1 s at a
        million events, once per doubling.
        """
        # Each index's row gives its entries first; a partial index has fewer, so take the largest.
        stats = self.conn.execute(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = 'events' AND idx IS NOT NULL"
        ).fetchall() if self._has_stats() else []
        analyzed = max((int(row[0].split()[0]) for row in stats), default=0)
        events = self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        if events < 1000 or events < 2 * analyzed:
            return False
        self.conn.execute("ANALYZE events")
        return True

    def _has_stats(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() is not None

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
        pending = [step for step in started if isinstance(step, _Started)]
        if pending:
            self._insert_event_rows(pending)
        return [step if isinstance(step, Receipt) else self._finish(step) for step in started]

    def _start(self, item: Work, *, mending: bool) -> Receipt | _Started:
        """Store an item's delivery (or complete a pending one); return what its events need, or its receipt."""
        if isinstance(item, Completion):
            return self._complete(item, mending=mending)
        return self._write_one(item[0], item[1], mending=mending)

    def _write_one(
        self, delivery: Delivery, extraction: Extraction | Rows | None, *, mending: bool = False
    ) -> Receipt | _Started:
        now = utcnow()
        sha256 = delivery.sha256  # a property: hashed on each use
        if extraction is None:
            delivery_id = self._insert_delivery(delivery, sha256, now, "pending", None, delivery.raw, mending=mending)
            return Receipt(delivery_id, "pending")
        found = rows(extraction, len(delivery.raw))
        if mending:
            found = mended(found)
        raw: bytes | None
        if found.message_id and found.events and not found.reason:
            # A delivery with events: whether its Message-ID was seen cannot change its status (`delivery_status`:
            # its events decide), only whether it keeps its bytes, which the INSERT itself finds out.
            seen, raw, sql = False, delivery.raw, _INSERT_DELIVERY_ONCE
        else:
            seen, same_bytes = self._seen(found.message_id, sha256, None)
            raw, sql = None if same_bytes else delivery.raw, _INSERT_DELIVERY
        # Inserted as it ends when every event is new (nearly always), so that `_finish` need not update it.
        expected = (delivery_status(found, seen=seen, new=len(found.events), duplicates=0), len(found.events), 0)
        delivery_id = self._insert_delivery(delivery, sha256, now, expected[0], found, raw, mending=mending,
                                            event_count=expected[1], sql=sql)
        return _Started(delivery_id, now, found, seen, delivery.position, expected)

    def _complete(self, completion: Completion, *, mending: bool = False) -> Receipt | _Started:
        """Store the events of a delivery stored `pending`, and give it its final status."""
        delivery_id = completion.delivery_id
        found = completion.extraction
        if not isinstance(found, Rows):  # a worker bounds the rows it makes; these it could not make
            (size,) = self.conn.execute("SELECT size FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() or (0,)
            found = rows(found, size)
        if mending:
            found = mended(found)
        seen, same_bytes = self._seen(found.message_id, completion.sha256, delivery_id)
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
        return _Started(delivery_id, row[0], found, seen, None, None)

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

    def _seen(self, message_id: str | None, sha256: str, own_id: int | None) -> tuple[bool, bool]:
        """Say whether another delivery has this Message-ID, and whether the first one has these exact bytes."""
        if not message_id:
            return False, False
        row = self.conn.execute(
            "SELECT sha256 FROM deliveries WHERE message_id = ? AND id IS NOT ? ORDER BY id LIMIT 1",
            (message_id, own_id),
        ).fetchone()
        # Same bytes: the first delivery holds them already, so this one keeps no copy.
        return row is not None, row is not None and row[0] == sha256

    def _insert_delivery(self, delivery: Delivery, sha256: str, now: str, status: Status, found: Rows | None,
                         raw: bytes | None, *, mending: bool = False, event_count: int = 0,
                         sql: str = _INSERT_DELIVERY) -> int:
        values = (
            delivery.channel,
            now,
            status,
            found and found.reason,
            found and found.message_id,
            delivery.envelope_from,
            to_json(list(delivery.envelope_to)) if delivery.envelope_to else None,
            found and found.subject,
            delivery.content_type,
            delivery.remote_addr,
            len(delivery.raw),
            sha256,
            raw,
            found and found.notes,
            delivery.source,
            event_count,
            0,
            sent_at(delivery.raw) if delivery.kind == "email" else None,
        )
        cursor = self.conn.execute(sql, tuple(map(mend, values)) if mending else values)
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _finish(self, step: _Started) -> Receipt:
        """Give a delivery whose events are inserted its status and counts, unless it was inserted with them."""
        new, duplicates, types = step.new, step.duplicates, tuple(step.types)
        status = delivery_status(step.found, seen=step.seen, new=new, duplicates=duplicates)
        if (status, new, duplicates) != step.inserted:
            self.conn.execute(
                "UPDATE deliveries SET status = ?, event_count = ?, duplicate_count = ? WHERE id = ?",
                (status, new, duplicates, step.delivery_id),
            )
        if step.position is not None:
            self._advance(step.position, step.now)
        return Receipt(step.delivery_id, status, new, duplicates, step.found.reason, step.found.message_id, types)

    def _insert_events(self, delivery_id: int, now: str, extraction: Rows) -> tuple[int, int, tuple[str, ...]]:
        """Insert one delivery's events and their attempts; return how many were new, how many not, the new types."""
        step = _Started(delivery_id, now, extraction, False, None, None)
        self._insert_event_rows([step])
        return step.new, step.duplicates, tuple(step.types)

    def _insert_event_rows(self, steps: list[_Started]) -> None:
        """Insert the events of `steps` in order, then all their attempts, in `_chunks` of rows a statement.

        An event whose dedupe_key is stored already, or taken by an earlier event
        of these, is a duplicate (ON CONFLICT DO NOTHING, rows inserted in order).
        """
        region = self.phone_region
        values: list[Any] = []
        keys: list[str] = []
        for step in steps:
            delivery_id, now = step.delivery_id, step.now
            for _, row, _ in step.found.events:
                values += (delivery_id, now, row[_MODIFIED] or row[_CREATED] or now,
                           e164(row[_FROM], region), e164(row[_TO], region), *row)
                keys.append(row[_DEDUPE_KEY])
        ids: dict[str, int] = {}
        width = 5 + len(EVENT_COLUMNS)
        if len(keys) == 1:
            cursor = self.conn.execute(_INSERT_EVENT, values)
            if cursor.rowcount == 1:
                ids[keys[0]] = cursor.lastrowid  # type: ignore[assignment]  # an insert's rowid is never None
        else:
            for start, count in self._chunks(len(keys), width):
                chunk = values[start * width:(start + count) * width]
                if not self._sequential_ids:
                    ids.update((key, id_) for id_, key in self.conn.execute(_insert_events_sql(count), chunk))
                    continue
                cursor = self.conn.execute(_insert_events_plain_sql(count), chunk)
                inserted, last = cursor.rowcount, cursor.lastrowid
                assert last is not None
                if inserted == count:  # the rows' ids in order, as nearly always: none was a duplicate
                    ids.update(zip(keys[start:start + count], range(last - count + 1, last + 1), strict=True))
                elif inserted:  # the inserted rows' ids are consecutive still: read their keys back
                    ids.update((key, id_) for id_, key in self.conn.execute(
                        _INSERTED_IDS, (last - inserted + 1, last)))
        attempts: list[Any] = []
        for step in steps:
            for event_type, row, event_attempts in step.found.events:
                event_id = ids.pop(row[_DEDUPE_KEY], None)  # popped: a second event with this key is a duplicate
                if event_id is None:
                    step.duplicates += 1
                    continue
                step.new += 1
                step.types.append(event_type)
                for attempt in event_attempts:
                    attempts += (event_id, *attempt)
        # In the same chunks: a statement per row would cost each its statement journal and FTS5 sync.
        width = 1 + len(ATTEMPT_COLUMNS)
        for start, count in self._chunks(len(attempts) // width, width):
            self.conn.execute(_insert_attempts_sql(count), attempts[start * width:(start + count) * width])

    def _chunks(self, total: int, width: int) -> Iterator[tuple[int, int]]:
        """Yield the chunks in which `total` rows of `width` parameters each are inserted (module `_chunks`)."""
        if total >= _ROWS_AT_ONCE and (
                self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) < _ROWS_AT_ONCE * width):
            return _chunks(total, (_ROWS_TAIL,))
        return _chunks(total, (_ROWS_AT_ONCE, _ROWS_TAIL))

    def _advance(self, position: FolderPosition, now: str) -> None:
        self.conn.execute(
            """INSERT INTO imap_checkpoints (account, folder, uidvalidity, last_uid, updated_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT(account, folder) DO UPDATE SET
                   last_uid = CASE WHEN uidvalidity = excluded.uidvalidity
                                   THEN max(last_uid, excluded.last_uid) ELSE excluded.last_uid END,
                   uidvalidity = excluded.uidvalidity,
                   updated_at = excluded.updated_at""",
            (position.account, position.folder, position.uidvalidity, position.uid, now),
        )

    def position(self, account: str, folder: str) -> FolderPosition | None:
        """Return how far `folder` of `account` has been stored, if at all."""
        row = self.conn.execute(
            "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE account = ? AND folder = ?",
            (account, folder),
        ).fetchone()
        return None if row is None else FolderPosition(account, folder, row[0], row[1])

    def stored_deliveries(self, *, quarantined_only: bool) -> Iterator[StoredDelivery]:
        """Yield stored deliveries that still hold their raw bytes, oldest first."""
        where = "raw IS NOT NULL" + (" AND status = 'quarantined'" if quarantined_only else "")
        last = 0
        while True:
            rows = self.conn.execute(
                f"SELECT id, channel, raw, status, content_type FROM deliveries WHERE {where} AND id > ?"
                " ORDER BY id LIMIT 500",
                (last,),
            ).fetchall()
            if not rows:
                return
            for id_, channel, raw, status, content_type in rows:
                last = id_
                yield StoredDelivery(id_, stored_kind(channel, raw), raw, status, content_type)

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

    def checkpoint_wal(self) -> WalCheckpoint:
        """Copy the WAL back into the database, and empty the WAL file when no reader still needs it.

        Analysts' long read transactions pin old WAL frames; a passive checkpoint
        never waits for them, and the truncating one is only tried, without
        waiting, once everything is copied, so the writer is never stalled.
        """
        try:
            self.analyze_if_grown()
            busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise RetryLater(f"storage unavailable: {exc}") from exc
        truncated = False
        if not busy and frames > 0 and copied == frames:
            self.conn.execute("PRAGMA busy_timeout=0")
            try:
                busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                truncated = not busy
            except sqlite3.OperationalError:
                truncated = False
            finally:
                self.conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        return WalCheckpoint(busy=bool(busy), frames=frames, copied=copied, truncated=truncated)

    def check_writable(self) -> None:
        """Raise `RetryLater` unless a write transaction can be started right now."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise RetryLater(f"storage unavailable: {exc}") from exc

