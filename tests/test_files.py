"""The file door: reading .eml, mbox, Maildir, documents and stdin, and `mailhook ingest` end to end."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT

from mailhook.files.deliveries import Unreadable, deliveries
from mailhook.models import Delivery

FIXTURES = Path(__file__).parent.parent / "fixtures"
SEED = FIXTURES / "seed"
TEXT_XML = (SEED / "text-outbound.xml").read_bytes()
SEED_FILES = sorted(str(p) for p in SEED.iterdir() if not p.name.endswith(".expected.json"))


def notification_email(message_id: str, body: bytes = TEXT_XML, newline: bytes = b"\n") -> bytes:
    headers = [
        b"From: CallFire <notifications@callfire.test>",
        b"To: hooks@example.com",
        b"Subject: Outbound text finished",
        b"Message-ID: " + message_id.encode(),
        b"Content-Type: text/plain; charset=utf-8",
    ]
    return newline.join(headers) + newline + newline + body.replace(b"\n", newline)


def read(paths: list[str], max_size: int = 1 << 20, stdin: bytes | None = None) -> list[Delivery | Unreadable]:
    return list(
        deliveries(paths, received_at="now", max_size=max_size, stdin=None if stdin is None else io.BytesIO(stdin))
    )


def run(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailhook", *args], input=stdin, capture_output=True, cwd=cwd, timeout=60, check=False
    )


def count(db: Path, sql: str) -> object:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchone()[0]


def test_mbox_is_split_on_from_lines_and_mboxrd_quoting_is_undone(tmp_path: Path) -> None:
    body = b"line\n>From the start\n>>From deeper\n"
    mbox = tmp_path / "box.mbox"
    mbox.write_bytes(
        b"From a@x Mon Jan  1 00:00:00 2024\n" + notification_email("<1@x>", body) + b"\n"
        b"From b@x Mon Jan  1 00:00:01 2024\n" + notification_email("<2@x>") + b"\n"
    )
    first, second = read([str(mbox)])
    assert isinstance(first, Delivery) and isinstance(second, Delivery)
    assert first.raw == notification_email("<1@x>", b"line\nFrom the start\n>From deeper\n")
    assert first.envelope_from == "a@x" and first.kind == "email"
    assert second.raw == notification_email("<2@x>")
    assert second.source == f"{mbox}#2"


def test_maildir_reads_new_and_cur_but_not_tmp(tmp_path: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{sub}.eml").write_bytes(notification_email(f"<{sub}@x>"))
    found = read([str(tmp_path)])
    assert sorted(Path(d.source or "").parent.name for d in found if isinstance(d, Delivery)) == ["cur", "new"]


def test_documents_are_recognised_by_suffix_or_first_byte(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_bytes(TEXT_XML)
    (tmp_path / "b.txt").write_bytes(b'  {"TextNotification": {}}')
    (tmp_path / "c.eml").write_bytes(notification_email("<c@x>"))
    kinds = {Path(d.source or "").name: d.kind for d in read([str(tmp_path)]) if isinstance(d, Delivery)}
    assert kinds == {"a.xml": "document", "b.txt": "document", "c.eml": "email"}


def test_stdin_drops_the_mta_envelope_line_and_keeps_the_sender() -> None:
    (only,) = read(["-"], stdin=b"From bounce@callfire.test Mon Jan  1 00:00:00 2024\n" + notification_email("<s@x>"))
    assert isinstance(only, Delivery)
    assert only.envelope_from == "bounce@callfire.test"
    assert only.raw == notification_email("<s@x>")


def test_oversize_and_missing_inputs_are_unreadable(tmp_path: Path) -> None:
    big = tmp_path / "big.eml"
    big.write_bytes(notification_email("<big@x>"))
    too_big, missing = read([str(big), str(tmp_path / "nope.eml")], max_size=100)
    assert isinstance(too_big, Unreadable) and "larger than the limit of 100 bytes" in too_big.reason
    assert isinstance(missing, Unreadable) and "No such file" in missing.reason


def test_ingest_stores_fixtures_and_prints_a_summary(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    result = run("ingest", "--db", str(db), *SEED_FILES)
    assert result.returncode == 0, result.stderr
    summary = result.stderr.decode().strip().splitlines()[-1]
    assert count(db, "SELECT count(*) FROM deliveries") == len(SEED_FILES)
    plain = count(db, "SELECT count(*) FROM deliveries WHERE status = 'stored'")
    quarantined = count(db, "SELECT count(*) FROM deliveries WHERE status = 'quarantined'")
    assert summary.startswith(f"mailhook: {plain} stored, 0 duplicates, {quarantined} quarantined")
    assert count(db, "SELECT count(*) FROM events") == count(db, "SELECT sum(event_count) FROM deliveries")


def test_ingest_twice_adds_no_events(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert run("ingest", "--db", str(db), *SEED_FILES).returncode == 0
    events = count(db, "SELECT count(*) FROM events")
    again = run("ingest", "--db", str(db), *SEED_FILES)
    assert again.returncode == 0
    assert count(db, "SELECT count(*) FROM events") == events
    assert "0 stored" in again.stderr.decode()


def test_ingest_from_stdin_as_an_mta_pipe(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    result = run("ingest", "--db", str(db), "-", stdin=notification_email("<pipe@x>", newline=b"\r\n"))
    assert result.returncode == 0, result.stderr
    assert count(db, "SELECT message_id FROM deliveries") == "<pipe@x>"
    assert count(db, "SELECT event_type FROM events") == "OUTBOUND_TEXT_FINISHED"


def test_ingest_quarantines_unreadable_email_with_exit_zero_and_a_warning(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    junk = b"Subject: lunch?\nMessage-ID: <lunch@x>\n\nAre we still on for noon?\n"
    result = run("ingest", "--db", str(db), "-", stdin=junk)
    assert result.returncode == 0
    assert "quarantined" in result.stderr.decode()
    with sqlite3.connect(db) as conn:
        status, error, raw = conn.execute("SELECT status, error, raw FROM deliveries").fetchone()
    assert status == "quarantined" and error and raw == junk


def test_ingest_exits_65_on_input_it_cannot_read_and_stores_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    result = run("ingest", "--db", str(db), str(tmp_path / "missing.eml"), str(SEED / "text-outbound.xml"))
    assert result.returncode == 65
    assert "missing.eml" in result.stderr.decode()
    assert count(db, "SELECT count(*) FROM events") == 1


def test_ingest_exits_75_when_the_database_is_locked(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert run("ingest", "--db", str(db), str(SEED / "text-outbound.xml")).returncode == 0
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mailhook", "ingest", "--db", str(db), str(SEED / "campaign.json")],
            capture_output=True, timeout=60, check=False,
            env={"MAILHOOK_STORAGE_BUSY_TIMEOUT": "0.2", "PATH": "", **ALLOW_ROOT},
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert result.returncode == 75, result.stderr
    assert count(db, "SELECT count(*) FROM deliveries") == 1


@pytest.mark.parametrize("size", [100, 10_000])
def test_ingest_refuses_input_over_the_size_limit_with_65(tmp_path: Path, size: int) -> None:
    db = tmp_path / "m.db"
    message = notification_email("<x@x>")
    result = run("ingest", "--db", str(db), "--max-message-size", str(size), "-", stdin=message)
    expected = 65 if len(message) > size else 0
    assert result.returncode == expected


def test_a_large_mbox_extracted_in_parallel_is_stored_in_order_as_one_process_would(tmp_path: Path) -> None:
    # Over a megabyte of input goes through the extraction pool on a machine with two cores or more.
    mbox = tmp_path / "big.mbox"
    unique = 1500
    with mbox.open("wb") as fh:
        for n in range(unique + 100):
            text = TEXT_XML.replace(b'<Text id="11111111111">', b'<Text id="%d">' % (50_000_000_000 + n % unique))
            message = notification_email(f"<big-{n % unique}@callfire.test>", text)
            fh.write(b"From callfire@example.com Fri Nov 27 10:00:00 2026\n" + message + b"\n\n")
    mbox.write_bytes(mbox.read_bytes() + b"From x Fri Nov 27 10:00:00 2026\nSubject: no notification\n\nhello\n")
    assert mbox.stat().st_size > 1 << 20
    db = tmp_path / "m.db"
    result = run("ingest", "--db", str(db), str(mbox))
    assert result.returncode == 0, result.stderr
    assert count(db, "SELECT count(*) FROM deliveries") == unique + 101
    assert count(db, "SELECT count(*) FROM events") == unique
    # Deliveries are stored in mbox order, each with the outcome a serial run gives it.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, source, status FROM deliveries ORDER BY id").fetchall()
    assert [int(source.rpartition("#")[2]) for _, source, _ in rows] == list(range(1, unique + 102))
    assert [status for _, _, status in rows] == ["stored"] * unique + ["duplicate"] * 100 + ["quarantined"]


def mbox_of(count: int) -> bytes:
    """Return an mbox of `count` distinct notification emails."""
    return b"".join(b"From sender@x Mon Jan  1 00:00:00 2024\n" + notification_email(f"<m{n}@x>") + b"\n"
                    for n in range(count))


def test_a_backfill_off_a_terminal_prints_one_summary_line_and_no_line_per_delivery(tmp_path: Path) -> None:
    from mailhook.store.schema import MIGRATIONS

    (tmp_path / "in.mbox").write_bytes(mbox_of(30))
    result = run("ingest", "--db", str(tmp_path / "m.db"), str(tmp_path / "in.mbox"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    # The database is new: one brief line says so; then the summary, nothing per delivery.
    assert lines == [f"INFO mailhook.store: database created (schema version {len(MIGRATIONS)})",
                     "mailhook: 1 stored, 29 duplicates, 0 quarantined, 1 events"]


def test_quiet_ingest_prints_nothing_but_warnings(tmp_path: Path) -> None:
    (tmp_path / "in.mbox").write_bytes(mbox_of(5))
    result = run("ingest", "-q", "--db", str(tmp_path / "m.db"), str(tmp_path / "in.mbox"))
    assert (result.returncode, result.stderr) == (0, b"")
    junk = b"Subject: lunch?\nMessage-ID: <lunch@x>\n\nAre we still on for noon?\n"
    result = run("ingest", "-q", "--db", str(tmp_path / "m.db"), "-", stdin=junk)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2 and all(line.startswith("WARNING") for line in lines)
    assert "quarantined" in lines[0] and "1 deliveries quarantined" in lines[1]


def test_verbose_ingest_logs_one_line_per_delivery(tmp_path: Path) -> None:
    (tmp_path / "in.mbox").write_bytes(mbox_of(4))
    result = run("ingest", "--verbose", "--db", str(tmp_path / "m.db"), str(tmp_path / "in.mbox"))
    lines = result.stderr.decode().splitlines()
    assert sum(line.startswith("INFO mailhook.ingest: delivery ") for line in lines) == 4


def test_upgrading_an_old_database_says_so_in_one_line(tmp_path: Path) -> None:
    from mailhook.store.schema import MIGRATIONS

    db = tmp_path / "m.db"
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version=2")
    result = run("ingest", "--db", str(db), str(SEED / "text-outbound.xml"))
    assert [line for line in result.stderr.decode().splitlines() if "schema" in line] == [
        f"INFO mailhook.store: database upgraded from schema version 2 to {len(MIGRATIONS)}"]


def test_ingest_on_a_terminal_draws_a_progress_bar_then_the_summary(tmp_path: Path) -> None:
    import os
    import pty

    (tmp_path / "in.mbox").write_bytes(mbox_of(300))
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "mailhook", "ingest", "--db", str(tmp_path / "m.db"), str(tmp_path / "in.mbox")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert process.wait(timeout=60) == 0
    os.close(primary)
    text = seen.decode()
    assert "] " in text and "%" in text and "messages (" in text  # the bar
    assert text.rstrip().endswith("mailhook: 1 stored, 299 duplicates, 0 quarantined, 1 events")
    assert "delivery channel=" not in text


def distinct_mbox(path: Path, count: int, repeats: int = 0) -> Path:
    """Write `count` distinct notification emails of every shape (bench/distinct.py), then `repeats` of them again."""
    sys.path.insert(0, str(FIXTURES.parent / "bench"))
    try:
        import distinct
    finally:
        sys.path.remove(str(FIXTURES.parent / "bench"))
    emails = distinct.Emails(15)
    messages = [emails.message() for _ in range(count)]
    with path.open("wb") as fh:
        for raw in messages + messages[:repeats]:
            fh.write(distinct.mbox_chunk(raw))
    return path


def ingest_with(db: Path, mbox: Path, workers: int) -> None:
    code = ("import os, sys; from mailhook.config.load import load; from mailhook.files.ingest import ingest_paths;"
            f"sys.exit(ingest_paths([{str(mbox)!r}], load({{}}, os.environ), os.environ, quiet=True, stdin=None,"
            f" interactive=False, workers={workers}))")
    env = {**os.environ, **ALLOW_ROOT, "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300, check=False, env=env)
    assert result.returncode == 0, result.stderr


def figures_and_full_scan(db: Path) -> tuple[list[object], list[object]]:
    """Return the figures as the writer kept them and as a full scan computes them (rolled back)."""
    from mailhook.store.connection import statements
    from mailhook.store.figures import FULL_SCAN

    def snapshot(conn: sqlite3.Connection) -> list[object]:
        return [[tuple(round(v, 6) if isinstance(v, float) else v for v in row)
                 for row in conn.execute(sql).fetchall()]
                for sql in ("SELECT * FROM campaigns ORDER BY id", "SELECT * FROM event_totals ORDER BY 1, 2, 3, 4",
                            "SELECT id, reply_to FROM events ORDER BY id")]

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        kept = snapshot(conn)
        conn.execute("BEGIN")
        for statement in statements(FULL_SCAN):
            conn.execute(statement)
        scanned = snapshot(conn)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return kept, scanned


def contents(db: Path) -> list[list[tuple[object, ...]]]:
    """Return every stored row but the time of storing (an event without a time of its own takes it)."""
    with sqlite3.connect(db) as conn:
        tables = [conn.execute(
            "SELECT id, channel, status, error, message_id, envelope_from, subject, size, sha256, raw, notes, source,"
            " event_count, duplicate_count, sent_at FROM deliveries ORDER BY id").fetchall()]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)") if row[1] != "received_at"]
        tables.append(conn.execute(
            f"SELECT {', '.join(columns)}, event_time = received_at FROM events ORDER BY id").fetchall())
        tables.append(conn.execute("SELECT * FROM attempts ORDER BY id").fetchall())
        tables.append(conn.execute("SELECT * FROM campaigns ORDER BY id").fetchall())
        tables.append(conn.execute("SELECT rowid, message FROM events_fts ORDER BY rowid").fetchall())
    return [[tuple("(now)" if isinstance(v, str) and v.startswith("20") and len(v) == 24 else v for v in row)
             for row in rows] for rows in tables]


def test_a_backfill_in_two_worker_processes_stores_exactly_what_one_process_stores(tmp_path: Path) -> None:
    # About 450 KB: extracted in parallel (the threshold was 1 MiB), with duplicates across chunks.
    mbox = distinct_mbox(tmp_path / "in.mbox", 200, repeats=40)
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    ingest_with(one, mbox, workers=1)
    ingest_with(two, mbox, workers=2)
    stored = contents(one)
    assert len(stored[0]) == 240 and len(stored[1]) >= 200
    assert contents(two) == stored
    for db in (one, two):
        kept, scanned = figures_and_full_scan(db)
        assert kept == scanned


def test_kill_9_in_the_middle_of_a_backfill_leaves_figures_equal_to_a_full_scan(tmp_path: Path) -> None:
    import signal
    import time

    mbox = distinct_mbox(tmp_path / "in.mbox", 3000)
    db = tmp_path / "m.db"
    env = {**os.environ, **ALLOW_ROOT, "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db)}
    proc = subprocess.Popen([sys.executable, "-m", "mailhook", "ingest", "-q", str(mbox)], env=env,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while stored < 600 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    stored = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
            except sqlite3.Error:
                continue
        assert proc.poll() is None, "the backfill ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the ingest and its extraction workers, mid-batch
    finally:
        proc.wait(timeout=60)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM figures_deferred").fetchone() == (0,)
        assert 600 <= conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] < 3000
    kept, scanned = figures_and_full_scan(db)
    assert kept == scanned
    # Run again, it stores the rest; the figures stay exact.
    result = subprocess.run([sys.executable, "-m", "mailhook", "ingest", "-q", str(mbox)], env=env,
                            capture_output=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(DISTINCT message_id) FROM deliveries WHERE status = 'stored'"
                            " AND event_count > 0").fetchone() == (3000,)
    kept, scanned = figures_and_full_scan(db)
    assert kept == scanned
