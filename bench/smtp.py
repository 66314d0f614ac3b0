"""SMTP ingest: Postfix's smtp-source against mailhook, no-op and durable no-op aiosmtpd servers, and smtp-sink.

    python bench/smtp.py [--messages 2000] [--repeats 3]

Eight smtp-source processes run at once, one SMTP session each (8 parallel
sessions), each sending its own generated notification email: with `-d` many
messages per connection (persistent), without it one message per connection.
smtp-source sends a file verbatim, so within one process the same email
repeats; mailhook stores the repeats as duplicates after extracting each one
in full. Every repeat round uses fresh emails. The servers take turns,
round after round, and the table shows the median msgs/s of each:

- mailhook with `--smtp-acknowledge stored` (the default: 250 once the raw
  bytes and the events are committed) and with `received` (250 once the raw
  bytes are committed; worker processes extract the events after). For
  `received` the table also gives the rate until the last event is stored.
- `noop_smtp.py`: the same aiosmtpd, answering 250 at once (the stack's ceiling);
- `durable_smtp.py`: the same aiosmtpd, answering 250 once the raw message is
  committed by a group-commit writer (the durability floor of this disk);
- `smtp-sink` (Postfix, C): the protocol's ceiling.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    HOST,
    ROOT,
    Table,
    cpu_seconds,
    free_port,
    machine,
    mailhook_serve,
    median,
    stop,
    wait_port,
)
from corpus import Generator

SESSIONS = 8
MAILHOOK = "mailhook"
RECEIVED = "mailhook, acknowledge=received"
DRAINED = "  ... until all events stored"
DURABLE = "durable no-op aiosmtpd"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"


def blast(port: int, files: list[Path], per_session: int, *, persistent: bool) -> float:
    """Send `per_session` messages from each file over its own session(s); return msgs/s."""
    cmd_base = [SMTP_SOURCE, "-s", "1", "-m", str(per_session), "-f", "callfire@example.com",
                "-t", "ops@example.com", "-M", "bench.example.com"]
    if persistent:
        cmd_base.append("-d")
    started = time.perf_counter()
    procs = [
        subprocess.Popen([*cmd_base, "-F", str(f), f"{HOST}:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for f in files
    ]
    errors = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or b"fatal" in err or b"error" in err.lower():
            errors.append((out + err).decode(errors="replace").strip())
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"smtp-source reported errors against port {port}: {errors[0][:500]}")
    return len(files) * per_session / elapsed


def bench(messages: int, repeats: int, workdir: Path) -> Table:
    if not Path(SMTP_SOURCE).exists():
        raise SystemExit("smtp-source not found: apt-get install -y postfix (see docs/performance.md)")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="smtp-", dir=workdir))
    gen = Generator(seed=7)
    per_session = max(1, messages // SESSIONS)
    ports = {name: free_port() for name in (MAILHOOK, RECEIVED, "no-op aiosmtpd", DURABLE, "smtp-sink")}
    received_db = tmp / "received.db"
    servers = [
        mailhook_serve(tmp / "mailhook.db", smtp_port=ports[MAILHOOK], http_port=None, log=tmp / "mailhook.log"),
        mailhook_serve(received_db, smtp_port=ports[RECEIVED], http_port=None, log=tmp / "received.log",
                       extra=("--smtp-acknowledge", "received")),
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "noop_smtp.py"), str(ports["no-op aiosmtpd"])]),
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "durable_smtp.py"), str(ports[DURABLE]),
                          str(tmp / "durable.db")]),
        subprocess.Popen([SMTP_SINK, "-u", "nobody", f"{HOST}:{ports['smtp-sink']}", "256"]),
    ]
    results: dict[tuple[str, bool], list[float]] = {}
    cpu: dict[tuple[str, bool], list[float]] = {}
    pids = dict(zip(ports, (proc.pid for proc in servers), strict=True))
    try:
        for port in ports.values():
            wait_port(port)
        for round_ in range(repeats):
            for persistent in (True, False):
                files = []
                for i in range(SESSIONS):
                    path = tmp / f"r{round_}-{int(persistent)}-{i}.eml"
                    path.write_bytes(gen.message().replace(b"\n", b"\r\n"))
                    files.append(path)
                for name, port in ports.items():
                    before = cpu_seconds(pids[name])
                    started = time.perf_counter()
                    rate = blast(port, files, per_session, persistent=persistent)
                    if name == RECEIVED:
                        drained = wait_drained(received_db)
                        results.setdefault((DRAINED, persistent), []).append(
                            per_session * SESSIONS / (drained - started))
                    used = cpu_seconds(pids[name]) - before
                    results.setdefault((name, persistent), []).append(rate)
                    cpu.setdefault((name, persistent), []).append(used / (per_session * SESSIONS) * 1000)
                    shape = "persistent" if persistent else "per-connection"
                    print(f"  round {round_ + 1} {shape:>14} {name:>30}: {rate:8,.0f} msgs/s", file=sys.stderr)
    finally:
        for proc in servers:
            stop(proc)
    table = Table(
        f"SMTP ingest: smtp-source, {SESSIONS} parallel sessions, {per_session * SESSIONS:,} msgs per run, "
        f"median of {repeats}"
    )
    for persistent in (True, False):
        shape = "persistent (-d)" if persistent else "one per connection"
        noop = median(results[("no-op aiosmtpd", persistent)])
        durable = median(results[(DURABLE, persistent)])
        for name in [MAILHOOK, RECEIVED, DRAINED, "no-op aiosmtpd", DURABLE, "smtp-sink"]:
            rate = median(results[(name, persistent)])
            note = ""
            if (name, persistent) in cpu:
                note = f"server CPU {median(cpu[(name, persistent)]):.2f} ms/msg"
            if name in (MAILHOOK, RECEIVED, DRAINED):
                ratio = rate / noop
                verdict = "meets" if ratio >= 0.7 else "MISSES"
                note += f"{'; ' if note else ''}{ratio:.2f}x the no-op server ({verdict} 0.7x target), "
                note += f"{rate / durable:.2f}x the durable no-op"
            table.add(f"smtp {shape}: {name}", f"{rate:,.0f}/s", note)
    shutil.rmtree(tmp, ignore_errors=True)
    return table


def wait_drained(db: Path, timeout: float = 600.0) -> float:
    """Wait until the database holds no pending delivery; return when that was seen (perf_counter)."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        while conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError("mailhook left deliveries pending")
            time.sleep(0.002)
    finally:
        conn.close()
    return time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (split over 8 sessions)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    args = parser.parse_args()
    print(machine())
    print(bench(args.messages, args.repeats, args.workdir).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
