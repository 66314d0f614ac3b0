"""The figure tables on PostgreSQL: kept by triggers, equal to a full scan and to SQLite's, through inserts and deletes.

The analysts' fixture (fixtures/analysts/figures.json: transfers, retries,
replies to texts of several campaigns) is stored in SQLite in a shuffled
order, several notifications per transaction, then copied to PostgreSQL
(`migrate-to`, in small batches): the triggers see texts after their replies
and campaign events after their calls, as a backfill would bring them.
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_figures import documents, store_documents
from test_pg_commands import maintained_and_scanned, run, snapshot

from mailhook.exitcodes import EX_OK


def copy_to(url: str, path: Path, batch: int) -> None:
    code, _, err = run(["migrate-to", url, "--db", str(path), "--batch", str(batch), "--quiet"])
    assert code == EX_OK, err


def sqlite_snapshot(path: Path) -> tuple[list[Any], ...]:
    with closing(sqlite3.connect(path)) as conn:
        def ordered(rows: list[Any]) -> list[Any]:
            rounded = [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]
            return sorted(rounded, key=lambda row: tuple((v is not None, v if v is not None else 0) for v in row))
        return (ordered(conn.execute("SELECT * FROM campaigns").fetchall()),
                ordered(conn.execute("SELECT * FROM event_totals").fetchall()),
                conn.execute("SELECT id, reply_to FROM events WHERE event_type = 'INBOUND_TEXT_FINISHED'"
                             " ORDER BY id").fetchall())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figures_kept_on_postgresql_equal_a_full_scan_and_sqlite(tmp_path: Path, postgres_url: str, seed: int) -> None:
    items = documents()
    random.Random(seed).shuffle(items)
    path = tmp_path / "m.db"
    store_documents(path, items, batch=1 + seed * 3)
    copy_to(postgres_url, path, batch=1 + seed)
    kept, scanned = maintained_and_scanned(postgres_url)
    assert kept == scanned
    assert kept == sqlite_snapshot(path)
    with psycopg.connect(postgres_url) as conn:
        assert sorted(conn.execute("SELECT message, broadcast_id FROM replies").fetchall()) == [
            ("YES", 900002), ("YES please", 900002), ("and a question", 900002), ("late yes", None),
            ("who is this", None), ("wrong line", None), ("yes again", 900003)]
        assert conn.execute("SELECT id, sent, replies, replied_texts, tries, duration, transfer_duration"
                            " FROM campaigns ORDER BY id").fetchall() == [
            (900001, 0, 0, 0, 12, 351, 301), (900002, 3, 3, 2, 5, 0, 0), (900003, 1, 1, 1, 1, 0, 0)]
        assert conn.execute("SELECT DISTINCT campaign_name FROM calls").fetchall() == [("Fall calls",)]


def test_figures_on_postgresql_stay_exact_through_deletes_of_one_row_and_of_many(tmp_path: Path,
                                                                                 postgres_url: str) -> None:
    path = tmp_path / "m.db"
    store_documents(path, documents(), batch=5)
    copy_to(postgres_url, path, batch=3)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # A text with replies (they move to no text), a reply, a transferred call: as on SQLite (test_figures).
        for resource in (6600000004, 6600000023, 7700000002):
            conn.execute("DELETE FROM events WHERE resource_id = %s", (resource,))
        kept, scanned = maintained_and_scanned(postgres_url)
        assert kept == scanned
        assert conn.execute("SELECT broadcast_id FROM replies WHERE message = 'yes again'").fetchone() == (900002,)
        # One statement deleting texts together with their replies: a row trigger would miss these.
        conn.execute("DELETE FROM events WHERE event_type LIKE '%TEXT%' AND id % 2 = 0")
        kept, scanned = maintained_and_scanned(postgres_url)
        assert kept == scanned
        conn.execute("DELETE FROM events")
        assert snapshot(conn) == ([], [], [])


def test_a_text_and_its_replies_stored_in_one_statement_count_once(postgres_url: str, tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store_documents(path, documents(), batch=50)
    copy_to(postgres_url, path, batch=1)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        before = snapshot(conn)
        # Every text and reply out, then back in one INSERT ... SELECT: the row triggers see them all at once.
        conn.execute("CREATE TEMPORARY TABLE saved AS SELECT * FROM events WHERE event_type LIKE '%TEXT%'")
        conn.execute("CREATE TEMPORARY TABLE saved_attempts AS SELECT * FROM attempts"
                     " WHERE event_id IN (SELECT id FROM saved)")
        conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM saved)")
        columns = [row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'events'"
            " AND column_name NOT IN ('message_tsv', 'reply_to') ORDER BY ordinal_position")]
        conn.execute(f"INSERT INTO events ({', '.join(columns)}) SELECT {', '.join(columns)} FROM saved"
                     " ORDER BY random()")
        conn.execute("INSERT INTO attempts SELECT * FROM saved_attempts")
        assert snapshot(conn) == before
        kept, scanned = maintained_and_scanned(postgres_url)
        assert kept == scanned


def store_on_postgresql(url: str, items: list[bytes], *, batch: int, tag: str = "doc") -> None:
    """Store each document as a file delivery, `batch` per transaction, through the nodes' write path."""
    from mailhook.extract import extract
    from mailhook.models import Delivery
    from mailhook.store.pg.write import PgStore
    from mailhook.store.target import PostgresTarget

    store = PgStore(PostgresTarget(url))
    try:
        for start in range(0, len(items), batch):
            work = [(Delivery(channel="file", raw=raw, received_at="2026-01-01T00:00:00Z", kind="document",
                              source=f"{tag}{start + n}"), extract(raw, "document", {}))
                    for n, raw in enumerate(items[start:start + batch])]
            assert not [r for r in store.write(work) if isinstance(r, Exception)]
    finally:
        store.close()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_figures_kept_by_the_nodes_write_path_equal_a_full_scan_and_sqlite(tmp_path: Path, postgres_url: str,
                                                                           seed: int) -> None:
    items = documents()
    random.Random(seed).shuffle(items)
    store_on_postgresql(postgres_url, items, batch=1 + seed * 3)
    kept, scanned = maintained_and_scanned(postgres_url)
    assert kept == scanned
    path = tmp_path / "m.db"
    store_documents(path, items, batch=1 + seed * 3)
    # The same notifications in the same order: the same ids, so the same figures row for row.
    assert kept == sqlite_snapshot(path)


def test_two_nodes_storing_one_corpus_in_opposite_orders_keep_the_figures_exact(postgres_url: str) -> None:
    import threading

    items = documents()
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def node(index: int) -> None:
        try:
            start.wait()
            store_on_postgresql(postgres_url, items if index == 0 else items[::-1], batch=3, tag=f"n{index}-")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    kept, scanned = maintained_and_scanned(postgres_url)
    assert kept == scanned
    with psycopg.connect(postgres_url) as conn:
        assert sorted(conn.execute("SELECT message, broadcast_id FROM replies").fetchall()) == [
            ("YES", 900002), ("YES please", 900002), ("and a question", 900002), ("late yes", None),
            ("who is this", None), ("wrong line", None), ("yes again", 900003)]
        assert conn.execute("SELECT id, sent, replies, replied_texts, tries, duration, transfer_duration"
                            " FROM campaigns ORDER BY id").fetchall() == [
            (900001, 0, 0, 0, 12, 351, 301), (900002, 3, 3, 2, 5, 0, 0), (900003, 1, 1, 1, 1, 0, 0)]
