"""One delivery's events and their attempts inserted on PostgreSQL, each event `ON CONFLICT DO NOTHING RETURNING id`.

Of two nodes storing the same notification at the same instant, one inserts it
and the other, once the first commits, counts a duplicate (`write`).
"""

from __future__ import annotations

from collections.abc import Sequence

from mailhook.derived import e164
from mailhook.store.pg.attempts import insert_attempts
from mailhook.store.pg.connection import Connection
from mailhook.store.pg.text import clean, cleaned
from mailhook.store.rows import Rows
from mailhook.store.schema import EVENT_COLUMNS

_MODIFIED, _CREATED = EVENT_COLUMNS.index("modified"), EVENT_COLUMNS.index("created")
_FROM, _TO = EVENT_COLUMNS.index("from_number"), EVENT_COLUMNS.index("to_number")


def _placeholders(columns: Sequence[str]) -> str:
    return ", ".join("%s::jsonb" if column == "payload" else "%s" for column in columns)


_INSERT_EVENT = (
    f"INSERT INTO events (delivery_id, received_at, event_time, from_e164, to_e164, {', '.join(EVENT_COLUMNS)}) "
    f"VALUES (%s, %s, %s, %s, %s, {_placeholders(EVENT_COLUMNS)}) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
)


def insert_events(conn: Connection, delivery_id: int, now: str, found: Rows, *,
                  region: str) -> tuple[int, int, tuple[str, ...]]:
    """Insert one delivery's events and their attempts; return how many were new, how many not, the new types."""
    new = duplicates = 0
    types: list[str] = []
    for event_type, values, attempts in found.events:
        event_time = values[_MODIFIED] or values[_CREATED] or now
        row = conn.execute(_INSERT_EVENT, (
            delivery_id, now, clean(event_time), e164(values[_FROM], region), e164(values[_TO], region),
            *cleaned(values, EVENT_COLUMNS),
        )).fetchone()
        if row is None:
            duplicates += 1
            continue
        new += 1
        types.append(event_type)
        insert_attempts(conn, row[0], attempts)
    return new, duplicates, tuple(types)
