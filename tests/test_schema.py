"""The analysts' schema: views, full-text search kept in sync, indexes, read-only access and Datasette."""

from __future__ import annotations

import json
import queue
import re
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from analysis_support import SAMPLE, delivery_for, event, fixture_database, store_events

from mailhook.export import rows
from mailhook.models import Extraction
from mailhook.stats.queries import collect
from mailhook.stats.window import EVENT_TIME_E, Window
from mailhook.store.connection import migrate, open_readonly, statements
from mailhook.store.figure_triggers import SETTLE
from mailhook.store.schema import MIGRATIONS
from mailhook.store.writer import Writer

METADATA = Path(__file__).resolve().parent.parent / "docs" / "datasette-metadata.json"
CALLS = ("OUTBOUND_CALL_FINISHED", "INBOUND_CALL_FINISHED")
TEXTS = ("OUTBOUND_TEXT_FINISHED", "INBOUND_TEXT_FINISHED")
CAMPAIGNS = ("CAMPAIGN_STARTED", "CAMPAIGN_STOPPED", "CAMPAIGN_FINISHED")


@pytest.fixture(scope="module")
def fixtures_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_database(tmp_path_factory.mktemp("schema") / "mailhook.db")


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "mailhook.db"
    store_events(path, SAMPLE)
    return path


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def search(path: Path, words: str) -> list[int]:
    return [r[0] for r in query(path, "SELECT rowid FROM events_fts WHERE events_fts MATCH ? ORDER BY rowid",
                                (words,))]


@pytest.mark.parametrize(("view", "types"), [("texts", TEXTS), ("calls", CALLS), ("campaign_events", CAMPAIGNS)])
def test_each_view_holds_exactly_the_events_of_its_kind(fixtures_db: Path, view: str, types: tuple[str, ...]) -> None:
    in_view = query(fixtures_db, f"SELECT id FROM {view} ORDER BY id")
    marks = ", ".join("?" * len(types))
    expected = query(fixtures_db, f"SELECT id FROM events WHERE event_type IN ({marks}) ORDER BY id", types)
    assert in_view == expected
    assert in_view, f"the fixtures hold no {view}"


def test_attempts_detail_has_one_row_per_attempt_with_its_events_columns(fixtures_db: Path) -> None:
    detail = query(fixtures_db, "SELECT id, event_id, event_type, to_number, result FROM attempts_detail ORDER BY id")
    joined = query(fixtures_db, "SELECT a.id, a.event_id, e.event_type, e.to_number, a.result"
                                " FROM attempts AS a, events AS e WHERE e.id = a.event_id ORDER BY a.id")
    assert detail == joined
    assert len(detail) == query(fixtures_db, "SELECT count(*) FROM attempts")[0][0] > 0


def test_full_text_search_finds_messages_whatever_their_case(fixtures_db: Path) -> None:
    expected = [r[0] for r in query(fixtures_db, "SELECT id FROM events WHERE message LIKE '%callfire%' ORDER BY id")]
    assert len(expected) >= 2
    assert search(fixtures_db, "callfire") == expected
    assert search(fixtures_db, "CALLFIRE") == expected


def test_search_finds_words_in_a_new_event_and_forgets_deleted_ones(sample: Path) -> None:
    assert len(search(sample, "spring")) == 4
    store_events(sample, [event("INBOUND_TEXT_FINISHED", 77, message="Is the spring sale still on? Café")])
    new_id = query(sample, "SELECT id FROM events WHERE resource_id = 77")[0][0]
    assert new_id in search(sample, "spring")
    assert search(sample, "cafe") == [new_id]  # accents are folded
    with closing(sqlite3.connect(sample)) as conn, conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM events WHERE id = ?", (new_id,))
    assert new_id not in search(sample, "spring")
    assert search(sample, "cafe") == []
    query(sample, "INSERT INTO events_fts(events_fts) VALUES ('integrity-check')")


