"""`mailhook migrate-to`: copy an SQLite database into PostgreSQL, in batches, resumable, without duplicates.

Rows keep their ids, so every reference (`events.delivery_id`,
`attempts.event_id`, `events.reply_to`) stays true without mapping. Before the
first row is copied the identity sequences are moved past the SQLite file's
largest ids, so nodes already writing to PostgreSQL take ids above them and
never collide with the copy. Each batch (deliveries with their events and
attempts) is one transaction: a copy killed at any point leaves whole
deliveries only, and the next run resumes after the last one committed. An
event whose dedupe key PostgreSQL already holds (a node stored it first) is
not copied again. `reply_to` and the figure tables are not copied: the
triggers compute them on insert exactly as on SQLite.

No wait is unbounded: beside running nodes a statement waits for another
session's lock at most `lock_wait` seconds (`lock_timeout`; a node frozen in
the middle of a batch holds its locks until it wakes or is ended), a batch is
tried `RETRIES` times, and then the copy stops with `LockWaited` (the next
run resumes after the last batch committed). Every statement is one exchange
(multi-row INSERTs, never a pipeline), and the session's idle-in-transaction
timeout lets the server roll back a batch this copy left open if it is
itself stopped (docs/scaling.md, "A node that freezes").
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import errors

from mailhook.store.pg.session import LOCK_WAIT, bound_transactions
from mailhook.store.pg.text import clean, clean_json

log = logging.getLogger("mailhook.store")
T = TypeVar("T")

# Computed by the PostgreSQL triggers from the rows copied, as the SQLite ones computed them.
COMPUTED = {"events": ("reply_to",)}
TABLES = ("deliveries", "events", "attempts")
RETRIES = 5
# Most rows one INSERT holds: the protocol carries at most 65,535 parameters a statement.
MAX_ROWS = 500
MAX_PARAMETERS = 65_535
# Most bytes of text and raw bytes one INSERT holds (a row past it goes alone): a statement is sent in seconds even
# when deliveries carry large messages, never long enough to look like a node frozen mid-exchange (frozen.py).
MAX_BYTES = 8 * 1024 * 1024


class CannotCopy(Exception):
    """The target holds data that is not an earlier copy of this file (or the source is unreadable)."""


class LockWaited(Exception):
    """Another session held a lock a batch needs, `RETRIES` times for the whole `lock_wait`: the copy stopped."""


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a copy is: rows copied by this run, the last delivery id copied, and the source's total."""

    deliveries: int
    events: int
    attempts: int
    last_id: int
    total_deliveries: int
    skipped_events: int = 0


def _columns(source: sqlite3.Connection, target: psycopg.Connection[Any], table: str) -> list[str]:
    """Return the columns of `table` both stores have, in the SQLite file's order (less the computed ones)."""
    theirs = {row[0] for row in target.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
        (table,))}
    ours = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
    return [c for c in ours if c in theirs and c not in COMPUTED.get(table, ())]


def _sequences_past(target: psycopg.Connection[Any], highest: dict[str, int]) -> None:
    """Move each table's identity sequence past `highest[table]` (never back)."""
    for table, top in highest.items():
        if top:
            target.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" greatest(%s, (SELECT coalesce(max(id), 1) FROM {table})))", (top,))


def _resume_point(source: sqlite3.Connection, target: psycopg.Connection[Any], top: int) -> int:
    """Return the last delivery id an earlier run copied (0: none), refusing a target holding other data."""
    found = target.execute("SELECT id, sha256, received_at FROM deliveries WHERE id <= %s ORDER BY id DESC LIMIT 1",
                           (top,)).fetchone()
    if found is None:
        return 0
    last, sha256, received_at = found
    counted = target.execute("SELECT count(*) FROM deliveries WHERE id <= %s", (last,)).fetchone()
    theirs = counted[0] if counted else 0
    mine = source.execute("SELECT sha256, received_at, (SELECT count(*) FROM deliveries WHERE id <= ?)"
                          " FROM deliveries WHERE id = ?", (last, last)).fetchone()
    if mine is None or (mine[0], mine[1], mine[2]) != (sha256, received_at, theirs):
        raise CannotCopy(f"the PostgreSQL database already holds deliveries (up to id {last}) that are not a copy"
                         " of this SQLite file; migrate-to copies into a new database, or resumes its own copy")
    return int(last)


