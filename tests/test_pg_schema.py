"""The PostgreSQL schema: the SQLite schema's tables, columns and views, migrated once however many nodes start."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from mailhook.store.connection import connect as sqlite_connect
from mailhook.store.connection import migrate as sqlite_migrate
from mailhook.store.figures import campaign_rows
from mailhook.store.pg.connection import MIGRATION_LOCK, connect, migrate, open_database, schema_version
from mailhook.store.pg.figures import labels_update
from mailhook.store.pg.schema import MIGRATIONS
from mailhook.store.pg.session import bound_transactions
from mailhook.store.target import PostgresTarget

# SQLite's own search index and statistics, and the SQLite writer's marker that defers the figure
# triggers to one settling pass per batch (never visible outside its write transaction).
SQLITE_ONLY = {"sqlite_stat1", "events_fts", "events_fts_config", "events_fts_data",
               "events_fts_docsize", "events_fts_idx", "figures_deferred"}
# The search column PostgreSQL has where SQLite has the events_fts table; the migrations' own record.
POSTGRES_ONLY_COLUMNS = {("events", "message_tsv")}
POSTGRES_ONLY = {"schema_migrations"}


def sqlite_shape(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    conn = sqlite_connect(tmp_path / "shape.db")
    sqlite_migrate(conn)
    shape = {}
    for name, kind in conn.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')"):
        if name not in SQLITE_ONLY:
            shape[name] = (kind, [row[1] for row in conn.execute(f'PRAGMA table_info("{name}")')])
    conn.close()
    return shape


def postgres_shape(url: str) -> dict[str, tuple[str, list[str]]]:
    with psycopg.connect(url) as conn:
        kinds = dict(conn.execute(
            "SELECT table_name, CASE table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END"
            " FROM information_schema.tables WHERE table_schema = 'public'").fetchall())
        shape: dict[str, tuple[str, list[str]]] = {name: (kind, []) for name, kind in kinds.items()
                                                   if name not in POSTGRES_ONLY}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position"
        ):
            if table in shape and (table, column) not in POSTGRES_ONLY_COLUMNS:
                shape[table][1].append(column)
    return shape


def test_postgres_has_the_tables_columns_and_views_of_sqlite_in_the_same_order(
    postgres_url: str, tmp_path: Path
) -> None:
    conn = open_database(PostgresTarget(postgres_url))
    conn.close()
    assert postgres_shape(postgres_url) == sqlite_shape(tmp_path)


def test_migrating_again_changes_nothing(postgres_url: str) -> None:
    conn = open_database(PostgresTarget(postgres_url))
    conn.execute("INSERT INTO deliveries (channel, received_at, status, size, sha256) VALUES"
                 " ('http', '2026-01-01T00:00:00Z', 'stored', 1, 'x')")
    conn.commit()
    assert migrate(conn) == len(MIGRATIONS)
    assert migrate(conn) == len(MIGRATIONS)
    assert conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [
        (n,) for n in range(1, len(MIGRATIONS) + 1)]
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (1,)
    conn.close()


def test_threads_starting_together_on_an_empty_database_create_one_schema(postgres_url: str) -> None:
    target = PostgresTarget(postgres_url)
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        try:
            conn = connect(target)
            barrier.wait()
            migrate(conn)
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    conn = connect(target)
    assert schema_version(conn) == len(MIGRATIONS)
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(MIGRATIONS),)
    conn.close()


def test_processes_starting_together_on_an_empty_database_create_one_schema(postgres_url: str) -> None:
    script = (
        "import sys, time\n"
        "from mailhook.store.pg.connection import connect, migrate\n"
        "from mailhook.store.target import PostgresTarget\n"
        "conn = connect(PostgresTarget(sys.argv[1]))\n"
        "while time.time() < float(sys.argv[2]): time.sleep(0.005)\n"
        "print(migrate(conn))\n"
    )
    import time

    at = str(time.time() + 3)
    processes = [subprocess.Popen([sys.executable, "-c", script, postgres_url, at], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [process.communicate(timeout=60) for process in processes]
    assert [p.returncode for p in processes] == [0] * 4, [err for _, err in outcomes]
    assert {out.strip() for out, _ in outcomes} == {str(len(MIGRATIONS))}
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(MIGRATIONS),)


def test_a_node_waits_for_another_nodes_migration_instead_of_failing(postgres_url: str) -> None:
    holder = psycopg.connect(postgres_url)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    done = threading.Event()
    conn = connect(PostgresTarget(postgres_url))
    waiting = threading.Thread(target=lambda: (migrate(conn), done.set()))
    waiting.start()
    assert not done.wait(1.0), "migrated while another node held the migration lock"
    holder.rollback()
    holder.close()
    waiting.join(30)
    assert done.is_set()
    assert schema_version(conn) == len(MIGRATIONS)
    conn.close()


def test_a_writers_session_waits_for_another_nodes_migration_past_its_own_lock_wait(postgres_url: str) -> None:
    holder = psycopg.connect(postgres_url)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    conn = connect(PostgresTarget(postgres_url))
    bound_transactions(conn, lock_wait=0.1)  # as PgStore's connection, which migrates before it writes
    outcome: list[object] = []
    waiting = threading.Thread(target=lambda: outcome.append(_outcome(lambda: migrate(conn))))
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive() and not outcome, "gave up on the migration lock after the writer's lock wait"
    holder.rollback()
    holder.close()
    waiting.join(30)
    assert outcome == [len(MIGRATIONS)]
    assert conn.execute("SHOW lock_timeout").fetchone() == ("100ms",)  # the session's own bound is kept
    conn.close()


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the test compares it
        return exc


def test_full_text_search_finds_a_word_of_a_message_whatever_its_case(postgres_url: str) -> None:
    conn = open_database(PostgresTarget(postgres_url))
    conn.execute("INSERT INTO deliveries (id, channel, received_at, status, size, sha256) VALUES"
                 " (1, 'http', '2026-01-01T00:00:00Z', 'stored', 1, 'x')")
    for key, message in (("a", "Please STOP texting me"), ("b", "see you tomorrow"), ("c", None)):
        conn.execute(
            "INSERT INTO events (delivery_id, dedupe_key, event_type, event_type_source, api_version, format,"
            " received_at, event_time, payload, message) VALUES (1, %s, 'INBOUND_TEXT_FINISHED', 'x', 'v1', 'xml',"
            " '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '{}', %s)", (key, message))
    found = conn.execute("SELECT dedupe_key FROM events WHERE message_tsv @@ plainto_tsquery('simple', 'stop')")
    assert found.fetchall() == [("a",)]
    conn.execute("SET LOCAL enable_seqscan = off")  # three rows: without this the planner rightly scans them
    plan = "\n".join(row[0] for row in conn.execute(
        "EXPLAIN SELECT id FROM events WHERE message_tsv @@ plainto_tsquery('simple', 'stop')"))
    conn.rollback()
    conn.close()
    assert "events_message_tsv" in plan


def test_reply_lookups_use_the_indexes_of_their_own_kind_of_text_and_raw_numbers_have_none(postgres_url: str) -> None:
    conn = open_database(PostgresTarget(postgres_url))
    indexes = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events'").fetchall())
    assert not {"events_from_number", "events_to_number", "events_final_result"} & set(indexes)
    assert indexes["events_text_to"].endswith("WHERE (event_type = 'OUTBOUND_TEXT_FINISHED'::text)")
    assert indexes["events_text_from"].endswith("WHERE (event_type = 'INBOUND_TEXT_FINISHED'::text)")
    conn.execute("SET LOCAL enable_seqscan = off")  # an empty table: without this the planner rightly scans it
    plans = ["\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}")) for sql in (
        "SELECT id FROM events WHERE event_type = 'OUTBOUND_TEXT_FINISHED' AND to_e164 = '+1' AND from_e164 = '+2'",
        "SELECT id FROM events WHERE event_type = 'INBOUND_TEXT_FINISHED' AND from_e164 = '+1' AND to_e164 = '+2'",
    )]
    conn.rollback()
    conn.close()
    assert "events_text_to" in plans[0]
    assert "events_text_from" in plans[1]


def test_a_campaigns_labels_and_first_time_are_found_by_index_seeks_not_by_reading_every_event(
    postgres_url: str,
) -> None:
    conn = open_database(PostgresTarget(postgres_url))
    indexes = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events'").fetchall())
    assert "resource_id" in indexes["events_campaign"] and "broadcast_id IS NULL" in indexes["events_campaign"]
    conn.execute("SET LOCAL enable_seqscan = off")  # an empty table: without this the planner rightly scans it
    labels = labels_update("id = 7")
    first = ("UPDATE campaigns SET first_seen = (SELECT min(c.event_time) FROM ("
             + campaign_rows("x.event_time", every=True) + ") AS c) WHERE id = 7")
    plans = ["\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}")) for sql in (labels, first)]
    conn.rollback()
    conn.close()
    for plan in plans:
        assert "events_broadcast_type" in plan and "events_campaign" in plan, plan
        assert "Seq Scan on events" not in plan, plan


@pytest.mark.parametrize("view", ["texts", "calls", "campaign_events", "replies", "attempts_detail"])
def test_every_view_answers_on_an_empty_database(postgres_url: str, view: str) -> None:
    conn = open_database(PostgresTarget(postgres_url))
    assert conn.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)
    conn.close()


def test_every_postgresql_query_in_the_schema_docs_runs_on_a_real_database(postgres_url: str) -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "schema.md").read_text()
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", docs, re.S) if b.startswith("-- PostgreSQL")]
    assert blocks
    conn = open_database(PostgresTarget(postgres_url))
    try:
        for sql in blocks:
            conn.execute(sql).fetchall()
    finally:
        conn.close()
