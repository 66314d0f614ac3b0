"""`mailhook reprocess` and `mailhook migrate-to` beside a node frozen with its locks: each wait is bounded
(storage.busy_timeout a statement, a few tries), then the command stops with exit 75 and a line saying why;
a lock let go within the tries lets the command finish; and every statement is one exchange (no pipeline)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from analysis_support import OUT_CALL, event, fixture_database
from postgres_support import frozen_holders, kill
from process_support import ALLOW_ROOT, wait_until
from test_migrate import big_database, everything
from test_pg_commands import run

from mailhook.exitcodes import EX_OK, EX_TEMPFAIL
from mailhook.models import Delivery, Extraction, Receipt
from mailhook.store.pg.attempts import ATTEMPT_ROWS
from mailhook.store.pg.connection import open_database
from mailhook.store.pg.reprocess import ReprocessStore
from mailhook.store.pg.write import PgStore
from mailhook.store.target import PostgresTarget

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture
def freeze(postgres_url: str) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start holders frozen with a lock on `events`; each is killed (-9) at the end if the test did not."""
    with frozen_holders(postgres_url) as start:
        yield start


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _background(log: Path, *argv: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT | {"MAILHOOK_CONFIG": ""}
    with log.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "mailhook", *argv], cwd=ROOT, env=env, stderr=err,
                                stdout=subprocess.DEVNULL)


@pytest.fixture
def stored(postgres_url: str, tmp_path: Path) -> str:
    """The notification fixtures, copied into the test's PostgreSQL database (raw bytes kept for reprocess)."""
    source = fixture_database(tmp_path / "fixtures.db")
    code, _, err = run(["migrate-to", postgres_url, "--db", str(source)])
    assert code == EX_OK, err
    return postgres_url


def test_reprocess_beside_a_frozen_lock_holder_stops_with_exit_75_and_a_rerun_finishes(
    stored: str, freeze: Callable[[], subprocess.Popen[str]]
) -> None:
    holder = freeze()
    code, _, err = run(["reprocess", "--db", stored, "--storage-busy-timeout", "0.2"])
    assert code == EX_TEMPFAIL, err
    assert "another session held a lock it needs 3 times for 0.2 s" in err
    assert "A node that freezes" in err and "try again later" in err
    kill(holder)
    code, _, err = run(["reprocess", "--db", stored, "--storage-busy-timeout", "0.2"])
    assert code == EX_OK, err
    assert "reprocessed" in err


def test_reprocess_finishes_when_the_lock_is_let_go_within_its_tries(
    stored: str, freeze: Callable[[], subprocess.Popen[str]], tmp_path: Path
) -> None:
    holder = freeze()
    log = tmp_path / "reprocess.log"
    proc = _background(log, "reprocess", "--db", stored, "--storage-busy-timeout", "2")
    try:
        wait_until(lambda: "trying again (2 of 3)" in log.read_text(), 60, "reprocess to wait out its first try")
        kill(holder)  # the frozen node dies: its session ends and its locks go with it
        assert proc.wait(timeout=120) == EX_OK, log.read_text()
    finally:
        kill(proc)
    assert "reprocessed" in log.read_text()


def test_migrate_to_beside_a_frozen_lock_holder_stops_with_exit_75_copying_nothing_of_the_batch_then_resumes(
    postgres_url: str, freeze: Callable[[], subprocess.Popen[str]], tmp_path: Path
) -> None:
    source = fixture_database(tmp_path / "fixtures.db")
    open_database(PostgresTarget(postgres_url)).close()  # the schema, for the holder to lock a table of
    holder = freeze()
    code, _, err = run(["migrate-to", postgres_url, "--db", str(source), "--storage-busy-timeout", "0.2"])
    assert code == EX_TEMPFAIL, err
    assert "migrate-to stopped: the batch after delivery 0: another session held a lock it needs 5 times" in err
    assert "a rerun resumes after the last batch copied" in err
    assert _count(postgres_url, "deliveries") == 0
    kill(holder)
    code, _, err = run(["migrate-to", postgres_url, "--db", str(source), "--storage-busy-timeout", "0.2"])
    assert code == EX_OK, err
    assert everything(url=postgres_url) == everything(source)


