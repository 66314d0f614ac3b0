"""The admin commands' work on PostgreSQL: prune, status, the writability probe, and reprocessing's store.

As on SQLite (`mailhook.store.maintenance`), each opens its own connection
beside running nodes and keeps its transactions short: prune deletes in
chunks of `chunk` deliveries, each its own transaction, so the nodes' commits
wait only briefly; the figure triggers keep `campaigns` and `event_totals`
exact through every delete.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg

from mailhook.errors import RetryLater
from mailhook.store.interface import PruneResult
from mailhook.store.pg.connection import connect, schema_version
from mailhook.store.pg.schema import MIGRATIONS
from mailhook.store.pg.session import bound_transactions
from mailhook.store.target import PostgresTarget

log = logging.getLogger("mailhook.upkeep")


def _unavailable(target: PostgresTarget, exc: psycopg.Error) -> RetryLater:
    text = str(exc).strip().splitlines()
    return RetryLater(f"database {target}: {target.scrub(text[0] if text else type(exc).__name__)}")


def prune(
    target: PostgresTarget, cutoff: datetime, *, keep_raw: bool = False, dry_run: bool = False,
    busy_timeout: float = 5.0, chunk: int = 500,
) -> PruneResult:
    """Delete deliveries received before `cutoff` with their events and attempts (see the SQLite `prune`)."""
    before = cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    table = "events" if keep_raw else "deliveries"
    events_of = "%(ids)s::bigint[]" if keep_raw else \
        "ARRAY(SELECT id FROM events WHERE delivery_id = ANY(%(ids)s::bigint[]))"
    totals = [0, 0, 0]
    last = 0
    conn = connect(target, connect_timeout=max(busy_timeout, 1.0))
    conn.autocommit = True  # each chunk's `transaction()` commits on its own
    try:
        # Wait for a node's commit no longer than the busy timeout, as SQLite would (0: 1 ms, not PostgreSQL's
        # "no limit"); a prune stopped mid-chunk is rolled back by the server instead of holding its rows.
        bound_transactions(conn, lock_wait=busy_timeout)
        while True:
            with conn.transaction(force_rollback=dry_run):
                ids = [row[0] for row in conn.execute(
                    f"SELECT id FROM {table} WHERE received_at < %s AND id > %s ORDER BY id LIMIT %s",
                    (before, last, chunk))]
                if not ids:
                    break
                last = ids[-1]
                params = {"ids": ids}
                events = conn.execute(f"SELECT count(*) FROM events WHERE id = ANY({events_of})", params).fetchone()
                attempts = conn.execute(f"SELECT count(*) FROM attempts WHERE event_id = ANY({events_of})",
                                        params).fetchone()
                counts = [0 if keep_raw else len(ids), int(events[0]) if events else 0,
                          int(attempts[0]) if attempts else 0]
                if not dry_run:
                    conn.execute(f"DELETE FROM attempts WHERE event_id = ANY({events_of})", params)
                    conn.execute(f"DELETE FROM events WHERE id = ANY({events_of})", params)
                    if not keep_raw:
                        conn.execute("DELETE FROM deliveries WHERE id = ANY(%(ids)s::bigint[])", params)
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
    except psycopg.Error as exc:
        raise _unavailable(target, exc) from None
    finally:
        conn.close()
    log.debug("pruned before %s: %d deliveries, %d events, %d attempts%s", before, *totals,
              " (dry run)" if dry_run else "")
    return PruneResult(*totals)


def status(target: PostgresTarget, *, busy_timeout: float = 5.0) -> dict[str, Any]:
    """Describe the database for health checks: schema version, size, counts, newest delivery."""
    conn = connect(target, connect_timeout=max(busy_timeout, 1.0))
    try:
        version = schema_version(conn)
        report: dict[str, Any] = {
            "database": str(target),
            "schema_version": version,
            "schema_expected": len(MIGRATIONS),
        }
        row = conn.execute("SELECT pg_database_size(current_database()), pg_is_in_recovery(),"
                           " current_setting('server_version')").fetchone()
        assert row is not None
        report.update(size_bytes=int(row[0]), standby=bool(row[1]), server_version=row[2])
        if version:
            found = conn.execute(
                "SELECT (SELECT count(*) FROM deliveries),"
                " (SELECT count(*) FROM deliveries WHERE status = 'quarantined'),"
                " (SELECT count(*) FROM deliveries WHERE status = 'pending'),"
                " (SELECT count(*) FROM events), (SELECT max(received_at) FROM deliveries)").fetchone()
            assert found is not None
            report.update(zip(("deliveries", "quarantined", "pending", "events", "last_delivery_at"), found,
                              strict=True))
        conn.rollback()
    except psycopg.Error as exc:
        raise _unavailable(target, exc) from None
    finally:
        conn.close()
    return report


def writable(target: PostgresTarget, *, timeout: float = 5.0) -> str | None:
    """Return why the database would refuse a write now (unreachable, a read-only standby), or None."""
    try:
        conn = connect(target, connect_timeout=timeout)
    except RetryLater as exc:
        return str(exc)
    try:
        row = conn.execute("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'").fetchone()
        return "read-only (a standby, or default_transaction_read_only)" if row and row[0] else None
    except psycopg.Error as exc:
        return str(_unavailable(target, exc))
    finally:
        conn.close()


def open_store(target: PostgresTarget, **options: Any) -> Any:
    """Return the store `mailhook reprocess` re-extracts stored deliveries with, on PostgreSQL."""
    from mailhook.store.pg.reprocess import ReprocessStore

    return ReprocessStore(target, **options)


# What a refused connection says when the settings are wrong, not the server down (libpq's messages).
_CONFIG_PROBLEMS = ("password authentication failed", "no password supplied", "does not exist",
                    "role", "pg_hba.conf", "invalid", "certificate")


def describe(target: PostgresTarget, *, timeout: float = 5.0) -> dict[str, Any]:
    """Connect (never migrating) and return the server version, schema version and whether it is a standby.

    Raises `ConfigError` when the server refuses the settings (password, user,
    database name, URL) and `RetryLater` when it cannot be reached.
    """
    from mailhook.errors import ConfigError
    from mailhook.store.pg.connection import connection_string

    try:
        conn = psycopg.connect(connection_string(target, connect_timeout=timeout), autocommit=False)
    except psycopg.Error as exc:
        text = target.scrub(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        if any(problem in text for problem in _CONFIG_PROBLEMS):
            raise ConfigError(f"storage.db: {target}: {text}") from None
        raise RetryLater(f"database unreachable ({target}): {text}") from None
    try:
        row = conn.execute("SELECT current_setting('server_version'), pg_is_in_recovery()").fetchone()
        assert row is not None
        conn.rollback()
        return {"server_version": row[0], "standby": bool(row[1]), "schema_version": schema_version(conn),
                "schema_expected": len(MIGRATIONS)}
    finally:
        conn.close()
