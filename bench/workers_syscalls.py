"""System calls per message of `mailhook serve --workers N`, counted by the kernel over the whole process tree.

    python bench/workers_syscalls.py [--workers 2] [--messages 1000] [--before OLD_CHECKOUT]

A count, not a timing: deterministic enough to compare two checkouts on a
loaded machine. Each server (this checkout, and the `--before` checkout if
given, e.g. `git archive main | tar -x -C /tmp/base`) gets the same distinct
SMTP emails and HTTP notifications (bench/distinct.py, 8 sessions or
keep-alive connections, bench/load.py); `perf stat` on the kernel's
syscall tracepoints, attached to every process of its tree (parent, workers,
their threads), counts the system calls made while the client runs (without
strace's stop per call, which serialises the processes and hides batching).
Printed: calls per message in all and by kind, and the tree's CPU per
message (user + system) in the same run, per checkout and door.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Table, descendants, free_port, mailhook_serve, stop, tree_cpu_seconds, wait_port
from distinct import http_file, smtp_file
from rounds import run_client

SESSIONS = 8
CALLS = ("sendto", "recvfrom", "sendmsg", "recvmsg", "write", "read", "futex", "epoll_wait", "pwrite64", "pread64",
         "fdatasync", "getpid")
STORE = ("pwrite64", "pread64", "fdatasync")  # SQLite's page writes and reads, and the commit's sync


def own_cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) of `pid` alone, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count(root: Path, door: str, workers: int, payloads: Path, warm: Path, tmp: Path) -> dict[str, float]:
    """Return the system calls of one server's tree by name (and "total") while the client sends `payloads`."""
    port = free_port()
    db = Path(tempfile.mkdtemp(dir=tmp)) / f"{door}.db"  # a fresh database each time: distinct, never duplicates
    proc = mailhook_serve(db, smtp_port=port if door == "smtp" else None, http_port=port if door == "http" else None,
                          extra=("--workers", str(workers)), log=tmp / "serve.log", root=root)
    try:
        wait_port(port, proc=proc)
        run_client(door, port, warm, SESSIONS)
        pids = [proc.pid, *descendants(proc.pid)]
        out = tmp / "perf.txt"
        events = ",".join(["raw_syscalls:sys_enter", "context-switches",
                           *(f"syscalls:sys_enter_{name}" for name in CALLS)])
        tracer = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(out), "-e", events,
                                   "-p", ",".join(str(pid) for pid in pids)], stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached
        before, parent = tree_cpu_seconds(proc.pid), own_cpu_seconds(proc.pid)
        messages, _, _ = run_client(door, port, payloads, SESSIONS)
        cpu, parent = tree_cpu_seconds(proc.pid) - before, own_cpu_seconds(proc.pid) - parent
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    finally:
        stop(proc)
    calls: dict[str, float] = {"messages": messages, "cpu_ms": cpu * 1000, "parent_ms": parent * 1000}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            name = "switches" if fields[2] == "context-switches" else (
                fields[2].rpartition("sys_enter")[2].lstrip("_") or "total")
            calls[name] = int(fields[0])
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--before", type=Path, action="append", default=[], help="an older checkout to compare")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("perf is not installed (linux-perf)", file=sys.stderr)
        return 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="syscalls-", dir=args.workdir))
    smtp_file(tmp / "smtp.bin", args.messages, seed=500)
    http_file(tmp / "http.bin", args.messages, seed=600)
    smtp_file(tmp / "warm-smtp.bin", 100, seed=99)
    http_file(tmp / "warm-http.bin", 100, seed=199)
    roots = [ROOT, *args.before]
    tables = []
    for door in ("smtp", "http"):
        table = Table(f"{door.upper()}: system calls per message, --workers {args.workers}, {SESSIONS} sessions, "
                      f"{args.messages:,} distinct messages, whole process tree (rounds interleaved)")
        for round_ in range(args.repeats):
            for root in roots:
                calls = count(root, door, args.workers, tmp / f"{door}.bin", tmp / f"warm-{door}.bin", tmp)
                n = calls.pop("messages")
                cpu, parent = calls.pop("cpu_ms") / n, calls.pop("parent_ms") / n
                total, switches = calls.pop("total"), calls.pop("switches")
                kinds = ", ".join(f"{name} {c / n:.1f}" for name, c in sorted(calls.items(), key=lambda kv: -kv[1])
                                  if c / n >= 0.05)
                store = sum(calls.get(name, 0) for name in STORE)
                note = (f"{(total - store) / n:.1f} besides the store's; CPU {cpu:.2f} ms/msg (parent {parent:.2f}); "
                        f"{switches / n:.1f} context switches; {kinds}")
                table.add(f"{root} (round {round_ + 1})", f"{total / n:.1f}", note)
        tables.append(table)
    for table in tables:
        print(table.render(), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
