"""Ending the sessions of nodes frozen in the middle of an exchange, when a live node's writes keep meeting locks.

A node frozen (a paused VM, a process stopped or hung) after it sent part of a
statement leaves its session "active", waiting for the rest (`ClientRead`):
no server timeout ends it, and it keeps its batch's locks (Message-IDs, dedupe
keys, campaign rows) however long it stays frozen. A folder's next poller ends
such a batch of the folder's (`lease.AdvisoryLease.fence`); this ends those of
SMTP and HTTP deliveries. A writer whose batch met lock timeouts on every try
(`write.RETRIES`) calls `end_frozen`: it ends the sessions of the same
application and database that have waited `FROZEN_AFTER` seconds for their
client in the middle of an exchange. A live node never does: each of its
statements is one exchange sent at once (no pipeline), and its connections
give up on a server that stops taking data after 30 s themselves
(`connection.LIVENESS`, `tcp_user_timeout`). Ending a session rolls back its
uncommitted batch, which was not acknowledged: nothing is lost, and the node,
if it wakes, finds its connection gone and reconnects.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import errors as pg_errors

log = logging.getLogger("mailhook.store")

FROZEN_AFTER = 30.0
"""Seconds a session must have waited for its client in the middle of an exchange before it counts as frozen."""

# Sessions of this application in this database, other than this one, that have waited on their client in the
# middle of a statement for `after` seconds, each ended (PostgreSQL 14+: waiting up to 5 s for it to exit).
_END_FROZEN = """
WITH frozen AS MATERIALIZED (
    SELECT pid, client_addr, round(extract(epoch FROM now() - state_change)) AS stuck
    FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = current_setting('application_name')
      AND pid <> pg_backend_pid() AND state = 'active' AND wait_event_type = 'Client' AND wait_event = 'ClientRead'
      AND state_change < now() - make_interval(secs => %s)
)
SELECT pid, client_addr, stuck FROM frozen WHERE pg_terminate_backend(pid{wait})
"""


def end_frozen(conn: psycopg.Connection[Any], *, after: float = FROZEN_AFTER) -> int:
    """End the sessions frozen mid-exchange for `after` seconds (see the module); return how many were ended.

    Runs outside any transaction of `conn`'s (autocommit or just rolled back). A
    role that may not end them (not the same role, nor in pg_signal_backend) is
    logged, and 0 returned: the writes wait for the frozen node to wake or die.
    """
    wait = ", 5000" if conn.info.server_version >= 140000 else ""
    try:
        rows = conn.execute(_END_FROZEN.format(wait=wait), (after,)).fetchall()
        if not conn.autocommit:
            conn.commit()
    except pg_errors.InsufficientPrivilege as exc:
        if not conn.autocommit:
            conn.rollback()
        log.warning("a session frozen in the middle of an exchange holds what this batch needs and may not be"
                    " ended (%s); writes wait for it", str(exc).strip().splitlines()[0])
        return 0
    for pid, client, stuck in rows:
        log.warning("ended session %d (from %s) of a node frozen in the middle of an exchange for %ss: it held"
                    " what this batch needs; its uncommitted batch is rolled back", pid, client or "a local socket",
                    stuck)
    return len(rows)
