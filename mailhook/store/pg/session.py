"""Sessions that hold something for a node (a lease, claims): connections that notice a dead peer.

A session-level advisory lock lasts as long as its session. So that a node
that dies, hangs or is cut off loses what it holds within seconds, and not
when the kernel gives up on the connection (minutes), both ends watch it:
libpq's TCP keepalives and `tcp_user_timeout` on the node's side; on the
server's side TCP keepalives too, and `idle_session_timeout` (PostgreSQL 14+),
which ends a session idle longer than `timeout` seconds, so a holder pings
it more often than that (a frozen process stops pinging and is let go).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from mailhook.errors import RetryLater

# The whole life of such a session: seconds between its holder's pings, and of silence before the server ends it.
PING = 3.0
TIMEOUT = 12.0
CONNECT_TIMEOUT = 5


def open_session(conninfo: str, purpose: str, *, timeout: float = TIMEOUT) -> psycopg.Connection[Any]:
    """Connect (autocommit) for a holding session; raise `RetryLater` when the database cannot be reached."""
    try:
        conn = psycopg.connect(
            conninfo, autocommit=True, application_name=f"mailhook {purpose}",
            connect_timeout=CONNECT_TIMEOUT, keepalives=1, keepalives_idle=2, keepalives_interval=2,
            keepalives_count=3, tcp_user_timeout=int(timeout * 1000),
        )
    except psycopg.Error as exc:
        raise RetryLater(f"database unreachable: {_first_line(exc)}") from exc
    try:
        conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
        conn.execute("SET tcp_keepalives_idle = 2")
        conn.execute("SET tcp_keepalives_interval = 2")
        conn.execute("SET tcp_keepalives_count = 3")
        if conn.info.server_version >= 140000:
            conn.execute(f"SET idle_session_timeout = {int(timeout * 1000)}")
    except psycopg.Error as exc:
        close_quietly(conn)
        raise RetryLater(f"database unreachable: {_first_line(exc)}") from exc
    return conn


def close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection that may be broken already."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# Seconds a writer's session may sit inside a transaction without a statement before the server ends it.
# A node frozen mid-batch (stopped, a hung VM) would otherwise hold its row and advisory locks for ever (its
# kernel still answers keepalives), and every other node's commits touching the same rows would wait behind
# it; its batch was not committed, so nothing it acknowledged is lost. A live writer never idles in a
# transaction: extraction is done before the batch starts. The server counts this only once it has answered
# a whole exchange (ReadyForQuery): a node frozen between two messages of one leaves its session "active",
# which only the folder's next poller ends (`lease.AdvisoryLease.fence`).
IDLE_IN_TRANSACTION = 10.0
# Seconds one statement of a writer waits for a lock (another node's batch on the same Message-ID, dedupe key or
# folder) before it fails; the batch is then tried again (`write.RETRIES`), and after that answered RetryLater.
LOCK_WAIT = 5.0


def bound_transactions(conn: psycopg.Connection[Any], *, lock_wait: float = LOCK_WAIT) -> None:
    """Have the server end this session if it idles inside a transaction, and bound its lock waits (a writer's)."""
    conn.execute(f"SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION * 1000)}")
    conn.execute(f"SET lock_timeout = {max(1, int(lock_wait * 1000))}")
    if not conn.autocommit:
        conn.commit()
