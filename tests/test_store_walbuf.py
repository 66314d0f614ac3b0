"""The writer's WAL through the walbuf VFS: nothing committed lost or unseen, SQLite's own errors, and a fallback."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_health import fill, small_disk  # noqa: F401 (small_disk: the fixture, a real 8 MiB tmpfs)

from mailhook.store import walbuf
from mailhook.store.connection import connect

SQLITE_FULL = 13


@pytest.fixture
def shim() -> None:
    """The VFS loaded into this process: required under CI (where it must build), else skipped where not built."""
    if os.environ.get("CI"):
        assert walbuf.available(), "CI must prove the writer's WAL goes through walbuf: the extension did not load"
    elif not walbuf.available():
        pytest.skip("the walbuf extension is not built here")


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The extension as if never built: the next `available()` looks for it again and finds nothing."""
    monkeypatch.setattr(walbuf, "library", lambda: None)
    monkeypatch.setattr(walbuf, "_loaded", None)
    yield
    monkeypatch.undo()  # the real answer back for later tests (the VFS itself stays registered)


def _writer(db: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = connect(db, buffered_wal=True)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB, tag TEXT)")
    conn.execute("CREATE INDEX IF NOT EXISTS t_tag ON t(tag)")
    return conn


def _commit(conn: sqlite3.Connection, first: int, rows: int = 5, size: int = 1500) -> None:
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, randomblob(?), hex(randomblob(8)))",
                     [(first + i, size) for i in range(rows)])
    conn.execute("COMMIT")


_READER = textwrap.dedent("""
    import sqlite3, sys
    reader = sqlite3.connect(sys.argv[1], isolation_level=None)
    for line in sys.stdin:
        print(*reader.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM t").fetchone(), flush=True)
""")


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL", "OFF"])
def test_a_reader_in_another_process_sees_every_committed_row_as_soon_as_it_is_committed(
    shim: None, tmp_path: Path, synchronous: str
) -> None:
    # NORMAL and OFF never call xSync on a commit: the frames must reach the file before the wal-index says so.
    db = tmp_path / "walbuf.db"
    writer = _writer(db, synchronous)
    seen = []
    with subprocess.Popen([sys.executable, "-c", _READER, str(db)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as reader:
        assert reader.stdin is not None and reader.stdout is not None
        try:
            for commit in range(150):  # ~1,400 frames: past the 1,000-page autocheckpoint, the WAL restarts at 0
                _commit(writer, commit * 5)
                reader.stdin.write("?\n")
                reader.stdin.flush()
                seen.append(reader.stdout.readline().split())
        finally:
            reader.stdin.close()
            writer.close()
    assert seen == [[str((n + 1) * 5), str((n + 1) * 5 * 1500)] for n in range(150)]


_KILLED_WRITER = textwrap.dedent("""
    import sqlite3, sys
    from mailhook.store import walbuf
    from mailhook.store.connection import connect
    assert walbuf.available() or sys.argv[2] == "fallback"
    conn = connect(sys.argv[1], buffered_wal=True)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB, tag TEXT)")
    first = 0
    while True:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, randomblob(1500), 'x')", [(first + i,) for i in range(7)])
        conn.execute("COMMIT")
        first += 7
        print(first, flush=True)  # rows 0 .. first-1 committed
""")


def test_kill_9_of_the_writer_mid_stream_loses_no_committed_row(shim: None, tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    with subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(db), "shim"], stdout=subprocess.PIPE,
                          text=True, cwd=Path(__file__).parent.parent) as writer:
        assert writer.stdout is not None
        committed = 0
        for _ in range(150):  # mid-stream: it writes on while we read, and is killed between any two system calls
            committed = int(writer.stdout.readline())
        os.kill(writer.pid, signal.SIGKILL)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        count, top = conn.execute("SELECT count(*), max(id) FROM t").fetchone()
    finally:
        conn.close()
    assert count >= committed and count == top + 1


@pytest.mark.parametrize("buffered", [True, False], ids=["walbuf", "default-vfs"])
def test_a_full_disk_fails_the_commit_with_sqlites_own_error_and_keeps_every_earlier_row(
    shim: None, small_disk: Path, buffered: bool  # noqa: F811 (the fixture imported above)
) -> None:
    db = small_disk / "full.db"
    conn = connect(db, buffered_wal=buffered)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB, tag TEXT)")
    _commit(conn, 0)
    filler = fill(small_disk)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full") as failed:
        _commit(conn, 5, rows=40)
    assert failed.value.sqlite_errorcode == SQLITE_FULL
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    filler.unlink()
    _commit(conn, 5, rows=40)
    conn.close()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert check.execute("SELECT count(*), max(id) FROM t").fetchone() == (45, 44)
    finally:
        check.close()


