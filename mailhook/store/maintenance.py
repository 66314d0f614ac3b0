"""Database maintenance behind the admin commands: prune, online backup and health status.

Each opens its own connection (through `mailhook.store.connection.connect`) beside a
running server, and keeps its transactions short so the server's commits
wait only briefly.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailhook.errors import RetryLater
from mailhook.health import in_words
from mailhook.privileges import FILE_MODE, create_private
from mailhook.store.connection import connect
from mailhook.store.interface import PruneResult
from mailhook.store.schema import MIGRATIONS

log = logging.getLogger("mailhook.upkeep")


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no database at {path}")
    return path


def prune(
    path: str | Path, cutoff: datetime, *, keep_raw: bool = False, dry_run: bool = False,
    busy_timeout: float = 5.0, chunk: int = 500,
) -> PruneResult:
    """Delete deliveries received before `cutoff` with their events and attempts.

    With `keep_raw`, only events and attempts go; the deliveries and their raw
    bytes stay (so `mailhook reprocess` could rebuild the events). Deletes run
    in small transactions so a running server's commits are delayed only briefly.
    """
    before = cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    conn = connect(_existing(path), busy_timeout=busy_timeout)
    table = "events" if keep_raw else "deliveries"
    events_of = "SELECT value FROM json_each(?)" if keep_raw else "SELECT id FROM events WHERE delivery_id IN " \
        "(SELECT value FROM json_each(?))"
    totals = [0, 0, 0]
    last = 0
    try:
        while True:
            conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
            try:
                ids = [row[0] for row in conn.execute(
                    f"SELECT id FROM {table} WHERE received_at < ? AND id > ? ORDER BY id LIMIT ?",
                    (before, last, chunk),
                )]
                if not ids:
                    conn.execute("ROLLBACK")
                    break
                last = ids[-1]
                batch = json.dumps(ids)
                counts = [
                    0 if keep_raw else len(ids),
                    conn.execute(f"SELECT count(*) FROM events WHERE id IN ({events_of})", (batch,)).fetchone()[0],
                    conn.execute(f"SELECT count(*) FROM attempts WHERE event_id IN ({events_of})",
                                 (batch,)).fetchone()[0],
                ]
                if not dry_run:
                    conn.execute(f"DELETE FROM attempts WHERE event_id IN ({events_of})", (batch,))
                    conn.execute(f"DELETE FROM events WHERE id IN ({events_of})", (batch,))
                    if not keep_raw:
                        conn.execute("DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?))", (batch,))
                conn.execute("ROLLBACK" if dry_run else "COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
        if not dry_run and any(totals):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:
        raise RetryLater(f"storage unavailable: {exc}") from exc
    finally:
        conn.close()
    log.debug("pruned before %s: %d deliveries, %d events, %d attempts%s", before, *totals,
             " (dry run)" if dry_run else "")
    return PruneResult(*totals)


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A finished backup: where, how big, and what it holds."""

    path: Path
    size: int
    deliveries: int
    events: int


class CannotWrite(Exception):
    """The backup file cannot be written where asked (a missing directory, no space, no permission)."""


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
SQLITE_HEADER = b"SQLite format 3\x00"


def _check_replaceable(target: Path) -> None:
    """Refuse to replace anything but an empty file or an SQLite database (an earlier backup) at `target`.

    The copy is renamed into place, which would silently swap a device node,
    FIFO, socket or symbolic link (run as root: `/dev/full`) or any other file
    (`/etc/passwd`) for a database file.
    """
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    for test, kind in _KINDS:
        if test(info.st_mode):
            raise CannotWrite(f"{target} exists and is {kind}, not a regular file; not replaced")
    if info.st_size:
        try:
            with target.open("rb") as fh:
                header = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise CannotWrite(f"cannot read {target}: {exc.strerror}") from None
        if header != SQLITE_HEADER:
            raise CannotWrite(f"{target} exists and is not an SQLite database; not replaced")


def backup(path: str | Path, target: str | Path, *, busy_timeout: float = 5.0, mode: int = FILE_MODE) -> BackupInfo:
    """Copy the database to `target` with SQLite's online backup API, consistent even while serving.

    The copy is made in one step (one read transaction, so one snapshot; in WAL
    mode the writer is never blocked), checked, made durable, and only then
    renamed into place; the result is a single self-contained file, created
    with `mode` (0600 by default) whatever the umask. An existing `target` is
    replaced only when it is an empty regular file or an SQLite database (an
    earlier backup); anything else (device, FIFO, symbolic link, other file)
    is refused with `CannotWrite`.
    """
    source_path = _existing(path)
    target = Path(target)
    if target.exists() and target.resolve() == source_path.resolve():
        raise ValueError("the backup would overwrite the database itself")
    if not target.parent.is_dir():
        raise CannotWrite(f"directory {target.parent} does not exist")
    _check_replaceable(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        create_private(temporary, mode)
    except OSError as exc:
        raise CannotWrite(f"cannot create {temporary}: {exc.strerror}") from None
    source = sqlite3.connect(str(source_path), timeout=busy_timeout)
    try:
        destination = sqlite3.connect(str(temporary), isolation_level=None)
        try:
            source.backup(destination)
            destination.execute("PRAGMA journal_mode=DELETE")
            problem = destination.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise ValueError(f"the copy failed its check: {problem}")
            deliveries, events = (
                destination.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("deliveries", "events")
            )
        finally:
            destination.close()
        with temporary.open("rb+") as fh:
            os.fsync(fh.fileno())
        _check_replaceable(target)  # again: the copy took a while, and the rename would replace anything
        os.replace(temporary, target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except sqlite3.Error as exc:
        temporary.unlink(missing_ok=True)
        raise CannotWrite(in_words(exc)) from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    log.debug("backup of %s written to %s", source_path, target)
    return BackupInfo(target, target.stat().st_size, deliveries, events)


def status(path: str | Path, *, busy_timeout: float = 5.0) -> dict[str, Any]:
    """Describe the database for health checks: schema version, sizes, counts, newest delivery."""
    db = _existing(path)
    wal = db.with_name(db.name + "-wal")
    try:
        conn = connect(db, busy_timeout=busy_timeout, readonly=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            report: dict[str, Any] = {
                "database": str(db),
                "schema_version": version,
                "schema_expected": len(MIGRATIONS),
                "size_bytes": db.stat().st_size,
                "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            }
            if version:
                report.update(zip(
                    ("deliveries", "quarantined", "pending", "events", "last_delivery_at"),
                    conn.execute(
                        "SELECT (SELECT count(*) FROM deliveries),"
                        " (SELECT count(*) FROM deliveries WHERE status = 'quarantined'),"
                        " (SELECT count(*) FROM deliveries WHERE status = 'pending'),"
                        " (SELECT count(*) FROM events), (SELECT max(received_at) FROM deliveries)"
                    ).fetchone(),
                    strict=True,
                ))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise RetryLater(f"database {db}: {in_words(exc)}") from exc
    return report
