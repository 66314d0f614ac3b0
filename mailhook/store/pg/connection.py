"""Connecting to PostgreSQL (psycopg 3), and the migrations, safe when several nodes start at once.

Every connection is a transaction-per-batch connection (autocommit off),
named `mailhook` in `pg_stat_activity`, and gives up connecting after
`CONNECT_TIMEOUT` seconds unless the URL says otherwise. A password given
apart from the URL (`storage.password`, `storage.password_file`) is passed
to libpq as its `password` parameter; without one libpq reads its own
`PGPASSWORD` or `PGPASSFILE` (~/.pgpass). Error messages are scrubbed of
the password before they are raised.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import conninfo

from mailhook.errors import ConfigError, RetryLater
from mailhook.models import utcnow
from mailhook.store.pg.schema import MIGRATIONS
from mailhook.store.target import PostgresTarget

log = logging.getLogger("mailhook.store")

CONNECT_TIMEOUT = 10
APPLICATION_NAME = "mailhook"
# A server that vanished without closing the connection (power loss, a partition, a failover to another host)
# is noticed within about 30 s instead of the kernel's two hours: a commit then fails (RetryLater) instead of
# holding every delivery in the batch. libpq names; a URL that sets one keeps its own.
LIVENESS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": 30_000}
MIGRATION_LOCK = int.from_bytes(b"mailhook", "big")
"""The advisory lock (one bigint) held while migrating: nodes starting together migrate one at a time."""

Connection = psycopg.Connection[Any]

# What libpq and the server say when they refuse mailhook's settings (role, password, database, pg_hba.conf), not
# when the server is down, starting, full or out of reach: trying again cannot help. Connection failures carry no
# SQLSTATE in libpq, so these are its (English) words; a server answering in another language is retried instead.
REFUSALS = ("authentication failed", "no password supplied", "no pg_hba.conf entry", "pg_hba.conf rejects",
            "is not permitted to log in", "permission denied for database")
# `database "x" does not exist`, `role "x" does not exist`: refusals too, but "too many connections for role" is not.
_MISSING = ('database "', 'role "')


def refusal(text: str) -> bool:
    """Say whether a failed connection's message is the server refusing mailhook's settings (not a passing state)."""
    return any(word in text for word in REFUSALS) or (
        "does not exist" in text and any(word in text for word in _MISSING))


def connection_string(target: PostgresTarget, *, connect_timeout: float = CONNECT_TIMEOUT) -> str:
    """Return the libpq connection string for `target`, with mailhook's defaults where the URL sets none."""
    try:
        given = conninfo.conninfo_to_dict(target.url)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the part it could not read, which may be a piece of the password: not shown then.
        detail = target.scrub(str(exc)) if not target.secrets() else (
            "a password holding @ : / ? # % or a space must be percent-encoded (or given in storage.password_file)")
        raise ConfigError(f"storage.db: not a valid PostgreSQL URL {target}: {detail}") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = max(1, round(connect_timeout))
    if "application_name" not in given:
        extra["application_name"] = APPLICATION_NAME
    extra.update({k: v for k, v in LIVENESS.items() if k not in given})  # libpq ignores them on Unix sockets
    if target.password is not None:
        extra["password"] = target.password
    return conninfo.make_conninfo(target.url, **extra)


def connect(target: PostgresTarget, *, connect_timeout: float = CONNECT_TIMEOUT, strict: bool = False) -> Connection:
    """Open a connection (autocommit off); `RetryLater` naming the server, never the password, when it cannot.

    With `strict` (a node starting, a maintenance command) a server that
    refuses the settings (`refusal`) raises `ConfigError` instead: retrying
    cannot help. A running node keeps retrying even those (a password being
    rotated, a role being recreated), answering "try again later" meanwhile.
    """
    try:
        return psycopg.connect(connection_string(target, connect_timeout=connect_timeout), autocommit=False)
    except psycopg.Error as exc:
        words = target.scrub(_first_line(exc))
        if strict and refusal(words):
            raise ConfigError(f"storage.db: the database refuses mailhook ({target}): {words}") from None
        raise RetryLater(f"database unreachable ({target}): {words}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def schema_version(conn: Connection) -> int:
    """Return how many migrations the database has had (0 for an empty one)."""
    try:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone() if (
            exists and exists[0]) else (0,)
    finally:
        conn.rollback()
    return int(row[0]) if row else 0


def migrate(conn: Connection) -> int:
    """Apply the migrations not yet applied, each in its own transaction; return the schema version.

    Each transaction first takes `pg_advisory_xact_lock(MIGRATION_LOCK)`, so
    of several nodes starting on one empty database one creates the schema
    and the others, once it commits, find it there and apply nothing.
    """
    before = schema_version(conn)
    applied = 0
    for number, script in enumerate(MIGRATIONS, start=1):
        if number <= before:
            continue
        with conn.transaction():
            # A writer's session bounds its lock waits (session.LOCK_WAIT); a migration waits for another node's,
            # and for the readers of a table it alters, however long they take.
            conn.execute("SET LOCAL lock_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations"
                         " (version integer PRIMARY KEY, applied_at text NOT NULL)")
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
            if row is not None and row[0] >= number:
                continue  # another node migrated while we waited for the lock
            conn.execute(script)
            conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)", (number, utcnow()))
        applied = number
    if applied and before:
        log.info("database upgraded from schema version %d to %d", before, applied)
    elif applied:
        log.info("database created (schema version %d)", applied)
    return len(MIGRATIONS)


def open_database(target: PostgresTarget, *, connect_timeout: float = CONNECT_TIMEOUT) -> Connection:
    """Connect and migrate; `RetryLater` when the server cannot be reached, `ConfigError` when it refuses us."""
    conn = connect(target, connect_timeout=connect_timeout, strict=True)
    try:
        migrate(conn)
    except psycopg.OperationalError as exc:
        conn.close()
        raise RetryLater(f"database unreachable ({target}): {target.scrub(_first_line(exc))}") from None
    except BaseException:
        conn.close()
        raise
    return conn
