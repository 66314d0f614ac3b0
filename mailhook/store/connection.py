"""Opening the database: mailhook's pragmas, file modes, and the schema migrations; read-only handles for reports."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mailhook.derived import e164, sent_at
from mailhook.errors import ConfigError, RetryLater
from mailhook.models import stored_kind
from mailhook.privileges import FILE_MODE, create_private, database_files, make_directories, restrict
from mailhook.store import walbuf
from mailhook.store.schema import MIGRATIONS

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger("mailhook.store")


WAL_SIZE_LIMIT = 64 * 1024 * 1024

# The page size of a database mailhook creates (SQLite's default is 4,096). Every B-tree a commit
# changes is a page written to the WAL with its checksum, so smaller pages write fewer bytes per
# delivery; analysts' reads were measured at both sizes (docs/performance-log.md, "store8"). A database
# keeps the page size it was made with: in WAL mode only a VACUUM out of it could change it.
PAGE_SIZE = 2048

# sqlite3 binds int, float and str directly but sends every other value, None included, through
# its adapter lookup, which for a type without an adapter asks the protocol for `__adapt__` and
# formats the AttributeError it then discards: ~1,000 instructions per NULL, and an event's row
# has a dozen or more. An adapter registered for None (a C method returning None for any key:
# NULL as before) is found in the first dictionary lookup. Registering is process-wide and
# leaves every other type alone; sqlite3 still binds the None it returns as NULL.
_NO_ADAPTER: dict[object, None] = {}
sqlite3.register_adapter(type(None), _NO_ADAPTER.get)


def connect(
    path: str | Path,
    *,
    busy_timeout: float = 5.0,
    readonly: bool = False,
    mode: int = FILE_MODE,
    buffered_wal: bool = False,
) -> sqlite3.Connection:
    """Open the database with mailhook's pragmas; read-only connections never write or migrate.

    A new database is created with `mode` (0600 by default) before SQLite opens
    it, so its -wal and -shm get the same mode; an existing one readable by
    everyone is restricted to it. `buffered_wal` opens it through the walbuf
    VFS, which writes a commit's WAL frames at once, where that VFS could be loaded.
    """
    if readonly:
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout, check_same_thread=False
        )
    else:
        folder = Path(path).parent
        try:
            # Run by hand before systemd ever created the StateDirectory; systemd adopts it later.
            make_directories(folder)
        except OSError as exc:
            raise ConfigError(f"storage.db: cannot create directory {folder}: {exc.strerror}") from None
        try:
            create_private(Path(path), mode)
        except OSError as exc:
            raise RetryLater(f"cannot create database {path}: {exc.strerror}") from exc
        restrict(database_files(Path(path)), mode)
        new = Path(path).stat().st_size == 0  # SQLite makes an empty file a new database
        # The same file through either VFS: only how this connection writes its WAL differs.
        through_walbuf = buffered_wal and walbuf.available()
        target = f"{Path(path).resolve().as_uri()}?vfs={walbuf.VFS}" if through_walbuf else str(path)
        try:
            conn = sqlite3.connect(
                target, uri=through_walbuf, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise RetryLater(f"cannot open database {path}: {exc}") from exc
        if new:
            # Before anything is written: WAL mode writes the file's header, and with it the page size.
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # After a checkpoint resets the WAL, shrink the file back instead of keeping its peak size.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return conn


def migrate(conn: sqlite3.Connection, *, phone_region: str = "US") -> int:
    """Apply the migrations not yet applied, each in its own transaction; return the schema version.

    Backfills that need Python (E.164 numbers, the emails' Date) call the
    `mailhook_*` SQL functions registered here for the migration only.
    """
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < len(MIGRATIONS):
        conn.create_function("mailhook_e164", 1, lambda number: e164(number, phone_region), deterministic=True)
        conn.create_function("mailhook_sent_at", 2, lambda channel, raw: (
            sent_at(raw) if stored_kind(channel, raw) == "email" else None), deterministic=True)
    applied = 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A second process may have migrated while we waited for the lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                conn.execute("ROLLBACK")
                continue
            for statement in statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied = number
    if applied and version:
        log.info("database upgraded from schema version %d to %d", version, applied)
    elif applied:
        log.info("database created (schema version %d)", applied)
    return len(MIGRATIONS)


def statements(script: str) -> Iterator[str]:
    """Split a migration script into complete statements (triggers contain semicolons)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending
            pending = ""
    if pending.strip():
        yield pending


_statements = statements  # the name the tests have long imported


def open_database(path: str | Path, *, busy_timeout: float = 5.0) -> sqlite_utils.Database:
    """Open (creating and migrating as needed) the database for reading and housekeeping."""
    import sqlite_utils  # only here: with pandas installed, importing it costs ~0.3 s, and writers never need it

    conn = connect(path, busy_timeout=busy_timeout)
    migrate(conn)
    return sqlite_utils.Database(conn)


def open_readonly(path: str | Path, *, busy_timeout: float = 5.0) -> sqlite_utils.Database:
    """Open the database read-only (`mode=ro`), as an analyst's tool should."""
    import sqlite_utils  # as in open_database: not on the writers' start-up

    return sqlite_utils.Database(connect(path, busy_timeout=busy_timeout, readonly=True))