def copy_database(
    source_path: str | Path, target: psycopg.Connection[Any], *, batch: int = 500,
    progress: Callable[[Progress], None] | None = None, lock_wait: float = LOCK_WAIT,
) -> Progress:
    """Copy what `source_path` holds and `target` lacks; return what this run copied.

    `target` must already have mailhook's schema (it is migrated on connect).
    Raises `LockWaited` when another session kept a lock a batch needs for
    `lock_wait` seconds, `RETRIES` times.
    """
    path = Path(source_path)
    if not path.is_file():
        raise CannotCopy(f"no database at {path}")
    source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    # Each `transaction()` below is then a transaction of its own, not a savepoint of one left open.
    target.autocommit = True
    bound_transactions(target, lock_wait=lock_wait)
    try:
        return _copy(source, target, batch, progress, lock_wait)
    except sqlite3.Error as exc:
        raise CannotCopy(f"cannot read {path}: {exc}") from exc
    finally:
        source.close()


def _copy(source: sqlite3.Connection, target: psycopg.Connection[Any], batch: int,
          progress: Callable[[Progress], None] | None, lock_wait: float) -> Progress:
    version = source.execute("PRAGMA user_version").fetchone()[0]
    if version < 4:
        raise CannotCopy(f"the SQLite file has schema version {version}; open it once with this mailhook"
                         " (`mailhook status`, `mailhook serve`) to upgrade it before copying")
    highest = {t: source.execute(f"SELECT coalesce(max(id), 0) FROM {t}").fetchone()[0] for t in TABLES}
    total = source.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    columns = {t: _columns(source, target, t) for t in TABLES}
    last = _patiently(lambda: _start(source, target, highest), "the start of the copy", lock_wait)
    inserts = {
        t: (f"INSERT INTO {t} ({', '.join(columns[t])}) OVERRIDING SYSTEM VALUE VALUES ",
            f"({', '.join(['%s'] * len(columns[t]))})",
            " ON CONFLICT (dedupe_key) DO NOTHING" if t == "events" else "")
        for t in TABLES
    }
    copied = Progress(0, 0, 0, last, total)
    while True:
        rows = source.execute(f"SELECT {', '.join(columns['deliveries'])} FROM deliveries WHERE id > ?"
                              " ORDER BY id LIMIT ?", (last, batch)).fetchall()
        if not rows:
            break
        ids = json.dumps([row[0] for row in rows])
        events = source.execute(f"SELECT {', '.join(columns['events'])} FROM events WHERE delivery_id IN"
                                " (SELECT value FROM json_each(?)) ORDER BY id", (ids,)).fetchall()
        attempts = source.execute(f"SELECT {', '.join(columns['attempts'])} FROM attempts WHERE event_id IN"
                                  " (SELECT id FROM events WHERE delivery_id IN (SELECT value FROM json_each(?)))"
                                  " ORDER BY id", (ids,)).fetchall()
        # SQLite text may hold NUL (a JSON "\u0000" in a message), payloads its escape: stored as the nodes store them.
        rows, events, attempts = (_fit(rows, columns["deliveries"]), _fit(events, columns["events"]),
                                  _fit(attempts, columns["attempts"]))
        present, kept = _patiently(
            functools.partial(_copy_batch, target, inserts, columns, rows, events, attempts),
            f"the batch after delivery {last}", lock_wait)
        last = rows[-1][0]
        copied = Progress(copied.deliveries + len(rows), copied.events + len(present),
                          copied.attempts + len(kept), last, total,
                          copied.skipped_events + len(events) - len(present))
        if progress is not None:
            progress(copied)
    _patiently(lambda: _positions(source, target), "the IMAP folder positions", lock_wait)
    return copied


def _start(source: sqlite3.Connection, target: psycopg.Connection[Any], highest: dict[str, int]) -> int:
    with target.transaction():
        _sequences_past(target, highest)
        return _resume_point(source, target, highest["deliveries"])


