"""Where a `serve` group's CPU goes, thread by thread: user and system µs per message under the bench's load.

    python bench/threads.py [--door smtp|http] [--messages 6000] [--sessions 8] [--repeats 3]
                            [--baseline OTHER_CHECKOUT] [-- EXTRA SERVE FLAGS]

Starts `mailhook serve` (default `--workers`) on distinct notifications
(bench/distinct.py), warms it up, and sends each round's payloads with the
asyncio client (bench/load.py). Around each round it reads every thread's
user and system time and context switches from /proc, and reports them per
thread name (mailhook names its threads for the kernel: `mh-writer`,
`mh-reader-N`, `mh-worker-N`, ...; mailhook/thread_names.py), as µs per
message and the share of the round's wall time the thread was on a core.
Medians of the rounds. A thread near 100 % busy is the service's limit; the
system share says how much of it is the kernel's (the writer's: WAL writes,
two `pwrite64` per frame, and `fdatasync`). With `--baseline` another checkout
runs in turn in every round; with `--db` each server starts on a copy of a
database (the store's page reads grow with its size).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, descendants, free_port, machine, mailhook_serve, stop
from distinct import http_file, smtp_file
from rounds import run_client

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Times:
    """One thread's counters as read from /proc: CPU seconds and context switches."""

    user: float
    system: float
    voluntary: int
    involuntary: int


def threads(pid: int) -> dict[tuple[int, int], tuple[str, Times]]:
    """Return every thread of `pid` and its descendants: (pid, tid) -> (name, counters)."""
    found = {}
    for process in (pid, *descendants(pid)):
        try:
            tids = os.listdir(f"/proc/{process}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{process}/task/{tid}/stat").read_text()
                status = Path(f"/proc/{process}/task/{tid}/status").read_text()
            except FileNotFoundError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            switches = dict(line.split(":\t") for line in status.splitlines() if "ctxt_switches" in line)
            found[(process, int(tid))] = (name, Times(int(fields[11]) / TICKS, int(fields[12]) / TICKS,
                                                      int(switches["voluntary_ctxt_switches"]),
                                                      int(switches["nonvoluntary_ctxt_switches"])))
    return found


def spent(before: dict[tuple[int, int], tuple[str, Times]], after: dict[tuple[int, int], tuple[str, Times]],
          messages: int, wall: float) -> dict[str, tuple[float, float, float, float, float]]:
    """Sum each thread name's CPU over a round: name -> (user µs, system µs, busy %, vcs, nvcs per message)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for key, (name, now) in after.items():
        then = before.get(key, (name, Times(0.0, 0.0, 0, 0)))[1]
        total = sums[name]
        total[0] += now.user - then.user
        total[1] += now.system - then.system
        total[2] += now.voluntary - then.voluntary
        total[3] += now.involuntary - then.involuntary
    return {name: (user / messages * 1e6, system / messages * 1e6, (user + system) / wall * 100,
                   vcs / messages, nvcs / messages)
            for name, (user, system, vcs, nvcs) in sums.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--door", choices=("smtp", "http"), default="smtp")
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout of mailhook, run in turn in every round")
    parser.add_argument("--db", type=Path, help="start each server on a copy of this database (e.g. one of "
                        "bench/analyst.py build's million events) instead of an empty one")
    parser.add_argument("extra", nargs="*", help="flags for `mailhook serve`, after --")
    args = parser.parse_args()
    print(machine(), file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="threads-"))
    make = smtp_file if args.door == "smtp" else http_file
    roots = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    servers = {}
    for label, root in roots.items():
        port = free_port()
        smtp, http = (port, None) if args.door == "smtp" else (None, port)
        if args.db:
            with sqlite3.connect(args.db) as source, sqlite3.connect(tmp / f"{label}.db") as copy:
                source.backup(copy)  # the WAL's pages too, and a file the server alone writes
        servers[label] = (mailhook_serve(tmp / f"{label}.db", smtp_port=smtp, http_port=http, extra=args.extra,
                                         root=root, log=tmp / f"{label}.log"), port)
    results: dict[str, list[dict[str, tuple[float, ...]]]] = defaultdict(list)
    rates: dict[str, list[float]] = defaultdict(list)
    try:
        make(tmp / "warm", 500, seed=10_000)
        for _, port in servers.values():
            run_client(args.door, port, tmp / "warm", args.sessions)
        for round_ in range(args.repeats):
            payloads = tmp / f"round-{round_}"  # the same distinct payloads for every server, new each round
            make(payloads, args.messages, seed=round_ + 1)
            for label, (proc, port) in servers.items():
                before, start = threads(proc.pid), time.perf_counter()
                messages, seconds, _ = run_client(args.door, port, payloads, args.sessions)
                wall = time.perf_counter() - start
                results[label].append(spent(before, threads(proc.pid), messages, wall))
                rates[label].append(messages / seconds)
                print(f"  round {round_ + 1} {label}: {messages / seconds:,.0f} msgs/s", file=sys.stderr, flush=True)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    for label, rounds in results.items():
        print(f"## {label} ({roots[label]}), {args.door}, {args.sessions} sessions: "
              f"{statistics.median(rates[label]):,.0f} msgs/s, medians of {len(rounds)} rounds")
        print(f"{'thread':<16} {'user µs':>8} {'sys µs':>8} {'busy %':>7} {'vcs':>6} {'nvcs':>6}  (per message)")
        names = sorted({name for r in rounds for name in r}, key=lambda n: -statistics.median(
            [sum(r.get(n, (0.0, 0.0))[:2]) for r in rounds]))
        totals = [0.0, 0.0]
        for name in names:
            cols = [statistics.median([r.get(name, (0.0,) * 5)[i] for r in rounds]) for i in range(5)]
            if cols[0] + cols[1] < 1 and cols[3] < 0.05:
                continue
            totals[0] += cols[0]
            totals[1] += cols[1]
            print(f"{name:<16} {cols[0]:>8.0f} {cols[1]:>8.0f} {cols[2]:>7.1f} {cols[3]:>6.2f} {cols[4]:>6.2f}")
        print(f"{'all':<16} {totals[0]:>8.0f} {totals[1]:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
