"""The decided figures (call seconds, tries, replies) against answers worked out by hand.

fixtures/analysts/figures.json holds transfers, retries and replies; the
answers beside it were computed by hand, and every cookbook query of
docs/schema.md is run exactly as printed there (with its example ids replaced).
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from process_support import ALLOW_ROOT

from mailhook.cli import main
from mailhook.stats.queries import collect
from mailhook.stats.window import Window
from mailhook.store.connection import open_readonly

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "fixtures" / "analysts" / "figures.json"
ANSWERS = json.loads((ROOT / "fixtures" / "analysts" / "figures.expected-answers.json").read_text())


def cookbook() -> dict[str, str]:
    """Return each numbered cookbook query of docs/schema.md by its number."""
    docs = (ROOT / "docs" / "schema.md").read_text()
    parts = re.split(r"\n\*\*(\d+)\. ", docs[docs.index("## Cookbook"):])
    return {number: re.search(r"```sql\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
            for number, text in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.fixture(scope="module")
def figures_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("figures") / "figures.db"
    assert main(["ingest", "--quiet", "--db", str(path), str(DATA)], env=ALLOW_ROOT) == 0
    return path


def run(path: Path, sql: str) -> list[list[Any]]:
    for old, new in ANSWERS["replace"].items():
        sql = sql.replace(old, new)
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return [list(row) for row in conn.execute(sql)]


def test_every_cookbook_query_with_an_answer_is_found_in_the_docs() -> None:
    assert set(ANSWERS["cookbook"]) <= set(cookbook())


@pytest.mark.parametrize("number", sorted(ANSWERS["cookbook"], key=int))
def test_cookbook_query_gives_the_hand_computed_answer(figures_db: Path, number: str) -> None:
    assert run(figures_db, cookbook()[number]) == ANSWERS["cookbook"][number]


def test_a_transferred_call_keeps_its_leg_apart(figures_db: Path) -> None:
    rows = run(figures_db, "SELECT duration, transfer_duration, tries, billed_amount FROM calls"
                           " WHERE call_id = 7700000002")
    assert rows == [[161, 251, 1, 5.0]]


def test_each_reply_is_attributed_once_within_the_window(figures_db: Path) -> None:
    rows = run(figures_db, "SELECT message, broadcast_id FROM replies ORDER BY id")
    assert rows == [["YES please", 900002], ["yes again", 900003], ["YES", 900002], ["and a question", 900002],
                    ["late yes", None], ["who is this", None], ["wrong line", None]]


def test_stats_give_the_hand_computed_figures(figures_db: Path) -> None:
    db = open_readonly(figures_db)
    try:
        report = collect(db, Window())
    finally:
        db.close()
    totals = report.totals
    assert {k: getattr(totals, k) for k in ANSWERS["stats"]["totals"]} == ANSWERS["stats"]["totals"]
    campaigns = {str(c.broadcast_id): c for c in report.campaigns}
    for key, expected in ANSWERS["stats"]["campaigns"].items():
        c = campaigns[key]
        got = {k: getattr(c, k) if hasattr(c, k) and k in ("replies", "replied_texts", "reply_rate")
               else getattr(c.measures, k) for k in expected}
        assert got == expected, key


def test_iso_week_formula_agrees_with_python_on_every_day_of_ten_years() -> None:
    sql = cookbook()["4"]
    formula = re.search(r"SELECT (printf\(.*?\)) AS week", sql, re.S)
    thursday = re.search(r"(date\(event_time, 'weekday 0', '-3 days'\))", sql)
    assert formula and thursday
    expression = formula.group(1).replace("thursday", thursday.group(1).replace("event_time", "d"))
    days = [date(2015, 12, 25) + timedelta(days=n) for n in range(3700)]
    with closing(sqlite3.connect(":memory:")) as conn:
        got = [conn.execute(f"SELECT {expression} FROM (SELECT ? AS d)", (d.isoformat() + "T12:00:00Z",)).fetchone()[0]
               for d in days]
    assert got == [f"{d.isocalendar().year}-W{d.isocalendar().week:02d}" for d in days]


def documents() -> list[bytes]:
    """Return each notification of the fixture as a document of its own."""
    return [json.dumps(item).encode() for item in json.loads(DATA.read_text())]


def store_documents(path: Path, items: list[bytes], *, batch: int) -> None:
    """Store each document as a file delivery, `batch` per transaction, through the real write path."""
    from mailhook.extract import extract
    from mailhook.models import Delivery
    from mailhook.store.write import Store

    store = Store(path)
    try:
        for start in range(0, len(items), batch):
            work = [(Delivery(channel="file", raw=raw, received_at="2026-01-01T00:00:00Z", kind="document",
                              source=f"doc{start + n}"), extract(raw, "document", {}))
                    for n, raw in enumerate(items[start:start + batch])]
            assert not [r for r in store.write(work) if isinstance(r, Exception)]
    finally:
        store.close()


def snapshot(conn: sqlite3.Connection) -> tuple[list[Any], ...]:
    campaigns = conn.execute("SELECT * FROM campaigns ORDER BY id").fetchall()
    totals = conn.execute("SELECT * FROM event_totals ORDER BY 1, 2, 3, 4").fetchall()
    replies = conn.execute("SELECT id, reply_to FROM events WHERE event_type = 'INBOUND_TEXT_FINISHED'"
                           " ORDER BY id").fetchall()
    # Sums of credits may differ in the last bit with the order of addition.
    def rounded(rows: list[Any]) -> list[Any]:
        return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]
    return rounded(campaigns), rounded(totals), replies


def full_scan(path: Path) -> tuple[list[Any], ...]:
    """Compute the maintained figures from scratch (as the schema upgrade does), and roll back."""
    from mailhook.store.connection import _statements
    from mailhook.store.figures import FULL_SCAN

    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        for statement in _statements(FULL_SCAN):
            conn.execute(statement)
        scanned = snapshot(conn)
        conn.execute("ROLLBACK")
    return scanned


def maintained(path: Path) -> tuple[list[Any], ...]:
    with closing(sqlite3.connect(path)) as conn:
        return snapshot(conn)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_figures_kept_on_ingest_in_any_order_equal_a_full_scan(tmp_path: Path, seed: int) -> None:
    import random

    items = documents()
    random.Random(seed).shuffle(items)
    path = tmp_path / "m.db"
    store_documents(path, items, batch=1 + seed * 3)
    kept = maintained(path)
    assert kept == full_scan(path)
    campaigns = {row[0]: row for row in kept[0]}
    assert set(campaigns) == {900001, 900002, 900003}
    # Replies go to the latest text whatever order things arrived in (hand-computed, as above).
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT message, broadcast_id FROM replies ORDER BY message").fetchall() == [
            ("YES", 900002), ("YES please", 900002), ("and a question", 900002), ("late yes", None),
            ("who is this", None), ("wrong line", None), ("yes again", 900003)]
        assert conn.execute("SELECT id, sent, replies, replied_texts, tries, duration, transfer_duration"
                            " FROM campaigns ORDER BY id").fetchall() == [
            (900001, 0, 0, 0, 12, 351, 301), (900002, 3, 3, 2, 5, 0, 0), (900003, 1, 1, 1, 1, 0, 0)]


def test_figures_stay_equal_to_a_full_scan_after_deletes(tmp_path: Path) -> None:
    from mailhook.store.maintenance import prune

    path = tmp_path / "m.db"
    store_documents(path, documents(), batch=5)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        # A text with replies (they move to no text: none older in the window), a reply, a transferred call.
        for resource in (6600000004, 6600000023, 7700000002):
            conn.execute("DELETE FROM events WHERE resource_id = ?", (resource,))
        assert conn.execute("SELECT reply_to IS NULL FROM events WHERE resource_id = 6600000022").fetchone() == (0,)
    assert maintained(path) == full_scan(path)
    # The text sent later took reply 22 ("yes again"); with it gone, the earlier text within 7 days has it back.
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT broadcast_id FROM replies WHERE message = 'yes again'").fetchone() == (900002,)
    prune(path, datetime.now(UTC) + timedelta(days=1))
    assert maintained(path) == full_scan(path) == ([], [], [])


def test_calls_and_texts_name_their_campaign(figures_db: Path) -> None:
    assert run(figures_db, "SELECT DISTINCT campaign_name FROM calls") == [["Fall calls"]]
    assert run(figures_db, "SELECT campaign_name, count(*) FROM texts GROUP BY 1 ORDER BY 1") == [
        [None, 7], ["Fall texts", 5], ["Follow-up", 1]]


def test_numbers_are_kept_as_sent_and_also_in_e164(figures_db: Path) -> None:
    assert run(figures_db, "SELECT from_number, from_e164, to_number, to_e164 FROM texts WHERE text_id = 6600000021"
               ) == [["+1 (310) 555-0001", "+13105550001", "67076", "67076"]]


def test_event_time_is_the_events_own_time(figures_db: Path) -> None:
    rows = run(figures_db, "SELECT count(*) FROM events WHERE event_time IS COALESCE(modified, created, received_at)")
    assert rows == run(figures_db, "SELECT count(*) FROM events")


def test_the_configured_region_reads_national_numbers_and_emails_keep_their_date(tmp_path: Path) -> None:
    document = {"TextNotification": {"Text": {
        "@id": "42", "FromNumber": "020 7946 0958", "ToNumber": "67076", "Inbound": True,
        "FinalResult": "RECEIVED", "Message": "hello", "Modified": "2024-05-01T10:00:00Z"}}}
    email = (b"From: CallFire <n@callfire.test>\r\nDate: Wed, 1 May 2024 12:00:05 +0200\r\n"
             b"Subject: Text\r\nMessage-ID: <r1@x>\r\nContent-Type: application/json\r\n\r\n"
             + json.dumps(document).encode())
    (tmp_path / "in.eml").write_bytes(email)
    path = tmp_path / "m.db"
    assert main(["ingest", "-q", "--db", str(path), str(tmp_path / "in.eml")],
                env={"MAILHOOK_STORAGE_PHONE_REGION": "GB"} | ALLOW_ROOT) == 0
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT from_number, from_e164 FROM events").fetchall() == [
            ("020 7946 0958", "+442079460958")]
        assert conn.execute("SELECT sent_at FROM deliveries").fetchall() == [("2024-05-01T10:00:05Z",)]


def test_an_unknown_region_is_a_configuration_error(tmp_path: Path) -> None:
    assert main(["ingest", "-q", "--db", str(tmp_path / "m.db"), "--storage-phone-region", "XX", str(DATA)],
                env=ALLOW_ROOT) == 78


@pytest.mark.parametrize("window", [Window(), Window(since="2024-05-01T00:00:00", until="2024-05-03T00:00:00"),
                                    Window(broadcast_id=900002), Window(until="2024-05-02T00:00:00")])
def test_stats_from_kept_totals_and_replies_equal_a_full_scan(
    figures_db: Path, window: Window, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_readonly(figures_db)
    try:
        kept = collect(db, window)
        monkeypatch.setattr(Window, "by_day", lambda self: False)
        # A bound at 00:00:00.000 still scans, and takes the windowed reply count.
        scanned = collect(db, Window(since=window.since or "0000-01-01T00:00:00", until=window.until,
                                     broadcast_id=window.broadcast_id))
    finally:
        db.close()
    assert kept.totals == scanned.totals and kept.by_type == scanned.by_type and kept.days == scanned.days
    assert kept.campaigns == scanned.campaigns  # credits here are whole numbers: exact in any order


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_figures_settled_at_the_end_of_large_batches_equal_a_full_scan(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from mailhook.store import write

    items = documents()
    random.Random(seed).shuffle(items)
    row_by_row = tmp_path / "rows.db"
    store_documents(row_by_row, items, batch=1)
    # Batches of 2 and more settle their figures at their end, after some counted row by row.
    monkeypatch.setattr(write, "DEFER_FIGURES_AT", 2)
    path = tmp_path / "m.db"
    store_documents(path, items[:seed * 3], batch=1)
    store_documents(path, items[seed * 3:], batch=2 + seed * 4)
    kept = maintained(path)
    assert kept == full_scan(path) == maintained(row_by_row)
    assert {row[0] for row in kept[0]} == {900001, 900002, 900003}
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM figures_deferred").fetchone() == (0,)
        assert conn.execute("SELECT id, sent, replies, replied_texts, tries, duration, transfer_duration"
                            " FROM campaigns ORDER BY id").fetchall() == [
            (900001, 0, 0, 0, 12, 351, 301), (900002, 3, 3, 2, 5, 0, 0), (900003, 1, 1, 1, 1, 0, 0)]


def test_a_batch_settles_figures_around_an_item_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailhook.extract import extract
    from mailhook.models import Delivery
    from mailhook.store import write
    from mailhook.store.rows import rows

    monkeypatch.setattr(write, "DEFER_FIGURES_AT", 2)
    items = documents()
    path = tmp_path / "m.db"
    store = write.Store(path)
    try:
        work: list[Any] = []
        for n, raw in enumerate(items):
            found = rows(extract(raw, "document", {}))
            if n == 5:  # a value SQLite cannot store fails this item alone, rolled back to its savepoint
                kind, values, attempts = found.events[0]
                found = found._replace(events=((kind, (*values[:-1], 2**70), attempts),))
            work.append((Delivery(channel="file", raw=raw, received_at="2026-01-01T00:00:00Z", kind="document",
                                  source=f"doc{n}"), found))
        executed: list[str] = []
        store.conn.set_trace_callback(executed.append)
        results = store.write(work)
        store.conn.set_trace_callback(None)
    finally:
        store.close()
    assert [n for n, r in enumerate(results) if isinstance(r, Exception)] == [5]
    # The batch deferred its figures, was undone at the failing item, deferred them again in its new
    # transaction, and settled them before its commit.
    settled = [n for n, sql in enumerate(executed) if sql == "ROLLBACK" or sql.startswith(
        ("INSERT INTO figures_deferred", "DELETE FROM figures_deferred", "COMMIT"))]
    assert [executed[n].split()[0] for n in settled] == ["INSERT", "ROLLBACK", "INSERT", "DELETE", "COMMIT"]
    assert maintained(path) == full_scan(path)


def test_a_deferred_batch_settles_only_what_its_new_events_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis_support import IN_TEXT, OUT_CALL, OUT_TEXT, event

    from mailhook.models import Delivery, Event, Extraction
    from mailhook.store import write

    monkeypatch.setattr(write, "DEFER_FIGURES_AT", 4)

    def batch(*events: Event) -> list[Any]:
        return [(Delivery(channel="smtp", raw=f"Message-ID: <{e.resource_id}@t>\r\n\r\n".encode() + b"x" * 400,
                          received_at="2026-01-01T00:00:00Z"), Extraction(message_id=f"<{e.resource_id}@t>",
                                                                        events=(e,)))
                for e in events]

    calls = batch(*(event(OUT_CALL, n, result="LA", broadcast=7, modified="2026-03-01T10:00:00Z",
                          attempts=("LA",)) for n in range(1, 5)))
    mixed = batch(event("CAMPAIGN_STARTED", 7, modified="2026-03-01T09:00:00Z", broadcast_name="Spring"),
                  event(OUT_TEXT, 11, result="SENT", broadcast=7, modified="2026-03-01T12:00:00Z"),
                  event(IN_TEXT, 12, modified="2026-03-01T12:05:00Z", from_number="12135550011", to_number="67076"),
                  event(OUT_CALL, 13, result="AM", broadcast=8, modified="2026-03-02T10:00:00Z"))
    path = tmp_path / "m.db"
    store = write.Store(path)
    settled: list[list[str]] = []
    try:
        for work in (calls, calls, mixed):  # the second time every event is a duplicate
            executed: list[str] = []
            store.conn.set_trace_callback(executed.append)
            store.write(work)
            store.conn.set_trace_callback(None)
            # Each statement once (sqlite3's trace repeats a statement as each trigger it fires starts).
            settled.append([" ".join(sql.split()[:3]) for sql in dict.fromkeys(map(str.lstrip, executed))
                            if sql.startswith(("INSERT INTO event_totals", "INSERT INTO campaigns",
                                               "UPDATE campaigns", "UPDATE events"))])
    finally:
        store.close()
    counts = ["INSERT INTO event_totals", "INSERT INTO campaigns"]
    assert settled == [counts, [], [*counts, "UPDATE campaigns SET", "UPDATE events SET", "UPDATE events SET"]]
    assert maintained(path) == full_scan(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT id, name, calls, texts, replies FROM campaigns ORDER BY id").fetchall() == [
            (7, "Spring", 4, 1, 1), (8, None, 1, 0, 0)]


def _stored_at_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int) -> tuple[Path, Path, list[bytes]]:
    """Store five documents in a database made by the first `version` migrations, and one in a fresh database."""
    from mailhook.store import connection
    from mailhook.store.schema import MIGRATIONS

    items = documents()
    path, fresh = tmp_path / "m.db", tmp_path / "fresh.db"
    store_documents(fresh, items[:1], batch=1)
    with monkeypatch.context() as patch:
        patch.setattr(connection, "MIGRATIONS", MIGRATIONS[:version])
        store_documents(path, items[:5], batch=3)
    return path, fresh, items


def test_a_version_7_database_upgraded_to_8_tests_campaign_events_without_temporary_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store import figures
    from mailhook.store.maintenance import prune
    from mailhook.store.schema import MIGRATIONS

    path, fresh, items = _stored_at_version(tmp_path, monkeypatch, 7)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (7,)
        # The figures triggers as version 7 made them: "is a campaign event" as an IN list of three.
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall():
            old = sql
            for alias in ("new", "old", "e"):
                old = old.replace(figures.is_campaign_event(alias), f"{alias}.event_type IN {figures.CAMPAIGN_EVENTS}")
            if old != sql:
                conn.execute(f"DROP TRIGGER {name}")
                conn.execute(old)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
                            " AND sql LIKE '%new.event_type IN (''CAMPAIGN_STARTED''%'").fetchone() == (1,)
    store_documents(path, items[5:9], batch=1)  # upgraded on open; row by row
    store_documents(path, items[9:], batch=len(items))
    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
    with closing(sqlite3.connect(path)) as conn, closing(sqlite3.connect(fresh)) as made:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),) >= (8,)
        assert conn.execute(triggers).fetchall() == made.execute(triggers).fetchall()
    assert maintained(path) == full_scan(path)
    prune(path, datetime.now(UTC) + timedelta(days=1))
    assert maintained(path) == full_scan(path) == ([], [], [])


def test_a_version_4_database_upgraded_to_5_keeps_exact_figures_row_by_row_and_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store import connection
    from mailhook.store.schema import MIGRATIONS
    from mailhook.store.write import DEFER_FIGURES_AT

    items = documents()
    path = tmp_path / "m.db"
    with monkeypatch.context() as patch:
        patch.setattr(connection, "MIGRATIONS", MIGRATIONS[:4])
        store_documents(path, items[:5], batch=3)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    store_documents(path, items[5:8], batch=1)  # upgraded on open; row by row
    assert len(items[8:]) >= DEFER_FIGURES_AT
    store_documents(path, items[8:], batch=len(items))  # one batch that settles its figures at its end
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        triggers = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall())
    assert "figures_deferred" in triggers["events_figures_insert"]
    assert "figures_deferred" in triggers["attempts_figures_insert"]
    assert maintained(path) == full_scan(path)


def test_a_version_5_database_upgraded_to_6_attributes_replies_and_keeps_exact_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store import connection
    from mailhook.store.schema import MIGRATIONS

    items = documents()
    path = tmp_path / "m.db"
    with monkeypatch.context() as patch:
        patch.setattr(connection, "MIGRATIONS", MIGRATIONS[:5])
        store_documents(path, items[:6], batch=3)
    store_documents(path, items[6:9], batch=1)  # upgraded on open; reply lookups by the partial indexes
    store_documents(path, items[9:], batch=len(items))
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),) >= (6,)
        replies = conn.execute("SELECT count(*) FROM events WHERE reply_to IS NOT NULL").fetchone()[0]
    assert replies > 0
    assert maintained(path) == full_scan(path)


@pytest.mark.parametrize(("seed", "batch"), [(0, 1), (1, 1), (2, 2), (3, 4)])
def test_figures_equal_a_full_scan_after_every_row_by_row_write(tmp_path: Path, seed: int, batch: int) -> None:
    import random

    items = documents()
    random.Random(seed).shuffle(items)  # texts before or after their replies, campaign events in any order
    path = tmp_path / "m.db"
    for start in range(0, len(items), batch):
        store_documents(path, items[start:start + batch], batch=batch)
        assert maintained(path) == full_scan(path), start


def test_reprocessing_adds_events_with_their_names_and_replies(tmp_path: Path) -> None:
    from mailhook.extract import extract
    from mailhook.store.write import Store

    items = documents()
    path = tmp_path / "m.db"
    store_documents(path, items[:1], batch=1)
    store = Store(path)
    try:
        # Every notification found again in the first delivery, as a new extraction would: the rest are new.
        for raw in items:
            store.reextract(1, extract(raw, "document", {}))
            assert maintained(path) == full_scan(path)
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert {row[0] for row in conn.execute("SELECT id FROM campaigns WHERE name IS NOT NULL")} == {
            900001, 900002, 900003}
        assert conn.execute("SELECT count(*) FROM events WHERE reply_to IS NOT NULL").fetchone()[0] > 0




# Ties and gaps the row-by-row trigger must order as FULL_SCAN does: campaign events at the same time
# (the larger id is later; "…00Z" sorts after "…00.5Z"), without a name (they keep the older one),
# older than the campaign's latest, of another type between the campaign types (not the campaign's
# own), by broadcast id; outbound texts in the same second (the larger id is the one replied to).
_CAMPAIGN = "broadcast_id, resource_id, broadcast_name, broadcast_type, labels, broadcast_status"
_T = "2026-01-02T00:00:00Z"
EDGE_EVENTS: list[tuple[str, str, tuple[Any, ...]]] = [
    ("CAMPAIGN_STARTED", _T, (None, 500, "B", "TEXT", "x", "RUNNING")),
    ("CAMPAIGN_STOPPED", "2026-01-01T00:00:00Z", (None, 500, "A", "TEXT", None, "STOPPED")),
    ("CAMPAIGN_FINISHED", _T, (None, 500, None, None, "y", "FINISHED")),
    ("CAMPAIGN_STARTED", _T, (None, 500, "N", "VOICE", "n", "NEW")),
    ("CAMPAIGN_STARTED", "2026-01-02T00:00:00.5Z", (500, 77, "C", None, None, None)),
    ("CAMPAIGN_PAUSED", "2026-01-09T00:00:00Z", (500, 78, "Z", "Z", "z", "PAUSED")),
    ("CAMPAIGN_PAUSED", "2026-01-09T00:00:00Z", (None, 500, "Y", "Y", "y", "PAUSED")),  # in events_campaign
    ("CAMPAIGN_STARTED", _T, (None, 501, "P", None, None, None)),
    ("CAMPAIGN_STOPPED", _T, (None, 501, "Q", None, None, "STOPPED")),
    ("OUTBOUND_TEXT_FINISHED", "2026-01-05T10:00:00.1Z", (500, 1, None, None, None, None)),
    ("OUTBOUND_TEXT_FINISHED", "2026-01-05T10:00:00.9Z", (None, 2, None, None, None, None)),
    ("OUTBOUND_TEXT_FINISHED", "2026-01-05T10:00:00Z", (501, 3, None, None, None, None)),
    ("OUTBOUND_TEXT_FINISHED", "2026-01-05T09:00:00Z", (500, 4, None, None, None, None)),
    ("INBOUND_TEXT_FINISHED", "2026-01-05T11:00:00Z", (None, 5, None, None, None, None)),
    ("INBOUND_TEXT_FINISHED", "2026-01-05T10:00:00.5Z", (None, 6, None, None, None, None)),
    ("INBOUND_TEXT_FINISHED", "2026-01-05T09:30:00Z", (None, 7, None, None, None, None)),
]


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3, 4, 5])
def test_row_by_row_figures_order_ties_and_missing_names_as_a_full_scan(tmp_path: Path, seed: int | None) -> None:
    import random

    from mailhook.store.write import Store

    path = tmp_path / "m.db"
    Store(path).close()
    events = list(EDGE_EVENTS)
    if seed is not None:
        random.Random(seed).shuffle(events)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("INSERT INTO deliveries (channel, received_at, status, size, sha256)"
                     " VALUES ('file', '2026-01-01T00:00:00Z', 'stored', 0, '')")
        for n, (kind, at, values) in enumerate(events):
            inbound = kind.startswith("INBOUND")
            conn.execute(
                "INSERT INTO events (delivery_id, dedupe_key, event_type, event_type_source, api_version, format,"
                f" received_at, payload, event_time, from_e164, to_e164, {_CAMPAIGN})"
                " VALUES (1, ?, ?, 'test', 'v2', 'json', '2026-01-01T00:00:00Z', '{}', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (f"k{n}", kind, at, "+15550001" if inbound else "+15559999",
                 "+15559999" if inbound else "+15550001", *values))
            assert maintained(path) == full_scan(path), (seed, n, kind, at)
        by_text = dict(conn.execute("SELECT r.resource_id, o.resource_id FROM events AS r"
                                    " LEFT JOIN events AS o ON o.id = r.reply_to"
                                    " WHERE r.event_type = 'INBOUND_TEXT_FINISHED'").fetchall())
    # 10:00:00 holds three texts: the one stored last; at 10:00:00.5 the same second; at 9:30 the 9:00 one.
    last_of_second = max((1, 2, 3), key=[values[1] for _, _, values in events].index)
    assert by_text == {5: last_of_second, 6: last_of_second, 7: 4}
    if seed is None:
        campaigns = maintained(path)[0]
        assert [row[:6] for row in campaigns if row[0] in (500, 501)] == [
            (500, "N", "VOICE", "n", "NEW", _T), (501, "Q", None, None, "STOPPED", _T)]


def test_a_version_8_database_upgraded_to_9_sorts_and_lists_nothing_per_event_and_keeps_exact_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store import figures
    from mailhook.store.schema import MIGRATIONS

    path, fresh, items = _stored_at_version(tmp_path, monkeypatch, 8)
    old = "SELECT sql FROM sqlite_master WHERE name = 'events_figures_insert'"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (8,)
        # The insert trigger as version 8 made it: the campaign's events and a reply's texts sorted.
        sql = conn.execute(old).fetchone()[0]
        made = (sql.replace(figures.labels_taken("new"), figures.labels_update(figures.campaign_key("new")))
                .replace(figures.attributed_text_unsorted("new"), figures.attributed_text("new")))
        assert made.count("ORDER BY") == 6
        conn.execute("DROP TRIGGER events_figures_insert")
        conn.execute(made)
    store_documents(path, items[5:9], batch=1)  # upgraded on open; row by row
    store_documents(path, items[9:], batch=2)
    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
    with closing(sqlite3.connect(path)) as conn, closing(sqlite3.connect(fresh)) as made:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),) >= (9,)
        assert conn.execute(triggers).fetchall() == made.execute(triggers).fetchall()
        assert "ORDER BY" not in conn.execute(old).fetchone()[0]
        index = "SELECT sql FROM sqlite_master WHERE name = 'events_campaign'"
        assert conn.execute(index).fetchone() == made.execute(index).fetchone()
        assert "BETWEEN" in conn.execute(index).fetchone()[0]
    assert maintained(path) == full_scan(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_late_text_takes_older_replies_in_either_order_the_two_insert_triggers_fire(
    tmp_path: Path, seed: int
) -> None:
    # SQLite fires the newest trigger first (undocumented): made again the other way round, the counting
    # trigger runs before `events_figures_take_replies`; the figures equal a full scan either way.
    import random

    items = documents()
    random.Random(seed).shuffle(items)  # texts before or after their replies
    path = tmp_path / "m.db"
    store_documents(path, items[:1], batch=1)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        (counting,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_figures_insert'").fetchone()
        conn.execute("DROP TRIGGER events_figures_insert")
        conn.execute(counting)
    for start in range(1, len(items)):
        store_documents(path, items[start:start + 1], batch=1)
        assert maintained(path) == full_scan(path), start
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE reply_to IS NOT NULL").fetchone()[0] > 0


def test_a_version_9_database_upgraded_to_10_takes_older_replies_in_a_trigger_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store.schema import MIGRATIONS

    path, fresh, items = _stored_at_version(tmp_path, monkeypatch, 9)
    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (9,)
        assert "events_figures_take_replies" not in dict(conn.execute(triggers).fetchall())
    store_documents(path, items[5:9], batch=1)  # upgraded on open; row by row
    store_documents(path, items[9:], batch=2)
    with closing(sqlite3.connect(path)) as conn, closing(sqlite3.connect(fresh)) as made:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),) >= (10,)
        assert conn.execute(triggers).fetchall() == made.execute(triggers).fetchall()
        upgraded = dict(conn.execute(triggers).fetchall())
    assert "reply_to = new.id" in upgraded["events_figures_take_replies"]
    assert "reply_to = new.id" not in upgraded["events_figures_insert"]
    assert maintained(path) == full_scan(path)


def test_a_version_10_database_upgraded_to_11_takes_older_replies_only_when_one_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store.schema import MIGRATIONS

    path, fresh, items = _stored_at_version(tmp_path, monkeypatch, 10)
    triggers = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (10,)
        assert "EXISTS (SELECT 1 FROM events AS r" not in dict(conn.execute(triggers))["events_figures_take_replies"]
    store_documents(path, items[5:9], batch=1)  # upgraded on open; row by row
    store_documents(path, items[9:], batch=2)
    with closing(sqlite3.connect(path)) as conn, closing(sqlite3.connect(fresh)) as made:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),) >= (11,)
        assert conn.execute(triggers).fetchall() == made.execute(triggers).fetchall()
        upgraded = dict(conn.execute(triggers).fetchall())
    when, body = upgraded["events_figures_take_replies"].split(" BEGIN")
    assert "EXISTS (SELECT 1 FROM events AS r" in when and "reply_to = new.id" in body
    assert maintained(path) == full_scan(path)


# Replies (inbound, from +15550001 to +15559999) stored before the text they answer, around the edges of
# its reply window: the same second, exactly seven days later, a second past that, a second before the
# text, another sender; one already held by a later text of the pair; then texts with no reply waiting.
_LATE = "2026-01-05T10:00:00.5Z"
WINDOW_EVENTS: list[tuple[int, str, str, str, str]] = [
    (1, "OUTBOUND_TEXT_FINISHED", "2026-01-08T00:00:00Z", "+15559999", "+15550001"),  # a later text
    (2, "INBOUND_TEXT_FINISHED", "2026-01-05T10:00:00Z", "+15550001", "+15559999"),
    (3, "INBOUND_TEXT_FINISHED", "2026-01-12T10:00:00Z", "+15550001", "+15559999"),
    (4, "INBOUND_TEXT_FINISHED", "2026-01-12T10:00:01Z", "+15550001", "+15559999"),
    (5, "INBOUND_TEXT_FINISHED", "2026-01-05T09:59:59Z", "+15550001", "+15559999"),
    (6, "INBOUND_TEXT_FINISHED", "2026-01-05T10:00:00Z", "+15550002", "+15559999"),
    (7, "INBOUND_TEXT_FINISHED", "2026-01-06T00:00:00Z", "+15550001", "+15559999"),
    (8, "OUTBOUND_TEXT_FINISHED", _LATE, "+15559999", "+15550001"),  # the late text
    (9, "OUTBOUND_TEXT_FINISHED", _LATE, "+15559999", "+15550003"),  # no reply waits for these
    (10, "OUTBOUND_TEXT_FINISHED", "2026-01-13T00:00:00Z", "+15559999", "+15550001"),
]


@pytest.mark.parametrize("late_first", [False, True])
def test_a_late_text_takes_the_replies_in_its_window_and_a_text_without_any_finds_none(
    tmp_path: Path, late_first: bool
) -> None:
    from mailhook.store.write import Store

    path = tmp_path / "m.db"
    Store(path).close()
    events = list(WINDOW_EVENTS)
    if late_first:  # the same events with the late text stored first: it takes nothing, replies find it
        events.insert(0, events.pop(7))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("INSERT INTO deliveries (channel, received_at, status, size, sha256)"
                     " VALUES ('file', '2026-01-01T00:00:00Z', 'stored', 0, '')")
        for n, kind, at, sender, recipient in events:
            conn.execute(
                "INSERT INTO events (delivery_id, dedupe_key, event_type, event_type_source, api_version, format,"
                " received_at, payload, event_time, from_e164, to_e164, broadcast_id, resource_id)"
                " VALUES (1, ?, ?, 'test', 'v2', 'json', '2026-01-01T00:00:00Z', '{}', ?, ?, ?, 500, ?)",
                (f"k{n}", kind, at, sender, recipient, n))
            assert maintained(path) == full_scan(path), (n, kind, at)
        by_reply = dict(conn.execute("SELECT r.resource_id, o.resource_id FROM events AS r"
                                     " LEFT JOIN events AS o ON o.id = r.reply_to"
                                     " WHERE r.event_type = 'INBOUND_TEXT_FINISHED'").fetchall())
    # The late text (8) has the replies of its first seconds up to the later text (1); 1 those after, to 7 days.
    assert by_reply == {2: 8, 3: 1, 4: 1, 5: None, 6: None, 7: 8}
