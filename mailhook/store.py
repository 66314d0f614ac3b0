"""The SQLite store: connections, schema migrations, the write path and the reads it needs.

Every connection is opened here. `Store.write` puts a batch of deliveries
and their events in one durable transaction; the group-commit thread that
feeds it lives in `mailhook.writer`, the admin's prune/backup/status in
`mailhook.upkeep`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from mailhook.derived import e164, sent_at
from mailhook.errors import ConfigError, RetryLater
from mailhook.models import Checkpoint, Delivery, Extraction, Kind, Receipt, Status, kind_of, to_json, utcnow
from mailhook.privileges import FILE_MODE, create_private, database_files, make_directories, restrict
from mailhook.schema import ATTEMPT_COLUMNS, EVENT_COLUMNS, MIGRATIONS

log = logging.getLogger("mailhook.store")

WAL_SIZE_LIMIT = 64 * 1024 * 1024
# What a delivery's events may store as payloads (events.payload and attempts.payload together),
# at most, per byte received: a notification's payloads take about its size once (measured on
# the fixtures: 0.4-1.4x), so more means the input was built to be amplified; it is quarantined.
PAYLOAD_RATIO = 2
_PAYLOAD = EVENT_COLUMNS.index("payload")
_ATTEMPT_PAYLOAD = ATTEMPT_COLUMNS.index("payload")

_INSERT_EVENT = (
    f"INSERT INTO events (delivery_id, received_at, event_time, from_e164, to_e164, {', '.join(EVENT_COLUMNS)}) "
    f"VALUES (?, ?, ?, ?, ?, {', '.join('?' * len(EVENT_COLUMNS))}) ON CONFLICT(dedupe_key) DO NOTHING"
)
# Where the columns mailhook derives from take their values in an event's row.
_MODIFIED, _CREATED = EVENT_COLUMNS.index("modified"), EVENT_COLUMNS.index("created")
_FROM, _TO = EVENT_COLUMNS.index("from_number"), EVENT_COLUMNS.index("to_number")
_INSERT_ATTEMPT = (
    f"INSERT INTO attempts (event_id, {', '.join(ATTEMPT_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' * len(ATTEMPT_COLUMNS))})"
)
_INSERT_DELIVERY = """
INSERT INTO deliveries (channel, received_at, status, error, message_id, envelope_from, envelope_to,
    subject, content_type, remote_addr, size, sha256, raw, notes, source, event_count, duplicate_count, sent_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class Rows(NamedTuple):
    """An extraction as the values `Store.write` inserts; a tuple, so it pickles cheaply between processes.

    `events` holds, per event, its type, its `events` columns (EVENT_COLUMNS
    order) and its attempts' `attempts` columns (ATTEMPT_COLUMNS order).
    """

    reason: str | None
    notes: str | None
    message_id: str | None
    subject: str | None
    events: tuple[tuple[str, tuple[Any, ...], tuple[tuple[Any, ...], ...]], ...]


class Completion(NamedTuple):
    """The extraction of a delivery stored `pending`, to be stored as its events."""

    delivery_id: int
    sha256: str
    extraction: Extraction | Rows


# What `Store.write` takes: a delivery with its extraction (None: store it pending), or a completion.
Work = tuple[Delivery, Extraction | Rows | None] | Completion


def rows(extraction: Extraction | Rows, size: int | None = None) -> Rows:
    """Turn an extraction into the rows stored for it (pure: extraction workers call it too).

    Given the `size` of the raw delivery, payloads of more than PAYLOAD_RATIO
    times that many bytes turn the rows into a quarantine with the reason.
    """
    if isinstance(extraction, Rows):
        return extraction if size is None else _bounded(extraction, size)
    events = []
    for event in extraction.events:
        row = event.row()
        attempts = []
        for attempt in event.attempts:
            values = attempt.row()
            attempts.append(tuple([values[c] for c in ATTEMPT_COLUMNS]))
        events.append((event.event_type, tuple([row[c] for c in EVENT_COLUMNS]), tuple(attempts)))
    found = Rows(
        extraction.reason, "\n".join(extraction.notes) or None, extraction.message_id, extraction.subject,
        tuple(events),
    )
    return found if size is None else _bounded(found, size)


def _bounded(found: Rows, size: int) -> Rows:
    """Return `found`, or a quarantine without events when its payloads exceed PAYLOAD_RATIO x `size` bytes."""
    stored = 0
    for _, values, attempts in found.events:
        stored += len(values[_PAYLOAD].encode())
        for attempt in attempts:
            stored += len(attempt[_ATTEMPT_PAYLOAD].encode())
    if stored <= PAYLOAD_RATIO * size:
        return found
    reason = (
        f"payloads of {stored} bytes would exceed {PAYLOAD_RATIO}x the {size} bytes received; events not stored"
    )
    return found._replace(reason=reason, events=())


def worker_rows(extraction: Extraction, size: int | None = None) -> Extraction | Rows:
    """Return an extraction as rows for the parent process, or as itself when its values cannot be rows.

    The writer then meets the same error and fails (or quarantines) that delivery alone.
    """
    try:
        return rows(extraction, size)
    except (ValueError, OverflowError, TypeError):
        return extraction


def connect(
    path: str | Path, *, busy_timeout: float = 5.0, readonly: bool = False, mode: int = FILE_MODE
) -> sqlite3.Connection:
    """Open the database with mailhook's pragmas; read-only connections never write or migrate.

    A new database is created with `mode` (0600 by default) before SQLite opens
    it, so its -wal and -shm get the same mode; an existing one readable by
    everyone is restricted to it.
    """
    if readonly:
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout, check_same_thread=False
        )
    else:
        folder = Path(path).parent
        try:
            # Run by hand before systemd ever created the StateDirectory; systemd adopts it later.
            make_directories(folder)
        except OSError as exc:
            raise ConfigError(f"storage.db: cannot create directory {folder}: {exc.strerror}") from None
        try:
            create_private(Path(path), mode)
        except OSError as exc:
            raise RetryLater(f"cannot create database {path}: {exc.strerror}") from exc
        restrict(database_files(Path(path)), mode)
        try:
            conn = sqlite3.connect(str(path), timeout=busy_timeout, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise RetryLater(f"cannot open database {path}: {exc}") from exc
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # After a checkpoint resets the WAL, shrink the file back instead of keeping its peak size.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return conn


def migrate(conn: sqlite3.Connection, *, phone_region: str = "US") -> int:
    """Apply the migrations not yet applied, each in its own transaction; return the schema version.

    Backfills that need Python (E.164 numbers, the emails' Date) call the
    `mailhook_*` SQL functions registered here for the migration only.
    """
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < len(MIGRATIONS):
        conn.create_function("mailhook_e164", 1, lambda number: e164(number, phone_region), deterministic=True)
        conn.create_function("mailhook_sent_at", 2, lambda channel, raw: (
            sent_at(raw) if _kind(channel, raw) == "email" else None), deterministic=True)
    applied = 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A second process may have migrated while we waited for the lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                conn.execute("ROLLBACK")
                continue
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied = number
    if applied and version:
        log.info("database upgraded from schema version %d to %d", version, applied)
    elif applied:
        log.info("database created (schema version %d)", applied)
    return len(MIGRATIONS)


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into complete statements (triggers contain semicolons)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending
            pending = ""
    if pending.strip():
        yield pending


def open_database(path: str | Path, *, busy_timeout: float = 5.0) -> sqlite_utils.Database:
    """Open (creating and migrating as needed) the database for reading and housekeeping."""
    conn = connect(path, busy_timeout=busy_timeout)
    migrate(conn)
    return sqlite_utils.Database(conn)


def open_readonly(path: str | Path, *, busy_timeout: float = 5.0) -> sqlite_utils.Database:
    """Open the database read-only (`mode=ro`), as an analyst's tool should."""
    return sqlite_utils.Database(connect(path, busy_timeout=busy_timeout, readonly=True))


@dataclass(frozen=True, slots=True)
class WalCheckpoint:
    """The outcome of one WAL checkpoint: WAL frames, how many were copied back, whether it was emptied."""

    busy: bool
    frames: int
    copied: int
    truncated: bool


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    """A delivery as stored, for reprocessing."""

    id: int
    kind: str
    raw: bytes
    status: str
    content_type: str | None = None


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
        results: list[Receipt | Exception] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for item in items:
                    conn.execute("SAVEPOINT item")
                    try:
                        if isinstance(item, Completion):
                            results.append(self._complete(item))
                        else:
                            results.append(self._write_one(item[0], item[1]))
                        conn.execute("RELEASE item")
                    except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, OverflowError) as exc:
                        conn.execute("ROLLBACK TO item")
                        conn.execute("RELEASE item")
                        if isinstance(item, Completion) and (kept := self._quarantine(item.delivery_id, exc)):
                            results.append(kept)
                            continue
                        log.error("delivery could not be stored: %s", exc)
                        results.append(exc)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise RetryLater(f"storage unavailable: {exc}") from exc
        return results

    def _write_one(self, delivery: Delivery, extraction: Extraction | Rows | None) -> Receipt:
        now = utcnow()
        sha256 = delivery.sha256  # a property: hashed on each use
        if extraction is None:
            delivery_id = self._insert_delivery(delivery, sha256, now, "pending", None, delivery.raw)
            return Receipt(delivery_id, "pending")
        found = rows(extraction, len(delivery.raw))
        seen, same_bytes = self._seen(found.message_id, sha256, None)
        delivery_id = self._insert_delivery(delivery, sha256, now, "quarantined" if found.reason else "stored",
                                            found, None if same_bytes else delivery.raw)
        return self._finish(delivery_id, now, found, seen=seen, checkpoint=delivery.checkpoint)

    def _complete(self, completion: Completion) -> Receipt:
        """Store the events of a delivery stored `pending`, and give it its final status."""
        delivery_id = completion.delivery_id
        found = completion.extraction
        if not isinstance(found, Rows):  # a worker bounds the rows it makes; these it could not make
            (size,) = self.conn.execute("SELECT size FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() or (0,)
            found = rows(found, size)
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
        return self._finish(delivery_id, row[0], found, seen=seen, checkpoint=None)

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
                         raw: bytes | None) -> int:
        cursor = self.conn.execute(
            _INSERT_DELIVERY,
            (
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
                0,
                0,
                sent_at(delivery.raw) if delivery.kind == "email" else None,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _finish(self, delivery_id: int, now: str, found: Rows, *, seen: bool, checkpoint: Checkpoint | None) -> Receipt:
        new, duplicates, types = self._insert_events(delivery_id, now, found)
        status = _status(found, seen=seen, new=new, duplicates=duplicates)
        self.conn.execute(
            "UPDATE deliveries SET status = ?, event_count = ?, duplicate_count = ? WHERE id = ?",
            (status, new, duplicates, delivery_id),
        )
        if checkpoint is not None:
            self._advance(checkpoint, now)
        return Receipt(delivery_id, status, new, duplicates, found.reason, found.message_id, types)

    def _insert_events(self, delivery_id: int, now: str, extraction: Rows) -> tuple[int, int, tuple[str, ...]]:
        conn = self.conn
        new = duplicates = 0
        types: list[str] = []
        region = self.phone_region
        for event_type, values, attempts in extraction.events:
            event_time = values[_MODIFIED] or values[_CREATED] or now
            cursor = conn.execute(_INSERT_EVENT, (delivery_id, now, event_time, e164(values[_FROM], region),
                                                  e164(values[_TO], region), *values))
            if cursor.rowcount != 1:
                duplicates += 1
                continue
            new += 1
            types.append(event_type)
            if attempts:
                event_id = cursor.lastrowid
                conn.executemany(_INSERT_ATTEMPT, [(event_id, *values) for values in attempts])
        return new, duplicates, tuple(types)

    def _advance(self, checkpoint: Checkpoint, now: str) -> None:
        self.conn.execute(
            """INSERT INTO imap_checkpoints (account, folder, uidvalidity, last_uid, updated_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT(account, folder) DO UPDATE SET
                   last_uid = CASE WHEN uidvalidity = excluded.uidvalidity
                                   THEN max(last_uid, excluded.last_uid) ELSE excluded.last_uid END,
                   uidvalidity = excluded.uidvalidity,
                   updated_at = excluded.updated_at""",
            (checkpoint.account, checkpoint.folder, checkpoint.uidvalidity, checkpoint.uid, now),
        )

    def checkpoint(self, account: str, folder: str) -> Checkpoint | None:
        """Return how far `folder` of `account` has been stored, if at all."""
        row = self.conn.execute(
            "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE account = ? AND folder = ?",
            (account, folder),
        ).fetchone()
        return None if row is None else Checkpoint(account, folder, row[0], row[1])

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
                yield StoredDelivery(id_, _kind(channel, raw), raw, status, content_type)

    def reextract(self, delivery_id: int, extraction: Extraction, size: int | None = None) -> Receipt:
        """Add the events a new extraction finds for a stored delivery (of `size` raw bytes) and update its status."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = utcnow()
            found = rows(extraction, size)
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
                (status, error, "\n".join(extraction.notes) or None, new, duplicates, delivery_id),
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


def _kind(channel: str, raw: bytes) -> Kind:
    """Say how a stored delivery's raw bytes are read: emails, or bare documents (HTTP, .xml/.json)."""
    if channel in ("smtp", "imap"):
        return "email"
    if channel == "http":
        return "document"
    return kind_of(raw)


def _status(extraction: Rows, *, seen: bool, new: int, duplicates: int) -> Status:
    if extraction.reason:
        return "duplicate" if seen else "quarantined"
    if new == 0 and (seen or duplicates):
        return "duplicate"
    return "stored"


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
            (id_, Delivery(channel=channel, raw=raw, received_at=received_at, kind=_kind(channel, raw),
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


def committed_checkpoint(path: str | Path, account: str, folder: str) -> Checkpoint | None:
    """Return the committed IMAP checkpoint of `folder`."""
    found = _read_once(
        path, "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE account = ? AND folder = ?", (account, folder)
    )
    return Checkpoint(account, folder, found[0][0], found[0][1]) if found else None


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
