"""The backlog's pending deliveries on PostgreSQL, each claimed by one node at a time.

A claim is a session-level advisory lock on the delivery's id, taken with
`pg_try_advisory_lock` (it never waits) on the queue's own connection: two
nodes never extract the same delivery at once, and a node that dies lets go
of its claims with its session, at once when killed and within
`session.TIMEOUT` seconds when it hangs (see `mailhook.store.pg.session`).
The candidates are chosen first, in a materialised CTE, so that the lock
function runs on them alone and no lock is taken on a row not returned; a
window of candidates other nodes hold whole is passed, and the next looked at.
Completing a delivery (`UPDATE ... WHERE status = 'pending'` in the write
path) stays the final guard: a delivery completed twice gets its events once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

import psycopg

from mailhook.errors import RetryLater
from mailhook.models import Delivery, stored_kind
from mailhook.store.pg.session import close_quietly, open_session

# The advisory lock space of claims (the two-int4 form: this, and the id folded into an int4).
CLAIMS = 0x6D68_0001

_CLAIM = """
WITH candidates AS MATERIALIZED (
    SELECT id, size FROM deliveries
    WHERE status = 'pending' AND id > %(after)s AND NOT (id = ANY(string_to_array(%(mine)s, ',')::bigint[]))
    ORDER BY id LIMIT %(limit)s
)
SELECT id, size, pg_try_advisory_lock(%(space)s, (id %% 2147483647)::int) FROM candidates ORDER BY id
"""
# Windows of candidates one claim looks through before it gives up (others hold every one of them).
WINDOWS = 64

_RELEASE = ("SELECT pg_advisory_unlock(%(space)s, (id %% 2147483647)::int)"
            " FROM unnest(string_to_array(%(ids)s, ',')::bigint[]) AS id")


class PgPendingQueue:
    """The pending deliveries of a PostgreSQL database several nodes share (`PendingQueue`); thread-safe."""

    shared = True

    def __init__(self, conninfo: str) -> None:
        self.source: str = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        self._mine: set[int] = set()
        self._lock = threading.Lock()

    def claim(self, after: int, limit: int) -> list[tuple[int, int]]:
        """Claim up to `limit` pending deliveries after id `after` that no node has claimed (this one included)."""
        with self._lock:
            for _ in range(WINDOWS):
                rows = self._query(_CLAIM, {"after": after, "mine": _ids(self._mine), "limit": limit,
                                            "space": CLAIMS})
                found = [(int(id_), int(size)) for id_, size, claimed in rows if claimed]
                self._mine.update(id_ for id_, _ in found)
                if found or len(rows) < limit:
                    return found
                after = int(rows[-1][0])  # a window other nodes claimed whole: look past it
            return []

    def release(self, ids: Sequence[int]) -> None:
        """Let go of claims; nothing to do for those the session lost with itself."""
        with self._lock:
            mine = [id_ for id_ in ids if id_ in self._mine]
            self._mine.difference_update(mine)
            if mine and self._conn is not None:
                self._query(_RELEASE, {"space": CLAIMS, "ids": _ids(mine)})

    def count(self) -> int:
        """Return how many deliveries wait for their events, on every node."""
        with self._lock:
            rows = self._query("SELECT count(*) FROM deliveries WHERE status = 'pending'", {})
            return int(rows[0][0])

    def close(self) -> None:
        """Close the session: every claim it holds is let go."""
        with self._lock:
            self._mine.clear()
            close_quietly(self._conn)
            self._conn = None

    def _query(self, sql: str, params: dict[str, Any]) -> list[Any]:
        if self._conn is None:
            self._mine.clear()  # a new session holds nothing
            self._conn = open_session(self.source, "backlog claims")
        try:
            return self._conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            close_quietly(self._conn)
            self._conn = None
            self._mine.clear()
            raise RetryLater(f"database unreachable: {exc}") from exc


class PgPendingReader:
    """Reads claimed pending deliveries back from PostgreSQL, as received (one connection per worker process)."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # extraction threads (no worker processes) share one reader

    def read(self, ids: Sequence[int]) -> list[tuple[int, Delivery]]:
        """Read back the deliveries among `ids` that are still pending; `RetryLater` if unreadable."""
        with self._lock:
            return self._read(ids)

    def _read(self, ids: Sequence[int]) -> list[tuple[int, Delivery]]:
        try:
            if self._conn is None:
                self._conn = psycopg.connect(self.conninfo, autocommit=True, application_name="mailhook backlog")
            found = self._conn.execute(
                "SELECT id, channel, received_at, raw, envelope_from, envelope_to, remote_addr, content_type, source"
                " FROM deliveries WHERE id = ANY(string_to_array(%s, ',')::bigint[]) AND status = 'pending'"
                " ORDER BY id",
                (_ids(ids),),
            ).fetchall()
        except psycopg.Error as exc:
            close_quietly(self._conn)
            self._conn = None
            raise RetryLater(f"database unreachable: {exc}") from exc
        return [
            (int(id_), Delivery(channel=channel, raw=bytes(raw), received_at=_text_time(received_at),
                                kind=stored_kind(channel, bytes(raw)), envelope_from=sender,
                                envelope_to=tuple(_list(to)), remote_addr=peer, content_type=content_type,
                                source=source))
            for id_, channel, received_at, raw, sender, to, peer, content_type, source in found
            if raw is not None
        ]

    def close(self) -> None:
        """Close the connection, if open."""
        with self._lock:
            close_quietly(self._conn)
            self._conn = None


def _ids(ids: Iterable[int]) -> str:
    """Return ids as one text parameter: psycopg's dumper of a list of ints fails inside `serve`
    ('NoneType' object has no attribute 'integer'; seen by the write path too), and text needs none."""
    return ",".join(str(int(id_)) for id_ in sorted(ids))


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return list(json.loads(value))
    return list(value)


def _text_time(value: Any) -> str:
    if isinstance(value, str):
        return value
    # A timestamptz, written back as the rest of mailhook writes times (ISO 8601, milliseconds, Z).
    return f"{value.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')}.{value.microsecond // 1000:03d}Z"
