"""A delivery's own row on PostgreSQL: its INSERT, the Message-ID test, and its IMAP folder position."""

from __future__ import annotations

from mailhook.derived import sent_at
from mailhook.models import Delivery, FolderPosition, Status, to_json
from mailhook.store.pg.connection import Connection
from mailhook.store.pg.text import clean
from mailhook.store.rows import Rows

INSERT_DELIVERY = """
INSERT INTO deliveries (channel, received_at, status, error, message_id, envelope_from, envelope_to,
    subject, content_type, remote_addr, size, sha256, raw, notes, source, event_count, duplicate_count, sent_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id
"""
ADVANCE = """
INSERT INTO imap_checkpoints AS c (account, folder, uidvalidity, last_uid, updated_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (account, folder) DO UPDATE SET
    last_uid = CASE WHEN c.uidvalidity = excluded.uidvalidity
                    THEN greatest(c.last_uid, excluded.last_uid) ELSE excluded.last_uid END,
    uidvalidity = excluded.uidvalidity,
    updated_at = excluded.updated_at
"""
POSITION = "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE account = %s AND folder = %s"
"""An IMAP folder's stored position: read by the writer's connection (`position`) and by `reads`."""


def insert_delivery(conn: Connection, delivery: Delivery, sha256: str, now: str, status: Status,
                    found: Rows | None, raw: bytes | None) -> int:
    """Insert a delivery's row with `status` (no events counted yet); return its id."""
    row = conn.execute(INSERT_DELIVERY, (
        delivery.channel, now, status,
        clean(found and found.reason), clean(found and found.message_id),
        clean(delivery.envelope_from),
        clean(to_json(list(delivery.envelope_to))) if delivery.envelope_to else None,
        clean(found and found.subject), clean(delivery.content_type), clean(delivery.remote_addr),
        len(delivery.raw), sha256, raw, clean(found and found.notes), clean(delivery.source), 0, 0,
        clean(sent_at(delivery.raw)) if delivery.kind == "email" else None,
    )).fetchone()
    assert row is not None
    return int(row[0])


def seen(conn: Connection, message_id: str, sha256: str, own_id: int | None) -> tuple[bool, bool]:
    """Say whether a delivery other than `own_id` has this Message-ID, and whether the first one has these bytes."""
    row = conn.execute(
        "SELECT sha256 FROM deliveries WHERE message_id = %s AND id IS DISTINCT FROM %s::bigint"
        " ORDER BY id LIMIT 1",
        (clean(message_id), own_id),
    ).fetchone()
    return row is not None, row is not None and row[0] == sha256


def advance(conn: Connection, position: FolderPosition, now: str) -> None:
    """Record that an IMAP folder is stored up to `position` (a new UIDVALIDITY starts it again)."""
    conn.execute(ADVANCE, (position.account, position.folder, position.uidvalidity, position.uid, now))


def position(conn: Connection, account: str, folder: str) -> FolderPosition | None:
    """Return how far `folder` of `account` has been stored, if at all."""
    row = conn.execute(POSITION, (account, folder)).fetchone()
    return None if row is None else FolderPosition(account, folder, row[0], row[1])