def _patiently(step: Callable[[], T], what: str, lock_wait: float) -> T:
    """Run one transaction, again after a deadlock or a lock wait past `lock_wait`; `LockWaited` after `RETRIES`."""
    for attempt in range(1, RETRIES + 1):
        try:
            return step()
        except (errors.DeadlockDetected, errors.SerializationFailure):
            # A node's transaction held the same campaign or numbers; PostgreSQL chose this one to abort.
            if attempt == RETRIES:
                raise
        except errors.LockNotAvailable:
            if attempt == RETRIES:
                raise LockWaited(
                    f"{what}: another session held a lock it needs {RETRIES} times for {lock_wait:g} s"
                    " (storage.busy_timeout; a node frozen in the middle of a batch, or a long transaction:"
                    " see docs/scaling.md, \"A node that freezes\"); nothing of that batch was copied, and a"
                    " rerun resumes after the last batch copied") from None
            log.warning("%s: another session held a lock for %g s; trying again (%d of %d)",
                        what, lock_wait, attempt + 1, RETRIES)
    raise AssertionError("unreachable")


def _insert(cursor: psycopg.Cursor[Any], statement: tuple[str, str, str], found: Sequence[Sequence[Any]]) -> None:
    """Insert `found` in multi-row INSERTs (one exchange each, no pipeline) of `MAX_ROWS` rows or `MAX_BYTES`."""
    head, row, tail = statement
    width = max(1, len(found[0])) if found else 1
    most = max(1, min(MAX_ROWS, MAX_PARAMETERS // width))
    chunk: list[Any] = []
    size = 0
    for values in found:
        chunk.extend(values)
        size += sum(len(v) for v in values if isinstance(v, (bytes, str)))
        if len(chunk) // width >= most or size >= MAX_BYTES:
            cursor.execute(head + ", ".join([row] * (len(chunk) // width)) + tail, chunk)
            chunk, size = [], 0
    if chunk:
        cursor.execute(head + ", ".join([row] * (len(chunk) // width)) + tail, chunk)


def _fit(found: list[Any], columns: list[str]) -> list[Any]:
    """Return SQLite rows as PostgreSQL can hold them: NUL and lone surrogates in text (and payloads) as U+FFFD."""
    return [tuple(clean_json(v) if c == "payload" and isinstance(v, str) else clean(v)
                  for v, c in zip(row, columns, strict=True)) for row in found]


def _copy_batch(target: psycopg.Connection[Any], inserts: dict[str, tuple[str, str, str]],
                columns: dict[str, list[str]], deliveries: list[Any], events: list[Any],
                attempts: list[Any]) -> tuple[set[int], list[Any]]:
    """Insert one batch in one transaction; return the ids of its events now stored, and the attempts kept."""
    with target.transaction(), target.cursor() as cursor:
        _insert(cursor, inserts["deliveries"], deliveries)
        _insert(cursor, inserts["events"], events)
        # A cursor of its own: psycopg 3.3's binary build failed to dump an int list on a cursor after executemany.
        present = {row[0] for row in target.execute(
            "SELECT id FROM events WHERE id = ANY(%s::bigint[])", ([row[0] for row in events],))}
        event_at = columns["attempts"].index("event_id")
        kept = [row for row in attempts if row[event_at] in present]
        _insert(cursor, inserts["attempts"], kept)
    return present, kept


def _positions(source: sqlite3.Connection, target: psycopg.Connection[Any]) -> None:
    """Copy the IMAP folder positions, keeping the further one where PostgreSQL has its own."""
    found: Sequence[tuple[Any, ...]] = source.execute(
        "SELECT account, folder, uidvalidity, last_uid, updated_at FROM imap_checkpoints").fetchall()
    with target.transaction(), target.cursor() as cursor:
        _insert(cursor, (
            "INSERT INTO imap_checkpoints (account, folder, uidvalidity, last_uid, updated_at) VALUES ",
            "(%s, %s, %s, %s, %s)",
            """ ON CONFLICT (account, folder) DO UPDATE SET
                   last_uid = CASE WHEN imap_checkpoints.uidvalidity = excluded.uidvalidity
                                   THEN greatest(imap_checkpoints.last_uid, excluded.last_uid)
                                   ELSE imap_checkpoints.last_uid END"""), found)