def test_search_follows_an_edited_message(sample: Path) -> None:
    target = search(sample, "stop")
    assert len(target) == 1
    with closing(sqlite3.connect(sample)) as conn, conn:
        conn.execute("UPDATE events SET message = 'please unsubscribe me' WHERE id = ?", target)
        conn.execute("UPDATE events SET final_result = final_result WHERE id = ?", target)
    assert search(sample, "stop") == []
    assert search(sample, "unsubscribe") == target
    query(sample, "INSERT INTO events_fts(events_fts) VALUES ('integrity-check')")


def test_upgrading_an_older_database_indexes_the_messages_it_already_has(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version=1")
        conn.execute("INSERT INTO deliveries (id, channel, received_at, status, size, sha256)"
                     " VALUES (1, 'file', '2024-01-01T00:00:00Z', 'stored', 1, 'x')")
        conn.execute("INSERT INTO events (delivery_id, dedupe_key, event_type, event_type_source, api_version, format,"
                     " message, received_at, payload) VALUES (1, 'k', 'INBOUND_TEXT_FINISHED', 'inferred', '1.1',"
                     " 'json', 'old news', '2024-01-01T00:00:00Z', '{}')")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(conn) == len(MIGRATIONS)
    finally:
        conn.close()
    assert search(path, "news") == [1]


@pytest.mark.parametrize(
    ("where", "params", "index"),
    [
        (f"{EVENT_TIME_E} >= ?", ("2024-03-02",), "events_event_time"),
        ("e.event_type = ? AND e.final_result = ?", ("OUTBOUND_CALL_FINISHED", "BUSY"), "events_type_result"),
        ("e.broadcast_id = ? AND e.event_type = ?", (100, "OUTBOUND_CALL_FINISHED"), "events_broadcast_type"),
        ("e.received_at >= ?", ("2024-03-02",), "events_received_at"),
        # Version 6 dropped the indexes on the numbers as sent: their E.164 forms are indexed.
        ("e.to_e164 = ?", ("+12135550001",), "events_to_e164"),
        ("e.from_e164 = ?", ("+12135550001",), "events_from_e164"),
        # ... and on final_result alone: with the event types (as every view and figure filters), this one.
        ("e.event_type IN ('OUTBOUND_CALL_FINISHED', 'INBOUND_CALL_FINISHED') AND e.final_result = ?", ("LA",),
         "events_type_result"),
        # Version 3 dropped the single-column indexes that were prefixes of these two.
        # (Version 4 added events_type_time, which serves event_type alone as well: either will do.)
        ("e.event_type = ?", ("OUTBOUND_CALL_FINISHED",), "events_type_"),
        ("e.broadcast_id = ?", (100,), "events_broadcast_type"),
    ],
)
def test_common_filters_use_an_index(sample: Path, where: str, params: tuple[Any, ...], index: str) -> None:
    plan = " ".join(r[3] for r in query(sample, f"EXPLAIN QUERY PLAN SELECT * FROM events AS e WHERE {where}", params))
    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan


def test_only_the_indexes_a_query_needs_are_kept_each_reply_lookup_on_its_own_kind_of_text(sample: Path) -> None:
    indexes = {row[1]: row[4] for row in query(sample, "PRAGMA index_list(events)")}  # name: partial
    assert not {"events_from_number", "events_to_number", "events_final_result"} & set(indexes)
    assert indexes["events_text_to"] == indexes["events_text_from"] == 1
    where = {name: sql.split(" WHERE ")[-1].strip() for name, sql in query(
        sample, "SELECT name, sql FROM sqlite_master WHERE name IN ('events_text_to', 'events_text_from')")}
    assert where == {"events_text_to": "event_type = 'OUTBOUND_TEXT_FINISHED'",
                     "events_text_from": "event_type = 'INBOUND_TEXT_FINISHED'"}


def _statements_of_trigger(conn: sqlite3.Connection, name: str) -> list[str]:
    """Return a trigger's statements with each `new.column` as a parameter, to be EXPLAINed alone."""
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return _statements_of_trigger_sql(sql)


def _statements_of_trigger_sql(sql: str) -> list[str]:
    """Return the statements of a trigger's text, as `_statements_of_trigger` does."""
    body = sql[sql.index(" BEGIN") + len(" BEGIN"):sql.rindex("END")]
    return [re.sub(r"\b(new|old)\.(\w+)", r":\1_\2", s) for s in statements(body)]


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    names = dict.fromkeys(re.findall(r":(\w+)", sql))
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", names)]


def test_figures_kept_on_ingest_and_settled_per_batch_search_indexes_and_never_scan_events(sample: Path) -> None:
    with closing(sqlite3.connect(sample, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO figures_deferred (since) VALUES (0)")  # as Store.write does before SETTLE
        work = (_statements_of_trigger(conn, "events_figures_insert")
                + _statements_of_trigger(conn, "events_figures_take_replies") + list(statements(SETTLE)))
        plans = [_plan(conn, sql) for sql in work]
        conn.execute("ROLLBACK")
    for sql, plan in zip(work, plans, strict=True):
        # A derived table (one campaign's own events, found by index seeks) may be read whole.
        scans = [step for step in plan if step.startswith("SCAN ") and step not in SMALL_SCANS
                 and not step.startswith("SCAN (subquery-")]
        assert scans == [], (sql, plan)
    steps = " ".join(step for plan in plans for step in plan)
    # A reply finds its text by the outbound texts' index; a late text its replies by the inbound ones'.
    assert "SEARCH o USING INDEX events_text_to (to_e164=? AND from_e164=?)" in steps
    assert "SEARCH events USING INDEX events_text_from (from_e164=? AND to_e164=?)" in steps
    # A campaign's latest name, labels and status: its own events by two seeks, not every campaign event
    # (the campaign types a range of the index: an IN list would be a temporary table per statement).
    assert "SEARCH x USING INDEX events_broadcast_type (broadcast_id=? AND event_type>? AND event_type<?)" in steps
    assert "SEARCH x USING INDEX events_campaign (resource_id=?)" in steps
    assert "USING INDEX events_type_time (event_type" not in steps


SMALL_SCANS = ("SCAN CONSTANT ROW", "SCAN figures_deferred")


def test_the_figures_kept_on_ingest_sort_nothing_and_list_no_event_types_in_temporary_tables(sample: Path) -> None:
    with closing(sqlite3.connect(sample, isolation_level=None)) as conn:
        work = (_statements_of_trigger(conn, "events_figures_insert")
                + _statements_of_trigger(conn, "events_figures_take_replies"))
        plans = [_plan(conn, sql) for sql in work]
        when = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_figures_take_replies'").fetchone()[0]
        opcodes = [[row[1] for row in conn.execute(f"EXPLAIN {sql}", dict.fromkeys(re.findall(r":(\w+)", sql)))]
                   for sql in work]
    assert not [step for plan in plans for step in plan if "TEMP B-TREE" in step]
    # Each firing would open (and free) a temporary B-tree per sorter and per IN list of three types.
    # Only the UPDATE that lets a late text take older replies keeps one: its list of the rows to change,
    # which SQLite keeps for an UPDATE that fires a trigger (events_reply_to) and may change several rows.
    # It has a trigger of its own (schema 10), fired for outbound texts only: other events never open it.
    ephemeral = [sql for sql, ops in zip(work, opcodes, strict=True) if {"OpenEphemeral", "SorterOpen"} & set(ops)]
    assert len(ephemeral) == 1 and "UPDATE events SET reply_to = :new_id" in ephemeral[0]
    assert ephemeral[0] in _statements_of_trigger_sql(when)
    assert "WHEN new.event_type = 'OUTBOUND_TEXT_FINISHED'" in when
    # Nor does the insert itself, to decide whether a row belongs in `events_campaign` (schema 9).
    columns = [row[1] for row in query(sample, "PRAGMA table_info(events)") if row[1] != "id"]
    insert = f"INSERT INTO events ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    program = [row for row in query(sample, f"EXPLAIN {insert}", (None,) * len(columns))]
    main = program[:program.index(next(row for row in program if str(row[5]).startswith("-- TRIGGER")))]
    assert "OpenEphemeral" not in [row[1] for row in main]
    steps = " ".join(step for plan in plans for step in plan)
    # A campaign event's campaign: its later events with a value by two seeks that stop at the first.
    assert "SEARCH x USING INDEX events_broadcast_type (broadcast_id=? AND event_type>? AND event_type<?)" in steps
    assert "SEARCH x USING INDEX events_campaign (resource_id=?)" in steps


def test_readonly_connection_reads_but_cannot_write(sample: Path) -> None:
    db = open_readonly(sample)
    try:
        assert db.execute("SELECT count(*) FROM texts").fetchone()[0] == 6
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("DELETE FROM events")
    finally:
        db.close()


def test_writer_keeps_committing_while_an_analyst_holds_a_read_transaction(sample: Path) -> None:
    db = open_readonly(sample)
    writer = Writer(sample, busy_timeout=0.5, checkpoint_interval=0)
    try:
        db.execute("BEGIN")
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 15
        more = [event("OUTBOUND_CALL_FINISHED", 1000 + i, result="LA") for i in range(20)]
        receipts = [writer.submit(delivery_for(e), Extraction(events=(e,))).result(timeout=10) for e in more]
        assert [r.status for r in receipts] == ["stored"] * 20
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 15  # its snapshot is stable
        pinned = writer.checkpoint().result(timeout=10)
        assert not pinned.truncated  # the reader still needs the WAL frames
        db.execute("COMMIT")
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 35
        released = writer.checkpoint().result(timeout=10)
        assert released.truncated
        assert Path(f"{sample}-wal").stat().st_size == 0
    finally:
        writer.close()
        db.close()


def test_a_long_export_does_not_pin_the_wal_between_pages(sample: Path) -> None:
    db = open_readonly(sample)
    writer = Writer(sample, busy_timeout=0.5, checkpoint_interval=0)
    try:
        _, records = rows(db, "events", Window(), page=5)
        first = [next(records) for _ in range(5)]
        extra = event("OUTBOUND_CALL_FINISHED", 5000, result="LA")
        writer.submit(delivery_for(extra), Extraction(events=(extra,))).result(timeout=10)
        assert writer.checkpoint().result(timeout=10).truncated
        assert len(first) + len(list(records)) == 15
    finally:
        writer.close()
        db.close()


@pytest.fixture(scope="module")
def datasette(fixtures_db: Path) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", str(fixtures_db), "-m", str(METADATA),
         "-h", "127.0.0.1", "-p", "0", "--setting", "sql_time_limit_ms", "5000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        while True:
            line = lines.get(timeout=15)
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                break
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()


def get(base: str, path: str, **params: str) -> Any:
    url = f"{base}/mailhook/{path}.json?" + urllib.parse.urlencode({**params, "_shape": "array"})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_datasette_serves_the_campaign_summary_with_the_figures_of_stats(datasette: str, fixtures_db: Path) -> None:
    rows = get(datasette, "campaign_summary")
    db = open_readonly(fixtures_db)
    try:
        campaigns = collect(db, Window()).campaigns
    finally:
        db.close()
    assert [(r["campaign_id"], r["calls"], r["texts"], r["sent"], r["attempts"], r["duration_s"]) for r in rows] == [
        (c.broadcast_id, c.measures.calls, c.measures.texts, c.measures.sent, c.measures.attempts, c.measures.duration)
        for c in campaigns
    ]
    assert [r["name"] for r in rows] == [c.name for c in campaigns]


@pytest.mark.slow
def test_datasette_finds_inbound_replies_containing_a_word(datasette: str, fixtures_db: Path) -> None:
    expected = query(fixtures_db, "SELECT id FROM texts WHERE inbound = 1 AND message LIKE '%stop%'")
    assert expected
    rows = get(datasette, "replies_containing", word="stop")
    assert sorted(r["id"] for r in rows) == sorted(r[0] for r in expected)
    assert all("[" in r["hit"] for r in rows)


@pytest.mark.slow
def test_datasette_search_box_works_on_the_texts_view(datasette: str, fixtures_db: Path) -> None:
    rows = get(datasette, "texts", _search="callfire")
    assert sorted(r["id"] for r in rows) == search(fixtures_db, "callfire")


def test_metadata_describes_every_column_of_every_table_and_view(fixtures_db: Path) -> None:
    tables = json.loads(METADATA.read_text())["databases"]["mailhook"]["tables"]
    for name in ("deliveries", "events", "attempts", "texts", "calls", "campaign_events", "campaigns", "replies",
                 "attempts_detail"):
        columns = [r[1] for r in query(fixtures_db, f"PRAGMA table_info({name})")]
        described = tables[name]["columns"]
        assert [c for c in columns if not described.get(c)] == [], name


def test_every_query_in_the_schema_docs_runs_on_a_real_database(fixtures_db: Path) -> None:
    docs = (METADATA.parent / "schema.md").read_text()
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", docs, re.S) if b.lstrip().upper().startswith("SELECT")]
    assert len(blocks) >= 12
    db = open_readonly(fixtures_db)
    try:
        for sql in blocks:
            db.execute(sql).fetchall()
    finally:
        db.close()


def test_every_canned_query_runs_with_its_parameters_empty(fixtures_db: Path) -> None:
    queries = json.loads(METADATA.read_text())["databases"]["mailhook"]["queries"]
    assert {"campaign_summary", "failures_by_reason", "replies_containing"} <= set(queries)
    db = open_readonly(fixtures_db)
    try:
        for name, canned in queries.items():
            params = {p: "" for p in re.findall(r":(\w+)", canned["sql"])}
            assert isinstance(db.execute(canned["sql"], params).fetchall(), list), name
    finally:
        db.close()


@pytest.mark.parametrize(
    ("broadcast", "expected"),
    [
        ("", {("OUTBOUND_CALL_FINISHED", "NO_ANS"): 1, ("OUTBOUND_CALL_FINISHED", "BUSY"): 1,
              ("OUTBOUND_TEXT_FINISHED", "DNT"): 1, ("OUTBOUND_TEXT_FINISHED", "TOO_BIG"): 1,
              ("OUTBOUND_TEXT_FINISHED", "(none)"): 1}),
        ("100", {("OUTBOUND_CALL_FINISHED", "NO_ANS"): 1, ("OUTBOUND_CALL_FINISHED", "BUSY"): 1}),
    ],
)
def test_failures_by_reason_counts_what_did_not_reach_anyone(sample: Path, broadcast: str,
                                                             expected: dict[tuple[str, str], int]) -> None:
    sql = json.loads(METADATA.read_text())["databases"]["mailhook"]["queries"]["failures_by_reason"]["sql"]
    db = open_readonly(sample)
    try:
        rows = db.execute(sql, {"broadcast_id": broadcast}).fetchall()
    finally:
        db.close()
    assert {(r[0], r[1]): r[2] for r in rows} == expected


def v3_database(path: Path) -> Path:
    """Build a schema-3 database as mailhook 3 left it: a transferred call whose duration adds its leg."""
    with closing(sqlite3.connect(path)) as conn, conn:
        for script in MIGRATIONS[:3]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version=3")
        conn.execute("INSERT INTO deliveries (id, channel, received_at, status, size, sha256)"
                     " VALUES (1, 'file', '2024-01-01T00:00:00.000Z', 'stored', 1, 'x')")
        for id_, key, duration, records in ((1, "xfer", 412, (("XFER", 161), ("XFER_LEG", 251))),
                                            (2, "own", 500, (("XFER", 161), ("XFER_LEG", 251))),
                                            (3, "plain", 30, (("NO_ANS", 0), ("LA", 30)))):
            conn.execute("INSERT INTO events (id, delivery_id, dedupe_key, event_type, event_type_source, api_version,"
                         " format, duration, from_number, to_number, modified, received_at, payload)"
                         " VALUES (?, 1, ?, 'OUTBOUND_CALL_FINISHED', 'inferred', '1.1', 'xml', ?, '67076',"
                         " '+1 (310) 555-0003', '2024-01-01T10:00:00Z', '2024-01-02T00:00:00.000Z', '{}')",
                         (id_, key, duration))
            conn.executemany("INSERT INTO attempts (event_id, result, duration, payload) VALUES (?, ?, ?, '{}')",
                             [(id_, result, seconds) for result, seconds in records])
    return path


def test_migrating_a_version_3_database_takes_the_transferred_leg_out_of_call_seconds(tmp_path: Path) -> None:
    path = v3_database(tmp_path / "v3.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn)
    finally:
        conn.close()
    # The summed duration is split; a duration CallFire sent itself (500) is kept; no leg, no change.
    assert query(path, "SELECT id, duration, transfer_duration, tries FROM calls ORDER BY id") == [
        (1, 161, 251, 1), (2, 500, 251, 1), (3, 30, None, 2)]


def test_migrating_a_version_3_database_fills_the_new_columns_and_tables(tmp_path: Path) -> None:
    path = v3_database(tmp_path / "v3.db")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO deliveries (id, channel, received_at, status, size, sha256, raw, message_id)"
                     " VALUES (2, 'imap', '2024-01-05T00:00:00.000Z', 'stored', 9, 'y',"
                     " X'446174653a205475652c2031204d617220323031362031303a30303a3030202b303230300d0a0d0a78', '<a@b>')")
        conn.execute("INSERT INTO deliveries (id, channel, received_at, status, size, sha256, raw, message_id)"
                     " VALUES (3, 'imap', '2024-01-06T00:00:00.000Z', 'duplicate', 9, 'y', NULL, '<a@b>')")
        conn.execute("UPDATE events SET broadcast_id = 77")
        rows = [(10, "c", "CAMPAIGN_STARTED", None, None, "Old name", "RUNNING", "2024-01-01T09:00:00Z", None),
                (11, "t", "OUTBOUND_TEXT_FINISHED", "67076", "13105550009", None, None, "2024-01-01T11:00:00Z", "SENT"),
                (12, "r", "INBOUND_TEXT_FINISHED", "+1 310 555 0009", "67076", None, None, "2024-01-02T11:00:00Z",
                 "RECEIVED")]
        for id_, key, kind, sender, to, name, status, modified, result in rows:
            conn.execute("INSERT INTO events (id, delivery_id, dedupe_key, event_type, event_type_source, api_version,"
                         " format, resource_id, broadcast_id, from_number, to_number, broadcast_name, broadcast_status,"
                         " modified, final_result, received_at, payload)"
                         " VALUES (?, 1, ?, ?, 'inferred', '1.1', 'xml', 77, ?, ?, ?, ?, ?, ?, ?, '2024-01-02', '{}')",
                         (id_, key, kind, None if kind.startswith("INBOUND") else 77, sender, to, name, status,
                          modified, result))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn)
    finally:
        conn.close()
    assert query(path, "SELECT id, sent_at FROM deliveries ORDER BY id") == [
        (1, None), (2, "2016-03-01T08:00:00Z"), (3, "2016-03-01T08:00:00Z")]
    assert query(path, "SELECT event_time, to_e164 FROM events WHERE id = 1") == [
        ("2024-01-01T10:00:00Z", "+13105550003")]
    assert query(path, "SELECT id, name, status, calls, sent, tries, duration, transfer_duration, replies,"
                       " replied_texts, first_seen FROM campaigns") == [
        (77, "Old name", "RUNNING", 3, 1, 1 + 1 + 2, 161 + 500 + 30, 502, 1, 1, "2024-01-01T09:00:00Z")]
    assert query(path, "SELECT reply_to FROM events WHERE id = 12") == [(11,)]
    assert query(path, "SELECT campaign_name FROM calls") == [("Old name",)] * 3
    # The triggers are in place: a new call counts at once.
    store_events(path, [event("OUTBOUND_CALL_FINISHED", 99, result="LA", broadcast=77, duration=5,
                              attempts=["LA"])])
    assert query(path, "SELECT calls, live_answers, tries, duration FROM campaigns") == [(4, 1, 5, 696)]


def test_emoji_can_be_searched_and_words_still_fold_case_and_accents(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    messages = ["Thanks 👍", "👍", "yes!👍", "👍🏽 sure", "Café at noon", "❤️ it", "no emoji here"]
    store_events(path, [event("INBOUND_TEXT_FINISHED", 500 + n, message=m) for n, m in enumerate(messages)])

    def found(words: str) -> list[str]:
        return [messages[i - 1] for i in search(path, words)]

    assert found('"👍"') == ["Thanks 👍", "👍", "yes!👍"]
    assert found('"👍" *') == ["Thanks 👍", "👍", "yes!👍", "👍🏽 sure"]  # with a skin tone too
    assert found('"❤"') == found('"❤️"') == ["❤️ it"]
    assert found("cafe") == ["Café at noon"] and found("THANKS") == ["Thanks 👍"]


def sqlite_utils_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sqlite_utils", *args], capture_output=True, text=True, check=False,
                          timeout=60)


def test_sqlite_utils_disable_and_enable_fts_work_on_the_search_index(fixtures_db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with closing(sqlite3.connect(fixtures_db)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    before = search(copy, "callfire")
    assert before
    assert sqlite_utils_cli("disable-fts", str(copy), "events").returncode == 0
    # No trigger is left writing to the dropped index, so every later write still works.
    assert query(copy, "SELECT name FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%events_fts%'") == []
    query(copy, "UPDATE events SET message = message || '.' WHERE message IS NOT NULL")
    store_events(copy, [event("INBOUND_TEXT_FINISHED", 777, message="callfire again")])
    done = sqlite_utils_cli("enable-fts", str(copy), "events", "message", "--fts5", "--create-triggers")
    assert done.returncode == 0, done.stderr
    assert len(search(copy, "callfire")) == len(before) + 1
    assert sqlite_utils_cli("rebuild-fts", str(copy), "events").returncode == 0


def test_the_index_and_triggers_have_sqlite_utils_names(fixtures_db: Path) -> None:
    db = open_readonly(fixtures_db)
    try:
        assert db["events"].detect_fts() == "events_fts"
        triggers = {t.name for t in db["events"].triggers if "events_fts" in t.sql}
    finally:
        db.close()
    assert triggers == {"events_ai", "events_ad", "events_au"}


def test_the_views_newest_rows_come_from_the_event_time_index_once_statistics_exist(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    # As in an account: calls and texts sent by the thousand, a few replies, rare campaign events.
    kinds = ("OUTBOUND_CALL_FINISHED", "OUTBOUND_TEXT_FINISHED") * 9 + ("INBOUND_TEXT_FINISHED", "CAMPAIGN_STARTED")
    store_events(path, [event(kinds[n % 20], 10_000 + n, modified=f"2024-03-{1 + n % 28:02d}T10:{n % 60:02d}:00Z",
                              result="LA" if n % 2 == 0 else None, broadcast=n % 8 or None)
                        for n in range(4000)])  # the writer refreshes statistics when it closes
    assert query(path, "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'events'")[0][0] > 0
    for view in ("calls", "texts"):
        plan = " | ".join(r[3] for r in query(path, f"EXPLAIN QUERY PLAN SELECT * FROM {view}"
                                                    " ORDER BY event_time DESC LIMIT 101"))
        assert "events_event_time" in plan and "TEMP B-TREE" not in plan, plan
    plan = " | ".join(r[3] for r in query(path, "EXPLAIN QUERY PLAN SELECT * FROM replies"
                                                " ORDER BY replied_at DESC LIMIT 101"))
    assert "TEMP B-TREE" not in plan, plan
    # Campaign events are rare: sorting them starts from their type, not from every event's time.
    plan = " | ".join(r[3] for r in query(path, "EXPLAIN QUERY PLAN SELECT * FROM campaign_events"
                                                " ORDER BY event_time DESC LIMIT 101"))
    assert "events_event_time" not in plan, plan


def test_a_new_outbound_text_looks_for_replies_to_take_by_one_index_seek_before_its_trigger_works(
    sample: Path
) -> None:
    with closing(sqlite3.connect(sample, isolation_level=None)) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_figures_take_replies'").fetchone()
        when = sql[sql.index("WHEN ") + len("WHEN "):sql.index(" BEGIN")]
        guard = re.sub(r"\b(new|old)\.(\w+)", r":\1_\2", when[when.index("EXISTS (SELECT 1 FROM events"):])
        plan = _plan(conn, f"SELECT {guard}")
    assert "new.event_type = 'OUTBOUND_TEXT_FINISHED'" in when  # tested first: other events seek nothing
    assert "SEARCH r USING INDEX events_text_from (from_e164=? AND to_e164=?)" in plan, plan
    assert not [step for step in plan if step.startswith("SCAN ") and step not in SMALL_SCANS], plan