def test_migrate_to_finishes_when_the_lock_is_let_go_within_its_tries(
    postgres_url: str, freeze: Callable[[], subprocess.Popen[str]], tmp_path: Path
) -> None:
    source = fixture_database(tmp_path / "fixtures.db")
    open_database(PostgresTarget(postgres_url)).close()
    holder = freeze()
    log = tmp_path / "migrate.log"
    proc = _background(log, "migrate-to", postgres_url, "--db", str(source), "--storage-busy-timeout", "2")
    try:
        wait_until(lambda: "trying again (2 of 5)" in log.read_text(), 60, "migrate-to to wait out its first try")
        kill(holder)
        assert proc.wait(timeout=120) == EX_OK, log.read_text()
    finally:
        kill(proc)
    assert everything(url=postgres_url) == everything(source)


@pytest.mark.parametrize("deliveries", [500, 501])
def test_migrate_to_copies_a_batch_at_and_past_one_inserts_rows_exactly(
    postgres_url: str, tmp_path: Path, deliveries: int
) -> None:
    source = big_database(tmp_path / "big.db", deliveries)  # a call in three has two attempts
    code, _, err = run(["migrate-to", postgres_url, "--db", str(source), "--batch", str(deliveries)])
    assert code == EX_OK, err
    assert everything(url=postgres_url) == everything(source)


@pytest.mark.parametrize("attempts", [ATTEMPT_ROWS, ATTEMPT_ROWS + 1])
def test_reprocess_adds_an_events_attempts_at_and_past_one_inserts_rows(
    postgres_url: str, tmp_path: Path, attempts: int
) -> None:
    store = PgStore(PostgresTarget(postgres_url))
    try:
        (kept,) = store.write([(Delivery(channel="file", raw=b"x" * 40, received_at="x", kind="document"),
                                Extraction(reason="not read yet"))])
    finally:
        store.close()
    assert isinstance(kept, Receipt)
    call = event(OUT_CALL, 5, result="LA", attempts=[f"R{n}" for n in range(attempts)])
    again = ReprocessStore(PostgresTarget(postgres_url))
    try:
        receipt = again.reextract(kept.delivery_id, Extraction(events=(call,)))
    finally:
        again.close()
    assert receipt.status == "stored" and receipt.events == 1
    with psycopg.connect(postgres_url) as conn:
        found = conn.execute("SELECT result FROM attempts ORDER BY record_id").fetchall()
    assert [row[0] for row in found] == [f"R{n}" for n in range(attempts)]



def test_prune_beside_a_frozen_lock_holder_stops_with_exit_75_even_with_a_busy_timeout_of_0(
    postgres_url: str, freeze: Callable[[], subprocess.Popen[str]], tmp_path: Path
) -> None:
    source = big_database(tmp_path / "old.db", 20)
    assert run(["migrate-to", postgres_url, "--db", str(source)])[0] == EX_OK
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE deliveries SET received_at = '2020-01-01T00:00:00.000Z'")
        conn.execute("UPDATE events SET received_at = '2020-01-01T00:00:00.000Z'")
    holder = freeze()
    # 0 is "do not wait" (1 ms), as on SQLite, never PostgreSQL's lock_timeout = 0 ("no limit").
    code, _, err = run(["prune", "--older-than", "30d", "--db", postgres_url, "--storage-busy-timeout", "0"])
    assert code == EX_TEMPFAIL, err
    assert "lock timeout" in err
    assert _count(postgres_url, "deliveries") == 20
    kill(holder)
    code, _, err = run(["prune", "--older-than", "30d", "--db", postgres_url, "--storage-busy-timeout", "0"])
    assert code == EX_OK, err
    assert _count(postgres_url, "deliveries") == 0


@pytest.mark.parametrize("most_bytes", [1, 2_000, 10**9])
def test_migrate_to_copies_exactly_whatever_the_statements_byte_bound(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, most_bytes: int
) -> None:
    from mailhook.store.pg import copy

    # 1: every row its own statement; 2,000: a few rows each (each delivery's raw is some hundred bytes); 10**9: 500.
    monkeypatch.setattr(copy, "MAX_BYTES", most_bytes)
    source = big_database(tmp_path / "big.db", 60)
    code, _, err = run(["migrate-to", postgres_url, "--db", str(source), "--batch", "60"])
    assert code == EX_OK, err
    assert everything(url=postgres_url) == everything(source)