@pytest.mark.parametrize("mode", ["PASSIVE", "RESTART", "TRUNCATE"])
def test_a_checkpoint_and_a_restarted_wal_through_walbuf_leave_an_intact_database(
    shim: None, tmp_path: Path, mode: str
) -> None:
    db = tmp_path / "checkpointed.db"
    conn = _writer(db)
    for commit in range(30):
        _commit(conn, commit * 5)
    conn.execute(f"PRAGMA wal_checkpoint({mode})")
    for commit in range(30, 60):  # after RESTART or TRUNCATE the next commit writes the WAL header at offset 0
        _commit(conn, commit * 5)
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    _commit(conn, 300)
    plain = sqlite3.connect(db)
    try:
        assert plain.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert plain.execute("SELECT count(*) FROM t").fetchone() == (305,)
    finally:
        plain.close()
        conn.close()


def test_without_the_extension_the_writer_uses_sqlites_default_vfs_and_says_so_once(
    fallback: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailhook.store")
    first = _writer(tmp_path / "plain.db")
    second = _writer(tmp_path / "plain.db")
    _commit(first, 0)
    _commit(second, 5)
    first.close()
    second.close()
    assert [r.getMessage() for r in caplog.records if "default VFS" in r.getMessage()] == [
        "the writer writes its WAL through SQLite's default VFS: "
        "the walbuf extension was not built (it needs a C compiler and sqlite3ext.h when installing)"]
    assert walbuf.available() is False
    plain = sqlite3.connect(tmp_path / "plain.db")
    assert plain.execute("SELECT count(*) FROM t").fetchone() == (10,)
    plain.close()


_STORE_WRITER = textwrap.dedent("""
    import sys
    from mailhook.store import walbuf
    from mailhook.store.write import Store
    if sys.argv[2] == "fallback":
        walbuf.library = lambda: None
    conn = Store(sys.argv[1]).conn  # the service's writer: its connection, created and migrated
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB, tag TEXT)")
    conn.execute("CREATE INDEX t_tag ON t(tag)")
    for commit in range(20):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, randomblob(1500), hex(randomblob(8)))",
                         [(commit * 30 + i,) for i in range(30)])
        conn.execute("COMMIT")
""")


def _wal_writes(tmp_path: Path, how: str) -> int:
    trace = tmp_path / f"{how}.strace"
    subprocess.run(["strace", "-f", "-y", "-e", "trace=pwrite64", "-o", str(trace), sys.executable, "-c",
                    _STORE_WRITER, str(tmp_path / f"{how}.db"), how], check=True, cwd=Path(__file__).parent.parent)
    # -y names each descriptor's file; the last connection's closing checkpoint writes the database, not the WAL.
    return sum("-wal>," in line for line in trace.read_text().splitlines())


@pytest.mark.needs("strace", "strace")
def test_the_stores_connection_writes_a_commits_wal_frames_in_a_write_or_two_not_two_per_frame(
    shim: None, tmp_path: Path
) -> None:
    # The migrations, then 20 commits of some 30 frames each: ~1,800 writes to the WAL without walbuf (two a
    # frame), one or two a commit with it (~35).
    buffered, plain = _wal_writes(tmp_path, "shim"), _wal_writes(tmp_path, "fallback")
    assert plain > 1000
    assert buffered * 20 < plain
