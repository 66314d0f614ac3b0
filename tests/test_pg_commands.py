"""Every command on PostgreSQL: the same output as on SQLite for the same data, and no sqlite3 on the way.

The data gets into PostgreSQL the way an admin moves it there: `mailhook
ingest` into an SQLite file (every fixture), then `mailhook migrate-to`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from analysis_support import fixture_database
from postgres_support import PASSWORD
from process_support import ALLOW_ROOT

from mailhook.cli import main
from mailhook.exitcodes import EX_CONFIG, EX_OK, EX_USAGE
from mailhook.store.pg import figures

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_database(tmp_path_factory.mktemp("fixtures") / "fixtures.db")


@pytest.fixture
def copied(sqlite_db: Path, postgres_url: str) -> str:
    """A PostgreSQL database holding a copy of every fixture (migrate-to)."""
    code, _, err = run(["migrate-to", postgres_url, "--db", str(sqlite_db)])
    assert code == EX_OK, err
    return postgres_url


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv, env=ALLOW_ROOT)
    return code, out.getvalue(), err.getvalue()


WINDOWS = [[], ["--since", "2024-05", "--until", "2024-05"], ["--time", "received"], ["--broadcast", "900002"],
           ["--since", "2024-05-01T12:05"], ["--until", "2024-05-02T00:00:00Z"], ["--since", "2030"]]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: " ".join(w) or "all")
def test_stats_on_postgresql_print_what_they_print_on_sqlite(sqlite_db: Path, copied: str,
                                                               window: list[str]) -> None:
    for shape in ([], ["--json"]):
        on_sqlite = run(["stats", *window, *shape, "--db", str(sqlite_db)])
        on_postgres = run(["stats", *window, *shape, "--db", copied])
        assert on_sqlite[0] == on_postgres[0] == EX_OK
        assert on_postgres[1] == on_sqlite[1]
    assert json.loads(on_postgres[1])["totals"]["events"] > 0 or window == ["--since", "2030"]


TABLES = ["events", "texts", "calls", "campaign_events", "campaigns", "attempts", "deliveries"]


@pytest.mark.parametrize("table", TABLES)
def test_export_on_postgresql_writes_the_bytes_it_writes_on_sqlite(sqlite_db: Path, copied: str, table: str,
                                                                   tmp_path: Path) -> None:
    filters = [[]]
    if table not in ("campaigns", "deliveries"):
        filters += [["--type", "texts,calls", "--since", "2024-05", "--until", "2024-05-02"],
                    ["--broadcast", "900001"], ["--time", "received", "--since", "2020"]]
    for extra in filters:
        for fmt in ("csv", "jsonl"):
            args = ["export", "--table", table, "--format", fmt, *extra]
            sqlite_out, postgres_out = tmp_path / f"s.{fmt}", tmp_path / f"p.{fmt}"
            assert run([*args, "--db", str(sqlite_db), "-o", str(sqlite_out)])[0] == EX_OK
            assert run([*args, "--db", copied, "-o", str(postgres_out)])[0] == EX_OK
            assert postgres_out.read_bytes() == sqlite_out.read_bytes(), (table, fmt, extra)
    assert len(sqlite_out.read_bytes().splitlines()) > 1


def test_exported_payloads_are_the_same_json_on_both_stores(sqlite_db: Path, copied: str) -> None:
    # jsonb keeps the value, not the text: keys reordered, spaces after , and :. Every other column is equal.
    _, on_sqlite, _ = run(["export", "--format", "jsonl", "--columns", "*", "--db", str(sqlite_db)])
    _, on_postgres, _ = run(["export", "--format", "jsonl", "--columns", "*", "--db", copied])
    a = [json.loads(line) for line in on_sqlite.splitlines()]
    b = [json.loads(line) for line in on_postgres.splitlines()]
    assert [{**r, "payload": json.loads(r["payload"])} for r in a] == \
        [{**r, "payload": json.loads(r["payload"])} for r in b]
    assert "message_tsv" not in b[0]


def snapshot(conn: psycopg.Connection[Any]) -> tuple[list[Any], ...]:
    def ordered(rows: list[Any]) -> list[Any]:
        rounded = [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]
        return sorted(rounded, key=lambda row: tuple((v is not None, v if v is not None else 0) for v in row))
    return (ordered(conn.execute("SELECT * FROM campaigns").fetchall()),
            ordered(conn.execute("SELECT * FROM event_totals").fetchall()),
            conn.execute("SELECT id, reply_to FROM events WHERE event_type = 'INBOUND_TEXT_FINISHED'"
                         " ORDER BY id").fetchall())


def maintained_and_scanned(url: str) -> tuple[tuple[list[Any], ...], tuple[list[Any], ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        kept = snapshot(conn)
        with conn.transaction(force_rollback=True):
            conn.execute(figures.FULL_SCAN)
            scanned = snapshot(conn)
    return kept, scanned


def test_prune_on_postgresql_deletes_in_chunks_and_keeps_the_figures_exact(copied: str) -> None:
    with psycopg.connect(copied, autocommit=True) as conn:
        conn.execute("UPDATE deliveries SET received_at = '2020-01-01T00:00:00.000Z' WHERE id % 3 = 0")
        old = conn.execute("SELECT count(*), (SELECT count(*) FROM events WHERE delivery_id % 3 = 0)"
                           " FROM deliveries WHERE id % 3 = 0").fetchone()
        before = conn.execute("SELECT count(*) FROM deliveries").fetchone()
    assert old is not None and before is not None and old[1] > 0
    code, _, err = run(["prune", "--older-than", "30d", "--dry-run", "--db", copied])
    assert code == EX_OK and f"would delete {old[0]} deliveries, {old[1]} events" in err
    code, _, err = run(["prune", "--older-than", "30d", "--db", copied])
    assert code == EX_OK and f"deleted {old[0]} deliveries, {old[1]} events" in err
    with psycopg.connect(copied) as conn:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (before[0] - old[0],)
    kept, scanned = maintained_and_scanned(copied)
    assert kept == scanned


def test_status_on_postgresql_reports_the_schema_and_counts_without_the_password(copied: str) -> None:
    from mailhook.store.pg.schema import MIGRATIONS

    code, out, err = run(["status", "--json", "--db", copied])
    report = json.loads(out)
    assert code == EX_OK, (out, err)
    assert report["schema_version"] == report["schema_expected"] == len(MIGRATIONS)
    assert report["healthy"] and report["storage"] == "ok"
    assert report["deliveries"] > 0 and report["events"] > 0
    assert PASSWORD not in out + err and "********" in report["database"]


def test_check_config_on_postgresql_connects_and_names_the_schema_version(copied: str) -> None:
    from mailhook.store.pg.schema import MIGRATIONS

    code, out, err = run(["check-config", "--db", copied])
    assert code == EX_OK, err
    assert f"schema version {len(MIGRATIONS)} (this mailhook: {len(MIGRATIONS)})" in err
    assert PASSWORD not in out + err
    wrong = copied.replace(PASSWORD, "not-the-password")
    code, out, err = run(["check-config", "--db", wrong])
    assert code == EX_CONFIG and "password authentication failed" in err
    assert "not-the-password" not in out + err


def test_backup_on_postgresql_says_pg_dump_applies(postgres_url: str, tmp_path: Path) -> None:
    code, out, err = run(["backup", str(tmp_path / "copy.db"), "--db", postgres_url])
    assert code == EX_USAGE
    assert "pg_dump" in err and not (tmp_path / "copy.db").exists() and out == ""


def test_reprocess_on_postgresql_restores_what_it_restores_on_sqlite(sqlite_db: Path, copied: str,
                                                                    tmp_path: Path) -> None:
    import shutil
    import sqlite3

    # Events of deliveries that keep their bytes (a redelivery of the same bytes keeps none: raw NULL).
    gone = "DELETE FROM events WHERE id % 4 = 1 AND delivery_id IN (SELECT id FROM deliveries WHERE raw IS NOT NULL)"
    copy = tmp_path / "copy.db"
    shutil.copy(sqlite_db, copy)
    with sqlite3.connect(copy, isolation_level=None) as lite:
        lite.execute("PRAGMA foreign_keys=ON")
        lite.execute(gone)
    with psycopg.connect(copied, autocommit=True) as conn:
        conn.execute(gone)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (82,)
    on_sqlite = run(["reprocess", "--db", str(copy)])
    on_postgres = run(["reprocess", "--db", copied])
    assert on_sqlite[0] == on_postgres[0] == EX_OK
    assert on_postgres[2].splitlines()[-1] == on_sqlite[2].splitlines()[-1]
    with sqlite3.connect(copy) as lite, psycopg.connect(copied) as conn:
        keys = {row[0] for row in lite.execute("SELECT dedupe_key FROM events")}
        assert {row[0] for row in conn.execute("SELECT dedupe_key FROM events")} == keys
    assert len(keys) > 82
    kept, scanned = maintained_and_scanned(copied)
    assert kept == scanned


@pytest.fixture
def command_lines(sqlite_db: Path, copied: str, tmp_path: Path) -> list[list[str]]:
    return [["stats", "--db", copied], ["export", "--db", copied], ["status", "--db", copied],
           ["prune", "--older-than", "3650d", "--db", copied], ["reprocess", "--quarantined", "--db", copied],
           ["check-config", "--db", copied], ["backup", str(tmp_path / "b.db"), "--db", copied]]


def test_no_command_on_postgresql_loads_sqlite3(command_lines: list[list[str]]) -> None:
    script = ("import sys; from mailhook.cli import console; sys.argv = ['mailhook', *sys.argv[1:]]; code = console();"
              " sys.stderr.write('\\nsqlite3 loaded\\n' if 'sqlite3' in sys.modules else '\\nsqlite3 not loaded\\n');"
              " sys.exit(code)")
    for argv in command_lines:
        done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120,
                              env={**ALLOW_ROOT, "PATH": "/usr/bin:/bin"}, cwd=ROOT)
        assert done.returncode in (EX_OK, EX_USAGE), (argv, done.stderr)
        assert done.stderr.endswith("sqlite3 not loaded\n"), (argv, done.stderr)


def test_the_report_reader_takes_sqlite_style_sql_and_gives_sqlite_style_values(copied: str) -> None:
    from mailhook.store.pg.reports import open_reader
    from mailhook.store.target import PostgresTarget

    reader = open_reader(PostgresTarget(copied))
    try:
        calls = "SELECT count(*), sum(duration), '100%' FROM events WHERE event_type LIKE '%CALL%'"
        plain_row = reader.execute(calls).fetchone()
        bound_row = reader.execute(calls + " AND id > ?", [0]).fetchone()
        payload = reader.execute("SELECT payload FROM events ORDER BY id LIMIT 1").fetchone()[0]
        assert not reader.conn.in_transaction
        reader.execute("BEGIN")
        assert reader.conn.in_transaction
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert plain_row == bound_row and plain_row[0] > 0
    assert type(plain_row[1]) is int and plain_row[2] == "100%"  # numeric sums come back as int, as on SQLite
    assert isinstance(payload, str) and json.loads(payload)  # jsonb as its text, as SQLite's TEXT


def test_prune_keep_raw_on_postgresql_keeps_the_deliveries_for_reprocess(copied: str) -> None:
    with psycopg.connect(copied, autocommit=True) as conn:
        deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()
        events = conn.execute("SELECT count(*) FROM events").fetchone()
        conn.execute("UPDATE events SET received_at = '2020-01-01T00:00:00.000Z'")
    assert events is not None and events[0] > 0
    code, _, err = run(["prune", "--older-than", "30d", "--keep-raw", "--db", copied])
    assert code == EX_OK and f"deleted {events[0]} events" in err and "deliveries" not in err.split("deleted")[1]
    with psycopg.connect(copied) as conn:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == deliveries
        assert conn.execute("SELECT count(*), (SELECT count(*) FROM attempts), (SELECT count(*) FROM campaigns),"
                            " (SELECT count(*) FROM event_totals) FROM events").fetchone() == (0, 0, 0, 0)
