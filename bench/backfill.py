"""Backfill: `mailhook ingest` of a large mbox of unique notification emails; msgs/s and peak RSS.

    python bench/backfill.py [--count 100000] [--workdir /tmp/mailhook-bench]

The mbox is generated once (bench/corpus.py) and reused. mailhook's log
lines go to a file, as under systemd with a journal, not to a terminal.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, Table, machine
from corpus import write_mbox

TARGET = 3000.0


def ensure_mbox(workdir: Path, count: int) -> Path:
    """Return an mbox of `count` generated messages, writing it on first use."""
    path = workdir / f"corpus-{count}.mbox"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_mbox(tmp, count)
        tmp.rename(path)
    return path


def run_backfill(mbox: Path, workdir: Path, extra: list[str]) -> tuple[float, int, int, int]:
    """Ingest `mbox` into a fresh database; return (seconds, peak RSS KiB, deliveries, events)."""
    db = workdir / "backfill.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env.update(MAILHOOK_CONFIG="", PYTHONPATH=str(ROOT), MAILHOOK_ALLOW_ROOT="1")  # benchmarks may run as root
    with (workdir / "backfill.log").open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhook", "ingest", "--db", str(db), "--quiet", *extra, str(mbox)],
            cwd=ROOT, env=env, stdout=log, stderr=log,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"mailhook ingest exited with {code}; see {workdir / 'backfill.log'}")
    with sqlite3.connect(db) as conn:
        deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    # ru_maxrss of the children covers the process pool's workers too (each its own peak).
    return elapsed, usage.ru_maxrss, deliveries, events


def bench(count: int, workdir: Path, extra: list[str] | None = None) -> Table:
    workdir.mkdir(parents=True, exist_ok=True)
    mbox = ensure_mbox(workdir, count)
    size = mbox.stat().st_size
    elapsed, peak_kb, deliveries, events = run_backfill(mbox, workdir, extra or [])
    rate = count / elapsed
    table = Table(f"Backfill: mailhook ingest of a {count:,}-message mbox ({size / 2**20:.0f} MiB)")
    verdict = "meets" if rate >= TARGET else "MISSES"
    table.add("backfill msgs/s", f"{rate:,.0f}", f"{verdict} target {TARGET:,.0f}/s; {elapsed:.1f} s")
    table.add("backfill peak RSS", f"{peak_kb / 1024:.0f} MB", "largest single process (os.wait4 ru_maxrss)")
    table.add("backfill stored", f"{deliveries:,} / {events:,}", "deliveries / events (every message is new)")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    args = parser.parse_args()
    print(machine())
    print(bench(args.count, args.workdir).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
