"""The SQLite store: schema migrations, the group-commit writer, and read access.

This is the only module that talks to SQLite. One `Writer` thread owns the
write connection; producers hand it deliveries and get a future that resolves
only after the transaction holding their delivery is durable.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from mailhook.errors import RetryLater
from mailhook.models import Checkpoint, Delivery, Extraction, Receipt, to_json
from mailhook.schema import ATTEMPT_COLUMNS, EVENT_COLUMNS, MIGRATIONS

log = logging.getLogger("mailhook.store")

_INSERT_EVENT = (
    f"INSERT INTO events (delivery_id, received_at, {', '.join(EVENT_COLUMNS)}) "
    f"VALUES (?, ?, {', '.join('?' * len(EVENT_COLUMNS))}) ON CONFLICT(dedupe_key) DO NOTHING"
)
_INSERT_ATTEMPT = (
    f"INSERT INTO attempts (event_id, {', '.join(ATTEMPT_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' * len(ATTEMPT_COLUMNS))})"
)
_INSERT_DELIVERY = """
INSERT INTO deliveries (channel, received_at, status, error, message_id, envelope_from, envelope_to,
    subject, content_type, remote_addr, size, sha256, raw, notes, source, event_count, duplicate_count)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def utcnow() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds and a Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def connect(path: str | Path, *, busy_timeout: float = 5.0, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with mailhook's pragmas; read-only connections never write or migrate."""
    if readonly:
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(str(path), timeout=busy_timeout, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied, each in its own transaction; return the schema version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
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
        log.info("database migrated to schema version %d", number)
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
class StoredDelivery:
    """A delivery as stored, for reprocessing."""

    id: int
    kind: str
    raw: bytes
    status: str


class Store:
    """Writes deliveries and their events on one connection, one transaction per batch."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.conn = connect(path, busy_timeout=busy_timeout)
        migrate(self.conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def write(self, items: Sequence[tuple[Delivery, Extraction]]) -> list[Receipt | Exception]:
        """Store a batch in one durable transaction; return each item's receipt or its own error.

        A storage failure (locked, disk full, I/O) raises `RetryLater` for the
        whole batch; an error confined to one item fails only that item.
        """
        conn = self.conn
        results: list[Receipt | Exception] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for delivery, extraction in items:
                    conn.execute("SAVEPOINT item")
                    try:
                        results.append(self._write_one(delivery, extraction))
                        conn.execute("RELEASE item")
                    except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, OverflowError) as exc:
                        conn.execute("ROLLBACK TO item")
                        conn.execute("RELEASE item")
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

    def _write_one(self, delivery: Delivery, extraction: Extraction) -> Receipt:
        conn = self.conn
        now = utcnow()
        message_id = extraction.message_id
        raw: bytes | None = delivery.raw
        seen = False
        if message_id:
            row = conn.execute(
                "SELECT sha256 FROM deliveries WHERE message_id = ? ORDER BY id LIMIT 1", (message_id,)
            ).fetchone()
            if row is not None:
                seen = True
                if row[0] == delivery.sha256:
                    raw = None  # the first delivery holds these exact bytes already
        cursor = conn.execute(
            _INSERT_DELIVERY,
            (
                delivery.channel,
                now,
                "quarantined" if extraction.reason else "stored",
                extraction.reason,
                message_id,
                delivery.envelope_from,
                to_json(list(delivery.envelope_to)) if delivery.envelope_to else None,
                extraction.subject,
                delivery.content_type,
                delivery.remote_addr,
                len(delivery.raw),
                delivery.sha256,
                raw,
                "\n".join(extraction.notes) or None,
                delivery.source,
                0,
                0,
            ),
        )
        delivery_id = cursor.lastrowid
        assert delivery_id is not None
        new, duplicates, types = self._insert_events(delivery_id, now, extraction)
        status = _status(extraction, seen=seen, new=new, duplicates=duplicates)
        conn.execute(
            "UPDATE deliveries SET status = ?, event_count = ?, duplicate_count = ? WHERE id = ?",
            (status, new, duplicates, delivery_id),
        )
        if delivery.checkpoint is not None:
            self._advance(delivery.checkpoint, now)
        return Receipt(delivery_id, status, new, duplicates, extraction.reason, message_id, types)

    def _insert_events(
        self, delivery_id: int, now: str, extraction: Extraction
    ) -> tuple[int, int, tuple[str, ...]]:
        new = duplicates = 0
        types: list[str] = []
        for event in extraction.events:
            row = event.row()
            cursor = self.conn.execute(_INSERT_EVENT, (delivery_id, now, *(row[c] for c in EVENT_COLUMNS)))
            if cursor.rowcount != 1:
                duplicates += 1
                continue
            new += 1
            types.append(event.event_type)
            event_id = cursor.lastrowid
            self.conn.executemany(
                _INSERT_ATTEMPT,
                [(event_id, *(a.row()[c] for c in ATTEMPT_COLUMNS)) for a in event.attempts],
            )
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
                f"SELECT id, channel, raw, status FROM deliveries WHERE {where} AND id > ? ORDER BY id LIMIT 500",
                (last,),
            ).fetchall()
            if not rows:
                return
            for id_, channel, raw, status in rows:
                last = id_
                yield StoredDelivery(id_, _kind(channel, raw), raw, status)

    def reextract(self, delivery_id: int, extraction: Extraction) -> Receipt:
        """Add the events a new extraction finds for a stored delivery and update its status."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = utcnow()
            new, duplicates, types = self._insert_events(delivery_id, now, extraction)
            old_status, old_new = conn.execute(
                "SELECT status, event_count FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            if extraction.reason:
                status, error = old_status if old_status == "duplicate" else "quarantined", extraction.reason
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
        return Receipt(delivery_id, status, new, duplicates, extraction.reason, event_types=types)

    def check_writable(self) -> None:
        """Raise `RetryLater` unless a write transaction can be started right now."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise RetryLater(f"storage unavailable: {exc}") from exc


def _kind(channel: str, raw: bytes) -> str:
    """Say how a stored delivery's raw bytes are read: emails, or bare documents (HTTP, .xml/.json)."""
    if channel in ("smtp", "imap"):
        return "email"
    if channel == "http":
        return "document"
    return "document" if raw.lstrip()[:1] in (b"<", b"{", b"[") else "email"


def _status(extraction: Extraction, *, seen: bool, new: int, duplicates: int) -> str:
    if extraction.reason:
        return "duplicate" if seen else "quarantined"
    if new == 0 and (seen or duplicates):
        return "duplicate"
    return "stored"


Observer = Callable[[int, float], None]
_STOP = object()


@dataclass(slots=True)
class _Job:
    delivery: Delivery | None
    extraction: Extraction | None
    future: Future[Any]


class Writer:
    """The single writer thread: gathers queued deliveries and commits them together.

    `submit()` is thread-safe and returns at once; its future resolves after
    the commit, with a `Receipt`, or with `RetryLater` when storage failed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 5.0,
        max_batch: int = 256,
        observer: Observer | None = None,
    ) -> None:
        self.store = Store(path, busy_timeout=busy_timeout)
        self.max_batch = max_batch
        self.observer = observer
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mailhook-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Return how many deliveries wait for the next commit."""
        return self._queue.qsize()

    def submit(self, delivery: Delivery, extraction: Extraction) -> Future[Receipt]:
        """Queue a delivery for the next group commit."""
        future: Future[Receipt] = Future()
        if self._closed:
            future.set_exception(RetryLater("mailhook is shutting down"))
        else:
            self._queue.put(_Job(delivery, extraction, future))
        return future

    def check(self) -> Future[None]:
        """Return a future that resolves once the writer proved it can start a write transaction."""
        future: Future[None] = Future()
        self._queue.put(_Job(None, None, future))
        return future

    def close(self) -> None:
        """Commit everything queued so far, then stop the thread and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self.store.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Job] = [first]  # type: ignore[list-item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        checks = [job for job in batch if job.delivery is None]
        jobs = [job for job in batch if job.delivery is not None]
        for job in checks:
            try:
                self.store.check_writable()
            except RetryLater as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(None)
        if not jobs:
            return
        started = time.perf_counter()
        try:
            results = self.store.write([(job.delivery, job.extraction) for job in jobs])  # type: ignore[misc]
        except RetryLater as exc:
            log.warning("%s; %d deliveries answered with a temporary failure", exc, len(jobs))
            for job in jobs:
                job.future.set_exception(RetryLater(str(exc)))
            return
        except Exception as exc:
            log.exception("unexpected storage error")
            for job in jobs:
                job.future.set_exception(RetryLater(f"storage error: {type(exc).__name__}"))
            return
        elapsed = time.perf_counter() - started
        if self.observer is not None:
            self.observer(len(jobs), elapsed)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, Exception):
                job.future.set_exception(RetryLater(f"delivery could not be stored: {result}"))
            else:
                job.future.set_result(result)
