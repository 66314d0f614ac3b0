"""mailhook stats: figures checked against hand-computed values and against plain SQL."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from analysis_support import SAMPLE, fixture_database, store_events

from mailhook.cli import main
from mailhook.stats.queries import collect
from mailhook.stats.render import render
from mailhook.stats.window import Window, parse_bound
from mailhook.store.connection import open_readonly

# Worked out by hand from analysis_support.SAMPLE.
BILLED_TOTAL = 1.0 + 0.5 + 0 + 2.5 + 0.03 + 0.03 + 0 + 0.03 + 1.5


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "mailhook.db"
    store_events(path, SAMPLE)
    return path


def report(path: Path, window: Window | None = None):  # type: ignore[no-untyped-def]
    db = open_readonly(path)
    try:
        return collect(db, window or Window())
    finally:
        db.close()


def test_totals_match_hand_computed_figures(sample: Path) -> None:
    t = report(sample).totals
    assert (t.events, t.calls, t.texts, t.campaign_events, t.other_events) == (15, 6, 6, 2, 1)
    assert (t.live_answers, t.machines, t.no_answer, t.busy, t.other_calls) == (2, 1, 1, 1, 1)
    assert (t.sent, t.dnt, t.failed, t.received) == (2, 1, 2, 1)
    # Tries: the transferred call's XFER_LEG record is not a try (call 5 has one try, not two).
    assert t.attempts == (1 + 2 + 1 + 3 + 1) + (1 + 1 + 1 + 1 + 0) + 1 + 1
    assert t.duration == 30 + 20 + 0 + 100 + 45
    assert t.billed_amount == pytest.approx(BILLED_TOTAL)


def test_campaign_rates_and_names_come_from_its_calls_and_latest_campaign_event(sample: Path) -> None:
    campaigns = {c.broadcast_id: c for c in report(sample).campaigns}
    assert list(campaigns) == [100, 200, None]
    spring = campaigns[100]
    assert (spring.name, spring.status, spring.type) == ("Spring", "FINISHED", "VOICE")
    m = spring.measures
    assert (m.events, m.calls, m.attempts, m.duration) == (7, 5, 8, 150)  # call 5's XFER_LEG is no try
    assert (m.live_answer_rate, m.machine_rate, m.no_answer_rate, m.busy_rate) == (0.2, 0.2, 0.2, 0.2)
    assert m.billed_amount == pytest.approx(4.0)
    assert m.sent_rate is None


def test_text_campaign_counts_sent_failed_and_dnt(sample: Path) -> None:
    texts = next(c for c in report(sample).campaigns if c.broadcast_id == 200)
    m = texts.measures
    assert texts.name is None
    assert (m.texts, m.sent, m.failed, m.dnt, m.received, m.attempts) == (5, 2, 2, 1, 0, 4)
    assert m.sent_rate == pytest.approx(0.4)
    assert m.live_answer_rate is None
    assert m.billed_amount == pytest.approx(0.06)


def test_events_of_no_campaign_are_grouped_together(sample: Path) -> None:
    none = next(c for c in report(sample).campaigns if c.broadcast_id is None).measures
    assert (none.events, none.calls, none.live_answers, none.texts, none.received, none.other_events) == (
        3, 1, 1, 1, 1, 1)


def test_days_use_modified_then_created_time(sample: Path) -> None:
    days = {d.day: d.measures for d in report(sample).days}
    assert {day: m.events for day, m in days.items()} == {"2024-03-01": 5, "2024-03-02": 7, "2024-03-03": 3}
    assert days["2024-03-02"].received == 1  # the inbound text has only a created time
    assert days["2024-03-02"].duration == 100


def test_window_bounds_include_the_whole_until_day_and_nothing_after(sample: Path) -> None:
    r = report(sample, Window(since=parse_bound("2024-03-02"), until=parse_bound("2024-03-02", until=True)))
    assert r.totals.events == 7
    assert r.totals.busy == 1  # modified 23:59:59 is inside the day
    assert [d.day for d in r.days] == ["2024-03-02"]


def test_window_with_times_and_offsets_is_half_open(sample: Path) -> None:
    since = parse_bound("2024-03-01T11:00:00+00:00")
    until = parse_bound("2024-03-01T14:00:01+02:00")  # 12:00:01 UTC, exclusive
    r = report(sample, Window(since=since, until=until))
    assert (r.totals.events, r.totals.machines, r.totals.sent) == (2, 1, 1)


def test_broadcast_filter_keeps_its_calls_and_campaign_events(sample: Path) -> None:
    r = report(sample, Window(broadcast_id=100))
    assert (r.totals.events, r.totals.calls, r.totals.campaign_events) == (7, 5, 2)
    assert [c.broadcast_id for c in r.campaigns] == [100]
    assert r.deliveries is None


def test_received_time_basis_uses_when_mailhook_stored_the_event(sample: Path) -> None:
    with closing(sqlite3.connect(sample)) as conn, conn:
        stored_day = conn.execute("SELECT substr(min(received_at), 1, 10) FROM events").fetchone()[0]
    r = report(sample, Window(time="received", until=parse_bound("2024-03-03", until=True)))
    assert r.totals.events == 0
    r = report(sample, Window(time="received"))
    assert [(d.day, d.measures.events) for d in r.days] == [(stored_day, 15)]


def test_a_duplicate_delivery_adds_no_figures(sample: Path) -> None:
    store_events(sample, SAMPLE[1:3], copy=1)
    r = report(sample)
    assert r.totals.events == 15
    assert r.deliveries == {"stored": 15, "duplicate": 2, "quarantined": 0}


def test_by_type_and_result_counts_every_pair(sample: Path) -> None:
    pairs = {(r.event_type, r.final_result): r.events for r in report(sample).by_type}
    assert pairs[("OUTBOUND_CALL_FINISHED", "LA")] == 1
    assert pairs[("OUTBOUND_TEXT_FINISHED", None)] == 1
    assert pairs[("CAMPAIGN_STARTED", None)] == 1
    assert sum(pairs.values()) == 15


def test_stats_agree_with_plain_sql_over_the_fixture_database(tmp_path: Path) -> None:
    path = fixture_database(tmp_path / "mailhook.db")
    r = report(path)
    with closing(sqlite3.connect(path)) as conn, conn:
        by_type = conn.execute(
            "SELECT event_type, final_result, count(*), coalesce(sum(billed_amount), 0) FROM events"
            " GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        attempts = conn.execute("SELECT count(*) FROM attempts WHERE result IS NOT 'XFER_LEG'").fetchone()[0]
        calls_by_campaign = dict(conn.execute(
            "SELECT broadcast_id, count(*) FROM calls WHERE broadcast_id IS NOT NULL GROUP BY 1").fetchall())
        days = conn.execute(
            "SELECT substr(coalesce(modified, created, received_at), 1, 10), count(*) FROM events GROUP BY 1"
        ).fetchall()
    assert [(t.event_type, t.final_result, t.events) for t in r.by_type] == [row[:3] for row in by_type]
    assert [t.billed_amount for t in r.by_type] == pytest.approx([row[3] for row in by_type])
    assert r.totals.attempts == attempts
    assert {c.broadcast_id: c.measures.calls for c in r.campaigns if c.measures.calls and c.broadcast_id} == (
        calls_by_campaign)
    assert [(d.day, d.measures.events) for d in r.days] == days


def test_command_prints_json_for_scripts(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", str(sample), "--json", "--broadcast", "200"], env={}) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["window"] == {"since": None, "until": None, "broadcast_id": 200, "time": "event"}
    assert data["totals"]["sent"] == 2
    assert data["campaigns"][0]["measures"]["failed"] == 2


def test_command_prints_readable_tables(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", str(sample), "--since", "2024-03-01", "--until", "2024-03"], env={}) == 0
    out = capsys.readouterr().out
    spring = next(line for line in out.splitlines() if line.startswith("100 "))
    assert spring.split()[1:7] == ["Spring", "5", "20.0%", "20.0%", "20.0%", "20.0%"]
    assert "2024-03-02       7" in out


def test_render_says_so_when_nothing_matches(sample: Path) -> None:
    text = render(report(sample, Window(since=parse_bound("2030"))))
    assert "0 events" in text
    assert "(no events)" in text


def test_command_refuses_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", str(tmp_path / "none.db")], env={}) == 66
    assert "no database" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("text", ["yesterday", "2024-13", "2024-3-1", "24-03-01"])
def test_bad_bounds_are_usage_errors(sample: Path, text: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stats", "--db", str(sample), "--since", text], env={})
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("text", "since", "until"),
    [
        ("2024", "2024-01-01T00:00:00", "2025-01-01T00:00:00"),
        ("2024-12", "2024-12-01T00:00:00", "2025-01-01T00:00:00"),
        ("2024-02-29", "2024-02-29T00:00:00", "2024-03-01T00:00:00"),
        ("2024-03-01T10:00Z", "2024-03-01T10:00:00", "2024-03-01T10:00:00"),
        ("2024-03-01 01:30:00-05:00", "2024-03-01T06:30:00", "2024-03-01T06:30:00"),
    ],
)
def test_bounds_cover_whole_periods_and_convert_to_utc(text: str, since: str, until: str) -> None:
    assert (parse_bound(text), parse_bound(text, until=True)) == (since, until)


def test_stats_read_one_snapshot_and_leave_no_transaction_open(sample: Path) -> None:
    db = open_readonly(sample)
    try:
        collect(db, Window())
        assert not db.conn.in_transaction
        db.execute("BEGIN")
        db.execute("SELECT count(*) FROM events").fetchone()
        assert collect(db, Window()).totals.events == 15  # inside the caller's own transaction
        assert db.conn.in_transaction
        db.execute("COMMIT")
    finally:
        db.close()


@pytest.mark.parametrize(
    "window",
    [Window(), Window(since="2024-03-02T00:00:00"), Window(until="2024-03-02T00:00:00"),
     Window(since="2024-03-01T00:00:00", until="2024-03-03T00:00:00", broadcast_id=100), Window(broadcast_id=200)],
)
def test_figures_from_the_totals_kept_on_ingest_equal_a_scan_of_every_event(
    sample: Path, window: Window, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert window.by_day()
    from_totals = report(sample, window)
    monkeypatch.setattr(Window, "by_day", lambda self: False)
    scanned = report(sample, window)
    assert rounded(from_totals.as_dict()) == rounded(scanned.as_dict())


def rounded(value: Any) -> Any:
    """Round floats: sums of credits differ in the last bit with the order they are added in."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value
