"""A batch's events and their attempts inserted in a few multi-row statements, their ids found without RETURNING."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mailhook.derived import e164
from mailhook.models import FolderPosition, Status
from mailhook.store.rows import Rows
from mailhook.store.schema import ATTEMPT_COLUMNS, EVENT_COLUMNS

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
LARGEST_ROWID = 2**63 - 1
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


@dataclass(slots=True)
class Started:
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


def insert_event_rows(conn: sqlite3.Connection, steps: list[Started], *, region: str, sequential_ids: bool) -> None:
    """Insert the events of `steps` in order, then all their attempts, in `_chunks` of rows a statement.

    An event whose dedupe_key is stored already, or taken by an earlier event
    of these, is a duplicate (ON CONFLICT DO NOTHING, rows inserted in order).
    Without `sequential_ids` (the table holds the largest rowid) the ids come
    from RETURNING.
    """
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
        cursor = conn.execute(_INSERT_EVENT, values)
        if cursor.rowcount == 1:
            ids[keys[0]] = cursor.lastrowid  # type: ignore[assignment]  # an insert's rowid is never None
    else:
        for start, count in chunks(conn, len(keys), width):
            chunk = values[start * width:(start + count) * width]
            if not sequential_ids:
                ids.update((key, id_) for id_, key in conn.execute(_insert_events_sql(count), chunk))
                continue
            cursor = conn.execute(_insert_events_plain_sql(count), chunk)
            inserted, last = cursor.rowcount, cursor.lastrowid
            assert last is not None
            if inserted == count:  # the rows' ids in order, as nearly always: none was a duplicate
                ids.update(zip(keys[start:start + count], range(last - count + 1, last + 1), strict=True))
            elif inserted:  # the inserted rows' ids are consecutive still: read their keys back
                ids.update((key, id_) for id_, key in conn.execute(_INSERTED_IDS, (last - inserted + 1, last)))
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
    for start, count in chunks(conn, len(attempts) // width, width):
        conn.execute(_insert_attempts_sql(count), attempts[start * width:(start + count) * width])


def chunks(conn: sqlite3.Connection, total: int, width: int) -> Iterator[tuple[int, int]]:
    """Yield the chunks in which `total` rows of `width` parameters each are inserted (module `_chunks`)."""
    if total >= _ROWS_AT_ONCE and conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) < _ROWS_AT_ONCE * width:
        return _chunks(total, (_ROWS_TAIL,))
    return _chunks(total, (_ROWS_AT_ONCE, _ROWS_TAIL))
