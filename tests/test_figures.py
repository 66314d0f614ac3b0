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
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailhook.cli import main
from mailhook.stats import Window, collect
from mailhook.store import open_readonly

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
    assert main(["ingest", "--quiet", "--db", str(path), str(DATA)], env={}) == 0
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
    thursday = re.search(r"(date\(COALESCE\(modified, created, received_at\), 'weekday 0', '-3 days'\))", sql)
    assert formula and thursday
    expression = formula.group(1).replace("thursday", thursday.group(1).replace(
        "COALESCE(modified, created, received_at)", "d"))
    days = [date(2015, 12, 25) + timedelta(days=n) for n in range(3700)]
    with closing(sqlite3.connect(":memory:")) as conn:
        got = [conn.execute(f"SELECT {expression} FROM (SELECT ? AS d)", (d.isoformat() + "T12:00:00Z",)).fetchone()[0]
               for d in days]
    assert got == [f"{d.isocalendar().year}-W{d.isocalendar().week:02d}" for d in days]
