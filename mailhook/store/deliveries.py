"""A delivery's own row: its INSERT (with or without its bytes), the Message-ID test, and its IMAP folder position."""

from __future__ import annotations

import sqlite3

from mailhook.derived import sent_at
from mailhook.models import Delivery, FolderPosition, Status, to_json
from mailhook.store.rows import Rows, mend

INSERT_DELIVERY = """
INSERT INTO deliveries (channel, received_at, status, error, message_id, envelope_from, envelope_to,
    subject, content_type, remote_addr, size, sha256, raw, notes, source, event_count, duplicate_count, sent_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# The same, keeping no copy of the bytes (`raw` NULL) when the first delivery with this Message-ID
# (?5) has the same SHA-256 (?12): what `seen` says, asked inside the INSERT rather than by a
# statement of its own (bench/store_calls.py --callgrind: see `Store._write_one`). The scalar
# subquery of a VALUES list runs before the row is inserted, through `deliveries_message_id`.
INSERT_DELIVERY_ONCE = INSERT_DELIVERY.replace(
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,\n"
    "    CASE WHEN (SELECT f.sha256 FROM deliveries AS f WHERE f.message_id = ?5 ORDER BY f.id LIMIT 1) = ?12\n"
    "         THEN NULL ELSE ?13 END, ?14, ?15, ?16, ?17, ?18)")
assert INSERT_DELIVERY_ONCE != INSERT_DELIVERY


def seen(conn: sqlite3.Connection, message_id: str | None, sha256: str, own_id: int | None) -> tuple[bool, bool]:
    """Say whether another delivery has this Message-ID, and whether the first one has these exact bytes."""
    if not message_id:
        return False, False
    row = conn.execute(
        "SELECT sha256 FROM deliveries WHERE message_id = ? AND id IS NOT ? ORDER BY id LIMIT 1",
        (message_id, own_id),
    ).fetchone()
    # Same bytes: the first delivery holds them already, so this one keeps no copy.
    return row is not None, row is not None and row[0] == sha256


def insert_delivery(conn: sqlite3.Connection, delivery: Delivery, sha256: str, now: str, status: Status,
                    found: Rows | None, raw: bytes | None, *, mending: bool = False, event_count: int = 0,
                    sql: str = INSERT_DELIVERY) -> int:
    """Insert a delivery's row with `status` and `event_count`; return its id."""
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
    cursor = conn.execute(sql, tuple(map(mend, values)) if mending else values)
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def advance(conn: sqlite3.Connection, position: FolderPosition, now: str) -> None:
    """Record that an IMAP folder is stored up to `position` (a new UIDVALIDITY starts it again)."""
    conn.execute(
        """INSERT INTO imap_checkpoints (account, folder, uidvalidity, last_uid, updated_at)
           VALUES (?, ?, ?, ?, ?)
           ON CONFLICT(account, folder) DO UPDATE SET
               last_uid = CASE WHEN uidvalidity = excluded.uidvalidity
                               THEN max(last_uid, excluded.last_uid) ELSE excluded.last_uid END,
               uidvalidity = excluded.uidvalidity,
               updated_at = excluded.updated_at""",
        (position.account, position.folder, position.uidvalidity, position.uid, now),
    )


def position(conn: sqlite3.Connection, account: str, folder: str) -> FolderPosition | None:
    """Return how far `folder` of `account` has been stored, if at all."""
    row = conn.execute(
        "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE account = ? AND folder = ?",
        (account, folder),
    ).fetchone()
    return None if row is None else FolderPosition(account, folder, row[0], row[1])
