"""mailhook export: CSV and JSON Lines that round-trip, filters shared with stats, constant memory."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import tracemalloc
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from analysis_support import SAMPLE, event, fixture_database, store_events

from mailhook.cli import main
from mailhook.export import event_types, export, rows, write
from mailhook.stats.queries import collect
from mailhook.stats.window import Window, parse_bound
from mailhook.store.connection import open_readonly


@pytest.fixture(scope="module")
def fixtures_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_database(tmp_path_factory.mktemp("export") / "mailhook.db")


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "mailhook.db"
    store_events(path, SAMPLE)
    return path


def table(path: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(path)) as conn, conn:
        cursor = conn.execute(sql)
        return [d[0] for d in cursor.description], cursor.fetchall()


def exported(path: Path, **options: Any) -> str:
    out = io.StringIO()
    db = open_readonly(path)
    try:
        export(db, out, **options)
    finally:
        db.close()
    return out.getvalue()


def test_jsonl_round_trips_every_event_column_exactly(fixtures_db: Path, tmp_path: Path) -> None:
    text = exported(fixtures_db, fmt="jsonl", columns=["*"])  # payload too: it is left out unless asked for
    copy = sqlite_utils.Database(tmp_path / "copy.db")
    _, schema = table(fixtures_db, "SELECT sql FROM sqlite_master WHERE name = 'events'")
    copy.execute(schema[0][0])
    copy["events"].insert_all(json.loads(line) for line in text.splitlines())
    columns, original = table(fixtures_db, "SELECT * FROM events ORDER BY id")
    assert len(original) > 20
    assert [tuple(r) for r in copy.execute(f"SELECT {', '.join(columns)} FROM events ORDER BY id")] == original


def test_jsonl_keeps_ids_above_2_pow_53_exact(fixtures_db: Path) -> None:
    ids = [json.loads(line)["resource_id"] for line in exported(fixtures_db, fmt="jsonl").splitlines()]
    assert 9007199254740993 in ids


def test_csv_has_a_header_and_every_value_as_text(fixtures_db: Path) -> None:
    reader = csv.reader(io.StringIO(exported(fixtures_db, fmt="csv", table="texts")))
    header = next(reader)
    columns, original = table(fixtures_db, "SELECT * FROM texts ORDER BY id")
    assert header == columns
    assert list(reader) == [["" if v is None else str(v) for v in row] for row in original]


def test_messages_with_commas_quotes_and_newlines_survive_csv(tmp_path: Path) -> None:
    path = tmp_path / "mailhook.db"
    tricky = 'line one, "quoted"\nline two; ünïcode ✓'
    store_events(path, [event("INBOUND_TEXT_FINISHED", 1, message=tricky)])
    rows_ = list(csv.DictReader(io.StringIO(exported(path, fmt="csv", table="texts"))))
    assert [r["message"] for r in rows_] == [tricky]


def test_type_filter_takes_groups_names_in_any_case_and_comma_lists() -> None:
    assert event_types(["calls", "inbound_text_finished,CAMPAIGN_STARTED", "calls"]) == (
        "OUTBOUND_CALL_FINISHED", "INBOUND_CALL_FINISHED", "INBOUND_TEXT_FINISHED", "CAMPAIGN_STARTED")


def test_filters_select_the_same_events_as_stats(sample: Path) -> None:
    window = Window(since=parse_bound("2024-03-02"), until=parse_bound("2024-03-02", until=True))
    lines = exported(sample, fmt="jsonl", window=window, types=event_types(["texts"])).splitlines()
    db = open_readonly(sample)
    try:
        texts = collect(db, window).totals.texts
    finally:
        db.close()
    assert len(lines) == texts == 4
    assert {json.loads(line)["event_type"] for line in lines} == {"OUTBOUND_TEXT_FINISHED", "INBOUND_TEXT_FINISHED"}


def test_attempts_come_with_their_event_and_follow_its_filters(sample: Path) -> None:
    lines = [json.loads(x) for x in exported(sample, fmt="jsonl", table="attempts",
                                             window=Window(broadcast_id=100)).splitlines()]
    assert len(lines) == 9
    assert {line["broadcast_id"] for line in lines} == {100}
    assert sorted(line["result"] for line in lines if line["resource_id"] == 4) == ["BUSY"] * 3


def test_deliveries_export_without_raw_bytes_and_refuse_event_filters(sample: Path) -> None:
    lines = [json.loads(x) for x in exported(sample, fmt="jsonl", table="deliveries").splitlines()]
    assert len(lines) == len(SAMPLE)
    assert "raw" not in lines[0]
    assert lines[0]["status"] == "stored"
    with pytest.raises(ValueError, match="do not apply"):
        exported(sample, fmt="jsonl", table="deliveries", types=("CAMPAIGN_STARTED",))


def test_export_leaves_out_rows_committed_after_it_started(sample: Path) -> None:
    db = open_readonly(sample)
    try:
        _, records = rows(db, "events", Window(), page=4)
        first = [next(records) for _ in range(5)]
        store_events(sample, [event("OUTBOUND_CALL_FINISHED", 99, result="LA")])
        rest = list(records)
    finally:
        db.close()
    assert len(first) + len(rest) == len(SAMPLE)
    assert [r[0] for r in first + rest] == sorted({r[0] for r in first + rest})


def test_export_memory_stays_flat_however_many_rows(tmp_path: Path) -> None:
    path = tmp_path / "mailhook.db"
    body = "x" * 2000
    store_events(path, [event("OUTBOUND_TEXT_FINISHED", i, message=f"{i} {body}") for i in range(1, 3001)])

    class Counter(io.TextIOBase):
        size = 0

        def write(self, text: str) -> int:
            self.size += len(text)
            return len(text)

    db = open_readonly(path)
    try:
        sink = Counter()
        tracemalloc.start()
        columns, records = rows(db, "events", Window(), page=100)
        count = write(sink, "jsonl", columns, records)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        db.close()
    assert count == 3000
    assert sink.size > 6_000_000
    assert peak * 10 < sink.size


def test_command_writes_a_file_only_when_complete(sample: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calls.csv"
    code = main(["export", "--db", str(sample), "--format", "csv", "--type", "calls", "--broadcast", "100",
                 "--since", "2024-03-02", "-o", str(out)], env={})
    assert code == 0
    assert "exported 3 events rows" in capsys.readouterr().err
    with out.open(newline="") as f:
        assert [r["resource_id"] for r in csv.DictReader(f)] == ["3", "4", "5"]
    assert not (tmp_path / "calls.csv.part").exists()


def test_command_streams_jsonl_to_stdout(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Schema 4: the campaign events view is `campaign_events`; `campaigns` is one row per campaign.
    assert main(["export", "--db", str(sample), "--format", "jsonl", "--table", "campaign_events"], env={}) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["event_type"], x["broadcast_id"]) for x in lines] == [
        ("CAMPAIGN_STARTED", 100), ("CAMPAIGN_FINISHED", 100)]


def test_command_exports_one_row_per_campaign(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--db", str(sample), "--format", "jsonl", "--table", "campaigns"], env={}) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["id"], x["name"], x["status"], x["calls"], x["sent"]) for x in lines] == [
        (100, "Spring", "FINISHED", 5, 0), (200, None, None, 0, 2)]


def test_command_rejects_event_filters_on_deliveries(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--db", str(sample), "--table", "deliveries", "--broadcast", "1"], env={}) == 64
    assert "do not apply" in capsys.readouterr().err


def test_payload_is_left_out_unless_asked_for(fixtures_db: Path) -> None:
    header = exported(fixtures_db).splitlines()[0].split(",")
    assert "payload" not in header and "message" in header and header[0] == "id"
    assert "payload" in exported(fixtures_db, columns=["id", "payload"]).splitlines()[0]


def test_columns_are_chosen_and_ordered_and_paging_works_without_id(fixtures_db: Path) -> None:
    lines = exported(fixtures_db, fmt="jsonl", table="texts", columns=["to_number", "final_result"])
    found = [json.loads(line) for line in lines.splitlines()]
    assert all(list(r) == ["to_number", "final_result"] for r in found)
    expected = query_all(fixtures_db, "SELECT to_number, final_result FROM texts ORDER BY id")
    assert [(r["to_number"], r["final_result"]) for r in found] == expected
    # Paged in twos, rows still come once each, in id order.
    db = open_readonly(fixtures_db)
    try:
        names, records = rows(db, "texts", Window(), page=2, columns=["message"])
        assert names == ["message"] and [r[0] for r in records] == [
            r[0] for r in query_all(fixtures_db, "SELECT message FROM texts ORDER BY id")]
    finally:
        db.close()


def test_an_unknown_column_is_a_usage_error(fixtures_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--db", str(fixtures_db), "--columns", "id,nope"], env={}) == 64
    assert "events has no column nope" in capsys.readouterr().err


def test_command_takes_columns_as_a_comma_list(fixtures_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--db", str(fixtures_db), "--table", "calls", "--columns", "call_id, duration",
                 "--columns", "transfer_duration"], env={}) == 0
    assert capsys.readouterr().out.splitlines()[0] == "call_id,duration,transfer_duration"


def query_all(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def test_the_documented_pandas_readers_keep_numbers_as_text_and_ids_exact(
    fixtures_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    pd = pytest.importorskip("pandas")  # in the dev extra; skipped only where it cannot be installed
    docs = (Path(__file__).resolve().parent.parent / "docs" / "schema.md").read_text()
    section = docs[docs.index("### Reading exports into pandas"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    for args in (["--table", "calls", "-o", "calls.csv"],
                 ["--table", "texts", "--format", "jsonl", "-o", "texts.jsonl"],
                 ["-o", "events.csv"], ["--format", "jsonl", "-o", "events.jsonl"]):
        assert main(["export", "--db", str(fixtures_db), *args], env={}) == 0
    namespace: dict[str, Any] = {}
    exec(compile(code, "schema.md", "exec"), namespace)  # the documented code, as an analyst runs it
    texts, calls = namespace["texts"], namespace["calls"]
    expected = query_all(fixtures_db, "SELECT to_number, contact_id FROM texts ORDER BY id")
    assert list(texts["to_number"].astype(object).where(texts["to_number"].notna(), None)) == [e[0] for e in expected]
    assert "67076" in set(texts["to_number"].dropna())
    assert str(texts["id"].dtype) == "Int64" and str(texts["contact_id"].dtype) == "Int64"
    assert texts["contact_id"].isna().any() and texts["contact_id"].notna().any()
    assert str(calls["from_number"].dtype).startswith("string") and str(calls["duration"].dtype) == "Int64"
    for name in ("events.csv", "events.jsonl"):
        frame = namespace["read_mailhook_csv" if name.endswith("csv") else "read_mailhook_jsonl"](name)
        assert 9007199254740993 in set(frame["resource_id"].dropna().tolist()), name
        assert isinstance(frame, pd.DataFrame)
