"""A batch's keys on PostgreSQL: the advisory locks on its Message-IDs and dedupe keys, and its first deliveries.

Before its first statement a batch locks its keys (hashed, in sorted order, the
order every node takes them in), so that a Message-ID another node stored
moments ago is seen, and two batches holding the same notifications in
different orders wait for each other instead of deadlocking (`write`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from mailhook.store.pg.connection import Connection
from mailhook.store.pg.text import clean
from mailhook.store.rows import Rows
from mailhook.store.schema import EVENT_COLUMNS

KEY_LOCKS = 1 + int.from_bytes(b"mhk", "big")
"""The advisory lock class (first int4) of the locks on Message-IDs and dedupe keys."""
MAX_KEY_LOCKS = 1000
"""Most key locks one batch takes (each uses a slot of the server's lock table); past it, unique keys alone."""

_DEDUPE = EVENT_COLUMNS.index("dedupe_key")
First = tuple[int, str]
"""A Message-ID's first stored delivery: its id and SHA-256."""


def lock_key(text: str) -> int:
    """Return the advisory lock number (int4) of a Message-ID or dedupe key: the same on every node."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "big",
                          signed=True)


def lock_keys(conn: Connection, batch: Sequence[Rows | Exception | None]) -> None:
    """Take the batch's key locks in one statement, in sorted order (the order every node takes them in)."""
    keys: set[int] = set()
    for found in batch:
        if not isinstance(found, Rows):
            continue  # stored pending (no keys yet), or an item that fails on its own
        if found.message_id:
            keys.add(lock_key("m:" + found.message_id))
        keys.update(lock_key("e:" + str(values[_DEDUPE])) for _, values, _ in found.events)
        if len(keys) >= MAX_KEY_LOCKS:
            break
    if keys:
        # The numbers as one text parameter: psycopg's array dumper for a list of ints failed inside
        # `serve` ('NoneType' object has no attribute 'integer'), so no array adapter is needed.
        conn.execute(
            "SELECT count(pg_advisory_xact_lock(%s, k))"
            " FROM (SELECT k FROM unnest(string_to_array(%s, ',')::int4[]) AS k ORDER BY k) AS s",
            (KEY_LOCKS, ",".join(str(k) for k in sorted(keys)[:MAX_KEY_LOCKS])),
        )


def first_deliveries(conn: Connection, batch: Sequence[Rows | Exception | None]) -> dict[str, First]:
    """Return the first stored delivery (id, sha256) of each Message-ID in the batch, in one query."""
    ids = sorted({found.message_id for found in batch if isinstance(found, Rows) and found.message_id})
    if not ids:
        return {}
    rows_ = conn.execute(
        "SELECT DISTINCT ON (message_id) message_id, id, sha256 FROM deliveries"
        " WHERE message_id IN (SELECT jsonb_array_elements_text(%s::jsonb)) ORDER BY message_id, id",
        (json.dumps([clean(i) for i in ids]),),
    ).fetchall()
    return {message_id: (id_, sha256) for message_id, id_, sha256 in rows_}
