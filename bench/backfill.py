"""Backfill: `mailhook ingest` of an mbox of distinct notifications, beside mbox-to-sqlite on the same mbox.

    python bench/backfill.py [--count 20000] [--repeats 3] [--workdir /tmp/mailhook-bench] [--baseline OLD_CHECKOUT]

The mbox is generated once by bench/distinct.py (every email its own
Message-ID and notification ids, all shapes, ~2.2 KB) and reused. Each round
runs each loader once into a fresh database, in turn (A B, A B, ...):

- `mailhook ingest` (extracts every event; its log lines go to a file, as
  under systemd with a journal, not to a terminal);
- mbox-to-sqlite (PyPI, stores each message's headers and body in one table,
  extracts nothing), when installed (bench/peers.py).

Per loader: median msgs/s, CPU per message of the process and all its
children (`os.wait4`, which counts every waited-for descendant), peak RSS of
its process group (sampled) and of its largest process, and mailhook's
per-round ratio to the peer. mailhook's database is checked to hold every
email as a stored delivery with its events.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import peers
from common import ROOT, PeakRss, Table, machine
from distinct import write_mbox


@dataclass
class Loader:
    """A program that loads an mbox into a database, and what each of its runs measured."""

    name: str
    command: list[str]  # "{db}" and "{mbox}" are replaced
    mailhook: bool = False
    root: Path = ROOT  # the checkout of mailhook it runs (--baseline: another one, e.g. main)
    runs: list[tuple[float, float, float, float]] = field(default_factory=list)  # rate, cpu ms, group MB, max MB


def ensure_mbox(workdir: Path, count: int) -> Path:
    """Return an mbox of `count` distinct emails, writing it on first use."""
    path = workdir / f"distinct-{count}.mbox"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_mbox(tmp, count, seed=300)
        tmp.rename(path)
    return path


def run_once(loader: Loader, mbox: Path, count: int, workdir: Path) -> tuple[float, float, float, float]:
    """Load `mbox` into a fresh database; return (msgs/s, CPU ms per message, group peak MB, largest process MB)."""
    db = workdir / f"backfill-{'mailhook' if loader.mailhook else 'peer'}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env.update(MAILHOOK_CONFIG="", PYTHONPATH=str(loader.root), MAILHOOK_ALLOW_ROOT="1")  # benchmarks may run as root
    command = [part.replace("{db}", str(db)).replace("{mbox}", str(mbox)) for part in loader.command]
    with (workdir / "backfill.log").open("ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=loader.root, env=env, stdout=log, stderr=log, start_new_session=True)
        rss = PeakRss(proc.pid, interval=0.05)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        rss.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{loader.name} exited with {code}; see {workdir / 'backfill.log'}")
    if loader.mailhook:
        check_stored(db, count)
    cpu_ms = (usage.ru_utime + usage.ru_stime) / count * 1000
    return count / elapsed, cpu_ms, rss.peak_kb / 1024, usage.ru_maxrss / 1024


def check_stored(db: Path, count: int) -> None:
    """Fail unless every email is a stored delivery with at least one event."""
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'stored' AND id IN "
                              "(SELECT delivery_id FROM events)").fetchone()[0]
    if stored != count:
        raise SystemExit(f"mailhook ingest stored {stored} deliveries with events, expected {count}")


def bench(count: int, repeats: int, workdir: Path, baselines: tuple[Path, ...] = ()) -> Table:
    workdir.mkdir(parents=True, exist_ok=True)
    mbox = ensure_mbox(workdir, count)
    size = mbox.stat().st_size
    loaders = [Loader("mailhook ingest", [sys.executable, "-m", "mailhook", "ingest", "--db", "{db}", "--quiet",
                                          "{mbox}"], mailhook=True)]
    for root in baselines:
        loaders.append(Loader(f"mailhook ingest ({root.name})", loaders[0].command, mailhook=True, root=root))
    found = peers.mbox_to_sqlite()
    if found:
        path, version = found
        loaders.append(Loader(f"mbox-to-sqlite {version}", [str(path), "mbox", "{db}", "{mbox}"]))
    for round_ in range(repeats):
        for loader in loaders:
            result = run_once(loader, mbox, count, workdir)
            loader.runs.append(result)
            print(f"  round {round_ + 1} {loader.name:>22}: {result[0]:8,.0f} msgs/s, {result[1]:.2f} ms/msg, "
                  f"group peak {result[2]:.0f} MB", file=sys.stderr, flush=True)
    table = Table(f"Backfill of a {count:,}-email mbox of distinct notifications ({size / 2**20:.0f} MiB), "
                  f"median of {repeats} interleaved rounds")
    for loader in loaders:
        rate, cpu, group, largest = (statistics.median(r[i] for r in loader.runs) for i in range(4))
        note = f"CPU {cpu:.2f} ms/msg, peak RSS {group:.0f} MB (group; largest process {largest:.0f} MB)"
        if loader.mailhook:
            for peer in [other for other in loaders if not other.mailhook]:
                ratios = [a[0] / b[0] for a, b in zip(loader.runs, peer.runs, strict=True)]
                spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
                note += f"; {statistics.median(ratios):.2f}x{spread} {peer.name}"
        table.add(loader.name, f"{rate:,.0f}/s", note)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another checkout of mailhook to run beside this one (e.g. a worktree of main)")
    args = parser.parse_args()
    print(machine())
    print(bench(args.count, args.repeats, args.workdir, tuple(p.resolve() for p in args.baseline)).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
