"""Analysts' queries at a million events: build the database, time every query, or run a query loop.

    python bench/analyst.py build DB [EVENTS]   # EVENTS (default 1,000,000) through the real write path
    python bench/analyst.py time DB             # every canned query, table page and facet in Datasette
                                                # (default settings + docs/datasette-metadata.json),
                                                # and `mailhook stats`; prints a table of seconds
    python bench/analyst.py DB SECONDS           # query loop for bench/readwrite.py: prints queries run

`time` serves DB with Datasette as documented, requests each page's JSON the
way a browser's first visit computes it (rows, count, the configured facets),
and reports the slowest of three requests, whether Datasette gave up on
anything (SQL time limit 1 s, facet time limit 200 ms: its defaults; facet
suggestions off, as docs/schema.md says to serve it), and
the time of `mailhook stats` with and without a date window.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from common import ROOT, free_port, machine, stop, wait_port

METADATA = ROOT / "docs" / "datasette-metadata.json"
LOOP_QUERIES = (
    "SELECT event_type, final_result, count(*) FROM events GROUP BY 1, 2",
    "SELECT broadcast_id, count(*), sum(billed_amount), sum(duration) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
    "SELECT substr(event_time, 1, 10) AS day, count(*) FROM events GROUP BY 1",
    "SELECT count(*) FROM events_fts WHERE events_fts MATCH 'appointment'",
    "SELECT id, channel, status, subject, size FROM deliveries ORDER BY id DESC LIMIT 50",
    "SELECT * FROM texts ORDER BY id DESC LIMIT 100",
    "SELECT result, count(*), avg(duration) FROM attempts_detail GROUP BY 1",
)
LIMIT = 1.0  # Datasette's default sql_time_limit_ms, and the bound for `mailhook stats`


def loop(db: Path, seconds: float) -> int:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    deadline = time.monotonic() + seconds
    count = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while time.monotonic() < deadline:
            for query in LOOP_QUERIES:
                conn.execute(query).fetchall()
                count += 1
    finally:
        conn.close()
        print(count, flush=True)
    return 0


def fetch(base: str, path: str, params: dict[str, str] | None = None) -> tuple[float, int, dict[str, object]]:
    url = f"{base}/mailhook/{path}.json" + ("?" + urllib.parse.urlencode(params) if params else "")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            body, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    elapsed = time.perf_counter() - started
    try:
        data = json.loads(body)
    except ValueError:
        data = {"error": body[:200].decode(errors="replace")}
    return elapsed, status, data if isinstance(data, dict) else {"rows": data}


def timed(base: str, path: str, params: dict[str, str] | None = None) -> tuple[float, str]:
    """Return the slowest of three requests and what, if anything, Datasette gave up on."""
    worst, problems = 0.0, set()
    for _ in range(3):
        elapsed, status, data = fetch(base, path, params)
        worst = max(worst, elapsed)
        if status != 200:
            problems.add(f"HTTP {status}: {str(data.get('error', ''))[:80]}")
        if data.get("facets_timed_out"):
            problems.add(f"facets timed out: {', '.join(map(str, data['facets_timed_out']))}")  # type: ignore[call-overload]
        if "filtered_table_rows_count" in data and data["filtered_table_rows_count"] is None:
            problems.add("count gave up")
    return worst, "; ".join(sorted(problems)) or "ok"


def time_all(db: Path) -> int:
    metadata = json.loads(METADATA.read_text())["databases"]["mailhook"]
    port = free_port()
    # The documented setup, with Datasette's default limits. Datasette names a database after its
    # file, and the metadata is written for mailhook.db: serve DB through a link of that name.
    link = Path(tempfile.mkdtemp()) / "mailhook.db"
    link.symlink_to(db.resolve())
    proc = subprocess.Popen([sys.executable, "-m", "datasette", "serve", str(link), "-m", str(METADATA),
                             "-p", str(port), "--setting", "suggest_facets", "off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: list[tuple[str, float, str]] = []
    try:
        wait_port(port, timeout=120, proc=proc)
        base = f"http://127.0.0.1:{port}"
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
            events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        print(f"{events:,} events; {machine()}", file=sys.stderr)
        for name, table in metadata["tables"].items():
            results.append((f"table page: {name} (facets {', '.join(table.get('facets', [])) or '-'})",
                            *timed(base, name)))
        for name, canned in metadata["queries"].items():
            params = {p: "" for p in re.findall(r":(\w+)", canned["sql"])}
            if "word" in params:
                params["word"] = "stop"
            results.append((f"canned query: {name}", *timed(base, name, params)))
            if "since" in params:
                results.append((f"canned query: {name} (one month)",
                                *timed(base, name, {**params, "since": "2025-03-01", "until": "2025-04-01"})))
        results.append(("search box: texts ?_search=stop", *timed(base, "texts", {"_search": "stop"})))
        results.append(("search box: texts ?_search=\"👍\"", *timed(base, "texts", {"_search": '"👍"'})))
    finally:
        stop(proc)
    for label, args in (("mailhook stats", []), ("mailhook stats --since 2025-03 --until 2025-03", [
            "--since", "2025-03", "--until", "2025-03"]), ("mailhook stats --json", ["--json"])):
        worst = cpu = 0.0
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mailhook", "stats", "--db", str(db), *args], check=True,
                           stdout=subprocess.DEVNULL)
            worst = max(worst, time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = max(cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        # On a shared machine the wall time includes waiting for a core; the CPU time does not.
        results.append((label, worst, f"ok (CPU {cpu:.3f} s)"))
    width = max(len(r[0]) for r in results)
    print(f"{'what':<{width}}  seconds  within 1 s  notes")
    for label, seconds, note in results:
        fine = seconds < LIMIT and note.startswith("ok")
        print(f"{label:<{width}}  {seconds:7.3f}  {'yes' if fine else 'NO':>9}  {note}")
    return 0 if all(s < LIMIT and n.startswith("ok") for _, s, n in results) else 1


def main(argv: list[str]) -> int:
    if argv and argv[0] == "build":
        from analyst_data import build

        target, total = Path(argv[1]), int(argv[2]) if len(argv) > 2 else 1_000_000
        if target.exists():
            sys.exit(f"{target} exists; remove it first")
        print(f"built {total:,} events in {build(target, total):.0f} s", file=sys.stderr)
        return 0
    if argv and argv[0] == "time":
        return time_all(Path(argv[1]))
    return loop(Path(argv[0]), float(argv[1]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
