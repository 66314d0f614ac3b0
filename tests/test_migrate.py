"""`mailhook migrate-to`: an SQLite file copied into PostgreSQL, exactly, rerunnable and resumable after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from analysis_support import OUT_CALL, OUT_TEXT, event, fixture_database, store_events
from process_support import ALLOW_ROOT
from test_pg_commands import maintained_and_scanned, run

from mailhook.exitcodes import EX_DATAERR, EX_OK, EX_USAGE

ROOT = Path(__file__).resolve().parent.parent

# What must arrive unchanged (reply_to and the figure tables are recomputed by the triggers, compared apart).
COPIED = {
    "deliveries": "id, channel, received_at, status, error, message_id, envelope_from, envelope_to, subject,"
                  " content_type, remote_addr, size, sha256, raw, notes, source, event_count, duplicate_count, sent_at",
    "events": "id, delivery_id, dedupe_key, event_type, resource_id, from_number, to_number, inbound, final_result,"
              " message, billed_amount, duration, transfer_duration, broadcast_id, labels, created, modified,"
              " event_time, received_at, from_e164, to_e164, reply_to",
    "attempts": "id, event_id, record_id, result, finish_time, billed_amount, duration, answer_time, message",
    "imap_checkpoints": "account, folder, uidvalidity, last_uid, updated_at",
}


def everything(sqlite_path: Path | None = None, url: str | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Return every copied column of every row, ordered, from one store."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for table, columns in COPIED.items():
        order = "account, folder" if table == "imap_checkpoints" else "id"
        sql = f"SELECT {columns} FROM {table} ORDER BY {order}"
        if sqlite_path is not None:
            with closing(sqlite3.connect(sqlite_path)) as conn:
                found[table] = [tuple(row) for row in conn.execute(sql)]
        else:
            with psycopg.connect(url) as conn:  # type: ignore[arg-type]
                found[table] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                                for row in conn.execute(sql)]
    return found


@pytest.fixture(scope="module")
def fixtures_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = fixture_database(tmp_path_factory.mktemp("fixtures") / "fixtures.db")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO imap_checkpoints VALUES ('me@example.com', 'INBOX', 7, 42, '2026-01-01T00:00:00Z')")
    return path


def test_migrate_to_copies_every_row_with_its_id_and_a_rerun_copies_nothing(fixtures_db: Path,
                                                                              postgres_url: str) -> None:
    code, _, err = run(["migrate-to", postgres_url, "--db", str(fixtures_db), "--batch", "7"])
    assert code == EX_OK, err
    assert everything(url=postgres_url) == everything(fixtures_db)
    code, _, err = run(["migrate-to", postgres_url, "--db", str(fixtures_db)])
    assert code == EX_OK and "copied 0 deliveries, 0 events, 0 attempts" in err
    assert everything(url=postgres_url) == everything(fixtures_db)
    kept, scanned = maintained_and_scanned(postgres_url)
    assert kept == scanned


def test_new_rows_after_a_migration_take_ids_past_the_copied_ones(fixtures_db: Path, postgres_url: str) -> None:
    assert run(["migrate-to", postgres_url, "--db", str(fixtures_db)])[0] == EX_OK
    with psycopg.connect(postgres_url) as conn:
        top = conn.execute("SELECT max(id) FROM deliveries").fetchone()
        new = conn.execute("INSERT INTO deliveries (channel, received_at, status, size, sha256) VALUES"
                           " ('http', '2026-12-04T00:00:00.000Z', 'stored', 1, 'x') RETURNING id").fetchone()
    assert top is not None and new is not None and new[0] > top[0]


def test_migrate_to_refuses_a_database_holding_other_data(fixtures_db: Path, postgres_url: str,
                                                          tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    store_events(other, [event(OUT_CALL, 1, result="LA", modified="2024-01-01T00:00:00Z")])
    assert run(["migrate-to", postgres_url, "--db", str(other)])[0] == EX_OK
    code, _, err = run(["migrate-to", postgres_url, "--db", str(fixtures_db)])
    assert code == EX_DATAERR and "not a copy of this SQLite file" in err
    code, _, err = run(["migrate-to", "/tmp/not-a-url.db", "--db", str(fixtures_db)])
    assert code == EX_USAGE


def big_database(path: Path, deliveries: int) -> Path:
    """Store `deliveries` calls and texts (with attempts and replies between them), one delivery each."""
    made = []
    for n in range(deliveries):
        day = f"2024-06-{1 + n % 28:02d}T{n % 24:02d}:00:00Z"
        if n % 3 == 0:
            made.append(event(OUT_CALL, 10_000 + n, result="LA", broadcast=500 + n % 7, modified=day, duration=n % 90,
                              billed="0.5", attempts=["NO_ANS", "LA"]))
        else:
            made.append(event(OUT_TEXT, 10_000 + n, result="SENT", broadcast=600 + n % 5, modified=day,
                              billed="0.03", attempts=["SENT"], message=f"text {n}"))
    store_events(path, made)
    return path


def test_a_copy_killed_mid_way_resumes_to_exactly_the_whole_copy(tmp_path: Path, postgres_url: str) -> None:
    source = big_database(tmp_path / "big.db", 3000)
    command = [sys.executable, "-m", "mailhook", "migrate-to", postgres_url, "--db", str(source), "--batch", "20"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ALLOW_ROOT}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    copied = 0
    deadline = time.monotonic() + 120
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        while time.monotonic() < deadline and process.poll() is None:
            if conn.execute("SELECT to_regclass('deliveries') IS NOT NULL").fetchone() == (True,):
                copied = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]  # type: ignore[index]
                if copied >= 200:
                    break
            time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the copy ended before it could be killed"
    with psycopg.connect(postgres_url) as conn:
        partial = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM deliveries").fetchone()
        events = conn.execute("SELECT count(*) FROM events").fetchone()
    assert partial is not None and events is not None
    # Whole batches only: every delivery up to the last one copied, with its event.
    assert 200 <= partial[0] < 3000 and partial[0] == partial[1] == events[0]
    code, _, err = run(["migrate-to", postgres_url, "--db", str(source), "--batch", "500"])
    assert code == EX_OK, err
    assert f"copied {3000 - partial[0]} deliveries" in err
    assert everything(url=postgres_url) == everything(source)
    kept, scanned = maintained_and_scanned(postgres_url)
    assert kept == scanned
    assert run(["migrate-to", postgres_url, "--db", str(source)])[2].count("copied 0 deliveries") == 1


def test_stats_and_export_agree_after_migrating_the_analysts_fixture(tmp_path: Path, postgres_url: str) -> None:
    path = tmp_path / "figures.db"
    assert run(["ingest", "--quiet", "--db", str(path), str(ROOT / "fixtures" / "analysts" / "figures.json")])[0] == 0
    assert run(["migrate-to", postgres_url, "--db", str(path)])[0] == EX_OK
    for argv in (["stats"], ["stats", "--json"], ["export", "--table", "texts"], ["export", "--table", "calls"],
                 ["export", "--table", "campaigns", "--format", "jsonl"]):
        on_sqlite = run([*argv, "--db", str(path)])
        on_postgres = run([*argv, "--db", postgres_url])
        assert on_postgres[:2] == on_sqlite[:2], argv
