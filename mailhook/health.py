"""Whether the store takes writes now, said in words: "disk full", "database locked", "storage unavailable".

`/healthz` and `mailhook status --server` answer from two sources: what the
writer's most recent commit did (a failure stands until a commit succeeds or
a probe shows its cause gone), and a cheap probe made on the spot, apart from
the writer so that a writer waiting on a lock cannot make the answer late:

- a write lock, taken and released at once on a connection of its own
  (`BEGIN IMMEDIATE`; waits at most `LOCK_WAIT` seconds);
- room on the disk: a probe file in the database's directory is given
  `need` bytes with fallocate (ENOSPC or a quota says "disk full"), then removed.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

DISK_FULL = "disk full"
LOCKED = "database locked"
UNAVAILABLE = "storage unavailable"

# The least room a healthy store must have: a few pages of WAL for a small delivery.
MIN_ROOM = 64 * 1024
# How long the probe waits for the write lock: long enough to pass a commit, short enough
# that `mailhook status` (5 s per door) hears "database locked" rather than a timeout.
LOCK_WAIT = 1.0
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True, slots=True)
class Failure:
    """A commit that failed: why, in words, how many bytes it tried to store, and when (monotonic)."""

    reason: str
    size: int
    at: float


def in_words(exc: BaseException) -> str:
    """Say why storage failed in words an admin can act on; never the Python error text."""
    cause = exc
    while not isinstance(cause, sqlite3.Error | OSError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(cause).lower()
        if primary == _SQLITE_FULL or "full" in text:
            return DISK_FULL
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
            return LOCKED
    if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
        return DISK_FULL
    return UNAVAILABLE


def probe(path: Path, *, need: int = MIN_ROOM, lock_wait: float = LOCK_WAIT) -> str | None:
    """Return why the store at `path` would refuse a write of `need` bytes now, or None if it would take it."""
    return _room(path, max(need, MIN_ROOM)) or _lock(path, lock_wait)


def _room(path: Path, need: int) -> str | None:
    spare = path.with_name(f".{path.name}.{os.getpid()}.health")  # per process: status may probe beside serve
    try:
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return in_words(exc)
    try:
        os.posix_fallocate(fd, 0, need)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            return in_words(exc)
        # A file system without fallocate: what it says is free has to do.
        stats = os.fstatvfs(fd)
        if stats.f_bavail * stats.f_frsize < need:
            return DISK_FULL
    finally:
        os.close(fd)
        spare.unlink(missing_ok=True)
    return None


def _lock(path: Path, wait: float) -> str | None:
    try:
        # mode=rw: a probe must never create a database that has gone missing.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=wait, isolation_level=None)
    except sqlite3.Error as exc:
        return in_words(exc)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return in_words(exc)
    finally:
        conn.close()
    return None


def verdict(path: Path, last: Failure | None, *, busy_since: float | None, stall: float) -> str | None:
    """Combine the writer's record and a fresh probe into the reason the store refuses writes, or None.

    A failed commit stands until a later commit succeeds (the writer then
    forgets it) or the probe, sized to what failed, passes: so health recovers
    by itself when the disk has room again or the lock is released, even when
    no delivery arrives to prove it.
    """
    if busy_since is not None and time.monotonic() - busy_since > stall:
        return UNAVAILABLE
    return probe(path, need=last.size if last is not None else MIN_ROOM)
