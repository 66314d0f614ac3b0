"""The checkpointer thread: it copies the WAL back beside the writer, the writer's own checkpoint only a net."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT, free_port, listening, wait_until
from smtp_support import notification
from test_store import email, rows, text_event

from mailhook.models import Extraction
from mailhook.store import wal_index, write
from mailhook.store import writer as writer_module
from mailhook.store.checkpointer import Checkpointer
from mailhook.store.connection import PAGE_SIZE
from mailhook.store.write import Store
from mailhook.store.writer import Writer

ROOT = Path(__file__).resolve().parent.parent
PAGES = 200  # CHECKPOINT_BYTES in these tests: 200 pages of 2 KiB; the checkpointer's threshold is twice that
BODY = b"x" * 1500


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mailhook.db"


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write, "CHECKPOINT_BYTES", PAGES * PAGE_SIZE)


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread that ran each checkpoint the checkpointer made."""
    ran: list[str] = []
    checkpoint = Checkpointer._checkpoint

    def recorded(self: Checkpointer) -> tuple[int, int, int] | None:
        ran.append(threading.current_thread().name)
        return checkpoint(self)

    monkeypatch.setattr(Checkpointer, "_checkpoint", recorded)
    return ran


def _deliver(writer: Writer, numbers: range, sessions: int = 1) -> None:
    """Store one email per number, `sessions` at a time as that many clients would, each waiting for its answer."""
    def one(n: int) -> None:
        receipt = writer.submit(email(f"<{n}@t>", BODY), Extraction(message_id=f"<{n}@t>", events=(text_event(n),)))
        assert receipt.result(timeout=60).status == "stored"

    if sessions == 1:
        for n in numbers:
            one(n)
        return
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(one, numbers))


def _one_more(writer: Writer, numbers: Iterator[int]) -> bool:
    """Store the next delivery (a commit, after which the writer may wake the checkpointer); say True."""
    n = next(numbers)
    _deliver(writer, range(n, n + 1))
    return True


def _wal(db: Path) -> int:
    return Path(f"{db}-wal").stat().st_size


def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.fixture
def writer(db: Path) -> Iterator[Writer]:
    w = Writer(db, checkpoint_interval=0)
    yield w
    w.close()


@pytest.fixture
def checkpointer(writer: Writer) -> Checkpointer:
    """The writer fixture's checkpointer thread (a SQLite writer on Linux has one)."""
    assert writer.checkpointer is not None
    return writer.checkpointer


def _index(db: Path) -> wal_index.WalIndex:
    """Return SQLite's WAL index of `db`, mapped by a connection of this process that has written to it."""
    index = wal_index.WalIndex.open(db, PAGE_SIZE)
    assert index is not None
    return index


def test_the_writers_own_auto_checkpoint_is_only_the_net_and_the_checkpointer_has_the_routine_threshold(
    writer: Writer,
) -> None:
    assert writer.checkpointer is not None
    assert writer.checkpointer.pages == write.CHECKPOINTER_FACTOR * PAGES
    assert writer.store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (write.NET_FACTOR * PAGES,)


