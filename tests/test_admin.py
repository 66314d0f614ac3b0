"""The admin's commands: prune, online backup while deliveries arrive, WAL checkpoints, status."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT, free_port, wait_until

from mailhook.admin import parse_age
from mailhook.cli import main
from mailhook.exitcodes import EX_UNAVAILABLE, EX_UNHEALTHY
from mailhook.models import Delivery
from mailhook.pipeline import Pipeline
from mailhook.store.maintenance import backup, prune
from mailhook.store.writer import Writer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = json.loads((ROOT / "fixtures" / "seed" / "text-inbound.json").read_text())
OLD = "2020-01-01T00:00:00.000Z"


def document(number: int) -> Delivery:
    """A distinct inbound-text notification (one event, one attempt) as an HTTP delivery."""
    body = json.loads(json.dumps(TEMPLATE))
    body["TextNotification"]["Text"]["@id"] = str(900000000000 + number)
    body["TextNotification"]["Text"]["TextRecord"]["@id"] = str(800000000000 + number)
    return Delivery(channel="http", raw=json.dumps(body).encode(), received_at=OLD, kind="document")


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    writer = Writer(tmp_path / "m.db", checkpoint_interval=0)
    yield Pipeline(writer)
    writer.close()


def store(pipeline: Pipeline, numbers: range) -> None:
    for number in numbers:
        assert pipeline.ingest(document(number)).events == 1


def counts(path: Path) -> tuple[int, int, int]:
    with sqlite3.connect(path) as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                     for t in ("deliveries", "events", "attempts"))


def age(path: Path, delivery_ids: range) -> None:
    """Make deliveries (and their events) look received in 2020."""
    with sqlite3.connect(path) as conn:
        for table, column in (("deliveries", "id"), ("events", "delivery_id")):
            conn.executemany(f"UPDATE {table} SET received_at = ? WHERE {column} = ?",
                             [(OLD, i) for i in delivery_ids])


NOW = datetime.now(UTC)


def test_age_reads_units_and_refuses_nonsense() -> None:
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("2w") == timedelta(weeks=2)
    with pytest.raises(Exception, match="not an age"):
        parse_age("ninety days")


def test_prune_deletes_old_deliveries_with_their_events_and_attempts(tmp_path: Path, pipeline: Pipeline) -> None:
    store(pipeline, range(1, 7))
    age(tmp_path / "m.db", range(1, 4))
    result = prune(tmp_path / "m.db", NOW - timedelta(days=1), chunk=2)
    assert (result.deliveries, result.events, result.attempts) == (3, 3, 3)
    assert counts(tmp_path / "m.db") == (3, 3, 3)
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM deliveries ORDER BY id")] == [4, 5, 6]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_prune_keep_raw_deletes_only_events_and_attempts(tmp_path: Path, pipeline: Pipeline) -> None:
    store(pipeline, range(1, 5))
    age(tmp_path / "m.db", range(1, 3))
    result = prune(tmp_path / "m.db", NOW - timedelta(days=1), keep_raw=True)
    assert (result.deliveries, result.events, result.attempts) == (0, 2, 2)
    assert counts(tmp_path / "m.db") == (4, 2, 2)
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT count(*) FROM deliveries WHERE raw IS NOT NULL").fetchone()[0] == 4


def test_prune_dry_run_counts_but_keeps_everything(tmp_path: Path, pipeline: Pipeline) -> None:
    store(pipeline, range(1, 4))
    age(tmp_path / "m.db", range(1, 3))
    result = prune(tmp_path / "m.db", NOW - timedelta(days=1), dry_run=True)
    assert (result.deliveries, result.events) == (2, 2)
    assert counts(tmp_path / "m.db") == (3, 3, 3)


def test_prune_command_reports_and_leaves_recent_data(
    tmp_path: Path, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    store(pipeline, range(1, 4))
    age(tmp_path / "m.db", range(1, 2))
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db")}
    assert main(["prune", "--older-than", "90d"], env) == 0
    assert "deleted 1 deliveries, 1 events and 1 attempts" in capsys.readouterr().err
    assert counts(tmp_path / "m.db") == (2, 2, 2)


def test_backup_while_deliveries_arrive_is_always_a_consistent_snapshot(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    done = threading.Event()
    failures: list[BaseException] = []

    def deliver() -> None:
        try:
            for number in range(400):
                pipeline.ingest(document(number))
        except Exception as exc:  # noqa: BLE001 - handed to the test thread to fail there
            failures.append(exc)
        finally:
            done.set()

    store(pipeline, range(10000, 10005))
    thread = threading.Thread(target=deliver)
    thread.start()
    sizes = []
    while not done.is_set() or len(sizes) < 3:
        info = backup(tmp_path / "m.db", tmp_path / f"b{len(sizes)}.db")
        with sqlite3.connect(info.path) as copy:
            assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            # Each delivery committed together with its events: a torn copy would break this.
            assert copy.execute("SELECT count(*) FROM events").fetchone()[0] == \
                copy.execute("SELECT sum(event_count) FROM deliveries").fetchone()[0]
            assert copy.execute("SELECT count(*) FROM events e LEFT JOIN deliveries d ON d.id = e.delivery_id "
                                "WHERE d.id IS NULL").fetchone()[0] == 0
            assert (info.deliveries, info.events) == counts(info.path)[:2]
        sizes.append(info.deliveries)
    thread.join()
    assert not failures
    assert sizes == sorted(sizes)
    final = backup(tmp_path / "m.db", tmp_path / "final.db")
    assert (final.deliveries, final.events) == (405, 405)
    assert not list(tmp_path.glob(".*.tmp"))


def test_backup_command_writes_a_dated_file_into_a_directory(
    tmp_path: Path, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    store(pipeline, range(3))
    folder = tmp_path / "backups"
    folder.mkdir()
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db")}
    assert main(["backup", str(folder)], env) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.parent == folder
    assert re.fullmatch(r"mailhook-\d{8}T\d{6}Z\.db", written.name)
    assert counts(written) == (3, 3, 3)
    assert main(["backup", f"{tmp_path}/new/dir/"], env) == 0
    made = Path(capsys.readouterr().out.strip())
    assert made.parent == tmp_path / "new" / "dir"
    assert counts(made) == (3, 3, 3)


def test_backup_refuses_to_overwrite_the_database_or_invent_one(
    tmp_path: Path, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    store(pipeline, range(2))
    with pytest.raises(ValueError, match="overwrite the database"):
        backup(tmp_path / "m.db", tmp_path / "m.db")
    assert counts(tmp_path / "m.db") == (2, 2, 2)
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "none.db")}
    assert main(["backup", str(tmp_path / "b.db")], env) == EX_UNAVAILABLE
    assert not (tmp_path / "none.db").exists()
    assert "no database" in capsys.readouterr().err


def test_writer_checkpoint_empties_the_wal_once_a_long_reader_is_gone(tmp_path: Path, pipeline: Pipeline) -> None:
    wal = tmp_path / "m.db-wal"
    store(pipeline, range(5))
    reader = sqlite3.connect(tmp_path / "m.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM events").fetchone()
    store(pipeline, range(5, 60))
    pinned = pipeline.writer.checkpoint().result(timeout=30)
    assert pinned is not None and not pinned.truncated
    assert wal.stat().st_size > 0
    reader.close()
    freed = pipeline.writer.checkpoint().result(timeout=30)
    assert freed is not None and freed.truncated
    assert wal.stat().st_size == 0
    assert counts(tmp_path / "m.db") == (60, 60, 60)


def test_idle_writer_checkpoints_by_itself(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "idle.db", checkpoint_interval=0.05)
    try:
        pipeline = Pipeline(writer)
        store(pipeline, range(20))
        wal = tmp_path / "idle.db-wal"
        # The WAL is emptied inside the checkpoint and the writer records it just after: wait for both.
        wait_until(lambda: wal.stat().st_size == 0 and writer.last_checkpoint is not None, 30, "a checkpoint")
        assert wal.stat().st_size == 0
        assert writer.last_checkpoint is not None
        assert writer.last_checkpoint.copied == writer.last_checkpoint.frames
    finally:
        writer.close()


# --- status ---------------------------------------------------------------------------------------


def test_status_reports_counts_and_is_healthy(
    tmp_path: Path, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    store(pipeline, range(3))
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db")}
    assert main(["status", "--json", "--max-age", "1h"], env) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] is True
    assert (report["deliveries"], report["events"], report["quarantined"], report["pending"]) == (3, 3, 0, 0)
    assert report["schema_version"] == report["schema_expected"]


def test_status_is_unhealthy_when_no_delivery_came_recently(
    tmp_path: Path, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    store(pipeline, range(2))
    age(tmp_path / "m.db", range(1, 3))
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db")}
    assert main(["status", "--max-age", "2h"], env) == EX_UNHEALTHY
    assert "problem: no delivery since" in capsys.readouterr().out


def test_status_without_a_database_is_unavailable_and_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "none.db")}
    assert main(["status"], env) == EX_UNAVAILABLE
    assert "no database" in capsys.readouterr().out
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_status_server_checks_the_running_doors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db"),
           "MAILHOOK_SMTP_LISTEN": f"127.0.0.1:{free_port()}", "MAILHOOK_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    assert main(["status", "--server", "--timeout", "2"], env) == EX_UNAVAILABLE  # no database, no server
    capsys.readouterr()
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailhook", "serve"], cwd=tmp_path, stderr=err,
                                env={**env, "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **ALLOW_ROOT})
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            return "http listening on" in log.read_text()

        wait_until(up, 30, "mailhook serve listening")
        assert main(["status", "--server", "--json"], env) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["server"] == {"smtp": "ok", "http": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert main(["status", "--server", "--timeout", "2"], env) == EX_UNHEALTHY
    assert "smtp: unreachable" in capsys.readouterr().out


def test_backup_into_a_missing_directory_exits_73_with_one_line(tmp_path: Path, pipeline: Pipeline) -> None:
    store(pipeline, range(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env |= {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db")}
    target = tmp_path / "missing" / "dir" / "copy.db"
    done = subprocess.run([sys.executable, "-m", "mailhook", "backup", str(target)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 73
    assert done.stderr.splitlines() == [
        f"mailhook: cannot write backup {target}: directory {target.parent} does not exist"
    ]
    assert not (tmp_path / "missing").exists()


def backup_to(target: Path, db: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env |= {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db)}
    return subprocess.run([sys.executable, "-m", "mailhook", "backup", str(target)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_backup_refuses_to_replace_a_fifo_or_a_symlink_to_one_exit_73_one_line(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    # As root, `mailhook backup /dev/full` used to rename a database over the device node.
    store(pipeline, range(1))
    fifo = tmp_path / "device-like"
    os.mkfifo(fifo)
    link = tmp_path / "link.db"
    link.symlink_to(fifo)
    for target, kind in ((fifo, "a FIFO"), (link, "a symbolic link")):
        done = backup_to(target, tmp_path / "m.db")
        assert done.returncode == 73
        assert done.stderr.splitlines() == [
            f"mailhook: cannot write backup {target}: {target} exists and is {kind}, not a regular file; not replaced"
        ]
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()
    assert not list(tmp_path.glob(".*.tmp"))


def test_backup_replaces_an_earlier_backup_or_an_empty_file_but_no_other_file(
    tmp_path: Path, pipeline: Pipeline
) -> None:
    store(pipeline, range(2))
    other = tmp_path / "notes.txt"
    other.write_text("not a database\n")
    done = backup_to(other, tmp_path / "m.db")
    assert done.returncode == 73
    assert done.stderr.splitlines() == [
        f"mailhook: cannot write backup {other}: {other} exists and is not an SQLite database; not replaced"
    ]
    assert other.read_text() == "not a database\n"
    earlier, empty = tmp_path / "nightly.db", tmp_path / "empty.db"
    backup(tmp_path / "m.db", earlier)
    empty.touch()
    store(pipeline, range(2, 5))
    for target in (earlier, empty):
        assert backup_to(target, tmp_path / "m.db").returncode == 0
        assert counts(target) == (5, 5, 5)