def test_the_checkpointer_thread_checkpoints_the_wal_while_deliveries_keep_committing(
    db: Path, passes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No net at all: whatever lets the WAL begin anew was copied back by the checkpointer alone.
    monkeypatch.setattr(writer_module, "NET_FACTOR", 10_000)
    frames: list[int] = []  # the WAL's frames after each commit
    committed = Checkpointer.committed

    def counted(self: Checkpointer) -> None:
        frames.append(self._index.frames())
        committed(self)

    monkeypatch.setattr(Checkpointer, "committed", counted)
    writer = Writer(db, checkpoint_interval=0)
    try:
        assert writer.store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (10_000 * PAGES,)
        _deliver(writer, range(1200), sessions=6)
    finally:
        writer.close()
    assert len(passes) >= 2
    assert set(passes) == {"mailhook-checkpoint"}
    steps = list(itertools.pairwise(frames))
    assert sum(1 for before, after in steps if after < before) >= 2  # the WAL was begun anew
    assert max(frames) < sum(after - before for before, after in steps if after > before)  # so it holds less
    assert _integrity(db) == "ok"
    assert rows(db, "SELECT count(*) FROM deliveries") == [(1200,)]


def test_a_blocked_checkpointer_leaves_the_wal_to_the_writers_net(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    woken = threading.Event()

    def stuck(self: Checkpointer) -> bool:
        woken.set()
        release.wait()
        return True

    monkeypatch.setattr(Checkpointer, "_catch_up", stuck)
    writer = Writer(db, checkpoint_interval=0)
    try:
        _deliver(writer, range(400))
        assert woken.is_set()
        # About 8,000 frames written; the WAL holds at most the net's 800 pages and the commit that crossed it.
        assert _wal(db) < (write.NET_FACTOR * PAGES + 100) * (PAGE_SIZE + 24)
    finally:
        release.set()
        writer.close()
    assert _integrity(db) == "ok"
    assert rows(db, "SELECT count(*) FROM deliveries") == [(400,)]


def test_a_readers_snapshot_holds_the_wal_and_once_it_lets_go_the_checkpointer_copies_it(
    db: Path, writer: Writer, passes: list[str]
) -> None:
    _deliver(writer, range(5))
    reader = sqlite3.connect(db)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM deliveries").fetchone() == (5,)
    _deliver(writer, range(5, 300))
    # Neither the checkpointer nor the writer's net may copy what the reader's snapshot still needs.
    index = _index(db)
    assert index.pending() > write.NET_FACTOR * PAGES
    assert reader.execute("SELECT count(*) FROM deliveries").fetchone() == (5,)
    reader.close()
    held = index.frames()
    more = iter(range(300, 10_000))

    wait_until(lambda: _one_more(writer, more) and index.frames() < held, 60, "the WAL copied back and begun anew")
    assert set(passes) == {"mailhook-checkpoint"}
    assert _integrity(db) == "ok"


def test_the_writers_periodic_checkpoint_under_load_has_the_checkpointer_copy_below_its_threshold(
    db: Path, writer: Writer, checkpointer: Checkpointer, passes: list[str]
) -> None:
    _deliver(writer, range(3))
    index = _index(db)
    assert 0 < index.pending() < checkpointer.pages and passes == []
    writer._periodic()  # as the writer thread makes it after a commit once checkpoint_interval has passed
    wait_until(lambda: passes and index.pending() == 0, 30, "the WAL copied back below the threshold")
    assert set(passes) == {"mailhook-checkpoint"}
    _deliver(writer, range(3, 4))  # the moment between two commits its last pass waits for
    wait_until(lambda: checkpointer.idle, 30, "the checkpointer idle")


def test_close_stops_the_checkpointer_and_leaves_the_database_whole_with_every_delivery(db: Path) -> None:
    writer = Writer(db, checkpoint_interval=0)
    checkpointer = writer.checkpointer
    assert checkpointer is not None and checkpointer.alive
    futures = [writer.submit(email(f"<{n}@t>", BODY), Extraction(message_id=f"<{n}@t>", events=(text_event(n),)))
               for n in range(500)]
    writer.close()
    assert all(future.result(timeout=0).status == "stored" for future in futures)
    assert not checkpointer.alive
    # The writer's connection closed last: SQLite copied the rest back and removed the WAL, as it did before.
    assert not Path(f"{db}-wal").exists()
    assert _integrity(db) == "ok"
    assert rows(db, "SELECT count(*) FROM deliveries") == [(500,)]


def test_a_failing_checkpoint_is_logged_once_per_kind_and_deliveries_go_on(
    db: Path, writer: Writer, checkpointer: Checkpointer, caplog: pytest.LogCaptureFixture
) -> None:

    class Failing:
        def execute(self, sql: str) -> sqlite3.Cursor:
            raise sqlite3.OperationalError("disk I/O error")

        def close(self) -> None:
            pass

    real = checkpointer._conn
    checkpointer._conn = Failing()  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.WARNING, "mailhook.store"):
            assert checkpointer._checkpoint() is None
            assert checkpointer._checkpoint() is None
            _deliver(writer, range(100))
        assert [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()] == [
            "WAL checkpoint failed (the writer's own checkpoints go on): disk I/O error"]
    finally:
        checkpointer._conn = real
    assert rows(db, "SELECT count(*) FROM deliveries") == [(100,)]


def test_without_a_readable_wal_index_the_writer_checkpoints_at_the_routine_threshold_itself(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_index.WalIndex, "open", classmethod(lambda cls, database, page_size: None))
    writer = Writer(db, checkpoint_interval=0)
    try:
        assert writer.checkpointer is None
        assert writer.store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (PAGES,)
        _deliver(writer, range(50))
    finally:
        writer.close()
    assert rows(db, "SELECT count(*) FROM deliveries") == [(50,)]


def test_a_writer_handed_another_store_has_no_checkpointer(db: Path) -> None:
    writer = Writer(db, checkpoint_interval=0, store=Store(db))
    try:
        assert writer.checkpointer is None
    finally:
        writer.close()


def test_a_blocked_pass_makes_the_checkpointer_pause_not_report_success(
    db: Path, writer: Writer, checkpointer: Checkpointer
) -> None:
    _deliver(writer, range(5))
    reader = sqlite3.connect(db)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM deliveries").fetchone()
    try:
        _deliver(writer, range(5, 30))
        wait_until(lambda: checkpointer.idle, 30, "the checkpointer idle")
        checkpointer._catch_up()  # copies what the reader does not need, if any is left
        assert not checkpointer._catch_up()
    finally:
        reader.close()
    assert checkpointer._catch_up()


def _thread_io(pid: int, name: str) -> dict[str, int]:
    """Return /proc's read and write counts of `pid`'s thread named `name` (its OS name)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == name:
            return {key: int(value) for key, value in
                    (line.split(": ") for line in (task / "io").read_text().splitlines())}
    raise AssertionError(f"no thread {name} in {pid}")


@pytest.mark.slow
def test_serve_copies_the_wal_on_its_checkpointer_thread_and_sigterm_leaves_every_acknowledged_delivery_whole(
    tmp_path: Path,
) -> None:
    db, port = tmp_path / "serve.db", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT | {"MAILHOOK_CONFIG": ""}
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mailhook", "serve", "--db", str(db), "--smtp-listen",
                                 f"127.0.0.1:{port}", "--http-listen", ""], cwd=ROOT, env=env, stdout=out, stderr=out)
    acked: list[str] = []
    try:
        wait_until(lambda: proc.poll() is None and listening(port), 60, "mailhook serve listening")
        before = _thread_io(proc.pid, "mh-checkpoint")

        def deliver(first: int) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                for n in range(first, first + 250):
                    smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(n))
                    acked.append(f"<{n}.notify@callfire.test>")

        # 1,000 emails write some 50 MB of WAL frames: past the checkpointer's 32 MiB.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(deliver, range(0, 1000, 250)))
        after = _thread_io(proc.pid, "mh-checkpoint")
        late = ThreadPoolExecutor(2)
        stopped = late.map(lambda first: suppress_smtp(deliver, first), (5000, 6000))
        wait_until(lambda: len(acked) > 1020, 60, "more deliveries under way")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]
        list(stopped)
        late.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # It read the WAL and wrote the database: the copies went through the checkpointer's own thread.
    assert after["syscr"] > before["syscr"] and after["syscw"] > before["syscw"]
    assert _integrity(db) == "ok"
    stored = {row[0] for row in rows(db, "SELECT message_id FROM deliveries")}
    assert set(acked) <= stored


def suppress_smtp(deliver: Callable[[int], None], first: int) -> None:
    """Run `deliver` until the server stops taking mail (SIGTERM closes its sessions)."""
    with suppress(smtplib.SMTPException, OSError):
        deliver(first)


def _shm_locks(db: Path) -> list[str]:
    """Return this process's POSIX locks on `db`'s -shm file, as /proc/locks lists them."""
    inode = Path(f"{db}-shm").stat().st_ino
    return [line.split(maxsplit=1)[1] for line in Path("/proc/locks").read_text().splitlines()
            if f" {os.getpid()} " in line and line.split()[5].endswith(f":{inode}")]


def test_reading_the_wal_index_leaves_sqlites_locks_on_the_shm_file_alone(db: Path, writer: Writer) -> None:
    # A descriptor of our own, once closed, would drop them all: another process would then take the
    # file for new and truncate it under SQLite's mapping (SIGBUS), as kill -9 and a restart showed.
    _deliver(writer, range(3))
    held = _shm_locks(db)
    assert held  # SQLite's DMS lock at least, while the writer's connection is open
    assert _index(db).frames() > 0
    assert _shm_locks(db) == held
