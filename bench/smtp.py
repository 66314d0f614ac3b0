"""SMTP ingest of distinct notifications: mailhook beside no-op, durable no-op, MailDev and smtp-sink servers.

    python bench/smtp.py [--messages 2000] [--repeats 3] [--sessions 8] [--source-messages 2000]
                         [--baseline OLD_CHECKOUT] [--mailhook-only] [--mail-params "SIZE={size}"]

**Distinct** (the measurement): every round, bench/distinct.py writes
`--messages` distinct notification emails (each its own Message-ID and
Text/Call/Broadcast ids, all shapes, ~2.2 KB), and bench/load.py, an asyncio
client in its own process, sends them over `--sessions` persistent SMTP
sessions to each server in turn (A B C ..., round after round), the same
emails to every server of a round (after one untimed warm-up turn each,
`--warmup`). Per server the table gives the median
msgs/s, server CPU per message (the server's whole process tree) and peak RSS
of its process group, and each mailhook row's ratio to every peer:

- mailhook by default (`--smtp-acknowledge stored`: 250 once the raw bytes
  and the events are committed) and with `received` (250 once the raw bytes
  are committed; worker processes extract the events after): for `received`
  also the rate until the last event is stored;
- `noop_smtp.py`: the same aiosmtpd, answering 250 at once (the stack's ceiling);
- `durable_smtp.py`: the same aiosmtpd, answering 250 once the raw message is
  committed by a group-commit writer (the durability floor of this disk);
- MailDev (Node; keeps each message as an .eml file, no fsync), when installed
  (bench/peers.py);
- `smtp-sink` (Postfix, C): the protocol's ceiling.

**smtp-source** (kept for comparison with earlier figures): eight
`smtp-source -d` processes, each sending one file again and again over one
session. After the first, every email of a session is a duplicate, which
mailhook extracts but stores no event for: this inflates mailhook's rate.
`--source-messages 0` skips it.
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

import peers
from common import (
    HOST,
    ROOT,
    Table,
    free_port,
    machine,
    mailhook_serve,
    median,
    tree_cpu_seconds,
    wait_port,
)
from corpus import Generator
from distinct import smtp_file
from rounds import Contender, report, run_client, spawn, turn

SESSIONS = 8
MAILHOOK = "mailhook (default: stored)"
RECEIVED = "mailhook, acknowledge=received"
NOOP = "no-op aiosmtpd"
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


def source_round(contenders: list[Contender], tmp: Path, gen: Generator, round_: int, messages: int,
                 results: dict[str, list[tuple[float, float]]]) -> None:
    """One smtp-source round over every server: (msgs/s, CPU ms per message) per server."""
    per_session = max(1, messages // SESSIONS)
    files = []
    for i in range(SESSIONS):
        path = tmp / f"source-r{round_}-{i}.eml"
        path.write_bytes(gen.message().replace(b"\n", b"\r\n"))
        files.append(path)
    for c in contenders:
        before = tree_cpu_seconds(c.proc.pid)
        rate = blast(c.port, files, per_session, persistent=True)
        if c.drained is not None:
            c.drained()
        used = tree_cpu_seconds(c.proc.pid) - before
        results.setdefault(c.name, []).append((rate, used / (per_session * SESSIONS) * 1000))
        print(f"  smtp-source round {round_ + 1} {c.name:>32}: {rate:8,.0f} msgs/s", file=sys.stderr, flush=True)


def source_table(results: dict[str, list[tuple[float, float]]], messages: int, repeats: int) -> Table:
    table = Table(f"SMTP, smtp-source -d: {SESSIONS} sessions each repeating one email (duplicates after the "
                  f"first), {messages:,} msgs per turn, median of {repeats}")
    noop = results.get(NOOP)
    for name, samples in results.items():
        rate = median([r for r, _ in samples])
        note = f"CPU {median([c for _, c in samples]):.2f} ms/msg"
        if noop and name != NOOP:
            note += f"; {median([a[0] / b[0] for a, b in zip(samples, noop, strict=True)]):.2f}x {NOOP}"
        table.add(name, f"{rate:,.0f}/s", note)
    return table


def start_servers(tmp: Path, baselines: tuple[Path, ...] = (), mailhook_only: bool = False) -> list[Contender]:
    """Start every server of the comparison, each in its own process group, and wait until each listens.

    Each of `baselines` (another checkout, e.g. a worktree of main) runs as one more mailhook in the
    default mode; `mailhook_only` leaves out `received` mode and the peers.
    """
    py = sys.executable
    contenders: list[Contender] = []

    def add(name: str, proc: subprocess.Popen[bytes], port: int, **kw: object) -> None:
        contenders.append(Contender(name, proc, port, **kw))  # type: ignore[arg-type]
        wait_port(port, proc=proc)

    port = free_port()
    add(MAILHOOK, mailhook_serve(tmp / "mailhook.db", smtp_port=port, http_port=None, log=tmp / "mailhook.log",
                                 new_session=True), port, mailhook=True)
    for root in baselines:
        port = free_port()
        add(f"{MAILHOOK} ({root.name})", mailhook_serve(tmp / f"{root.name}.db", smtp_port=port, http_port=None,
                                                       log=tmp / f"{root.name}.log", new_session=True, root=root),
            port, mailhook=True)
    if mailhook_only:
        return contenders
    port = free_port()
    received_db = tmp / "received.db"
    add(RECEIVED, mailhook_serve(received_db, smtp_port=port, http_port=None, log=tmp / "received.log",
                                 extra=("--smtp-acknowledge", "received"), new_session=True),
        port, mailhook=True, drained=lambda: wait_drained(received_db))
    port = free_port()
    add(NOOP, spawn([py, str(ROOT / "bench" / "noop_smtp.py"), str(port)]), port)
    port = free_port()
    add(DURABLE, spawn([py, str(ROOT / "bench" / "durable_smtp.py"), str(port), str(tmp / "durable.db")]), port)
    found = peers.maildev()
    if found:
        path, version = found
        port = free_port()
        (tmp / "maildev").mkdir()
        add(f"MailDev {version}", spawn([str(path), "--smtp", str(port), "--ip", HOST, "--disable-web",
                                         "--mail-directory", str(tmp / "maildev"), "--silent"],
                                        log=tmp / "maildev.log"), port)
    if Path(SMTP_SINK).exists():
        port = free_port()
        add("smtp-sink (C)", spawn([SMTP_SINK, "-u", "nobody", f"{HOST}:{port}", "256"]), port)
    else:
        peers.skip("smtp-sink", "apt-get install -y postfix")
    return contenders


def bench(messages: int, repeats: int, workdir: Path, sessions: int = SESSIONS,
          source_messages: int = 2000, warmup: int = 200, baselines: tuple[Path, ...] = (),
          mailhook_only: bool = False, mail_params: str = "") -> list[Table]:
    if source_messages and not Path(SMTP_SOURCE).exists():
        peers.skip("smtp-source", "apt-get install -y postfix")
        source_messages = 0
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="smtp-", dir=workdir))
    contenders: list[Contender] = []
    source: dict[str, list[tuple[float, float]]] = {}
    try:
        contenders = start_servers(tmp, baselines, mailhook_only)
        gen = Generator(seed=7)
        if warmup:
            # One untimed turn each, so no round 1 pays for imports, JIT, caches or a new database.
            payloads = tmp / "warmup.bin"
            smtp_file(payloads, warmup, seed=99)
            for c in contenders:
                run_client("smtp", c.port, payloads, sessions, mail_params)
                if c.drained is not None:
                    c.drained()
        for round_ in range(repeats):
            payloads = tmp / f"distinct-r{round_}.bin"
            smtp_file(payloads, messages, seed=100 + round_)
            for c in contenders:
                sample = turn(c, "smtp", payloads, sessions, mail_params)
                print(f"  round {round_ + 1} {c.name:>32}: {sample.rate:8,.0f} msgs/s, "
                      f"{sample.cpu_ms:.2f} ms/msg (client {sample.client_ms:.2f}), {sample.rss_mb:.0f} MB",
                      file=sys.stderr, flush=True)
            payloads.unlink()
            if source_messages:
                source_round(contenders, tmp, gen, round_, source_messages, source)
        check_stored(tmp / "mailhook.db", messages * repeats + warmup)
    finally:
        for c in contenders:
            c.close()
    tables = [report(f"SMTP, distinct notifications: asyncio client, {sessions} persistent sessions, "
                     f"{messages:,} msgs per turn, median of {repeats} interleaved rounds", contenders)]
    if source:
        tables.append(source_table(source, source_messages, repeats))
    shutil.rmtree(tmp, ignore_errors=True)
    return tables


def check_stored(db: Path, expected: int) -> None:
    """Fail unless mailhook stored every distinct email as a new delivery with at least one event."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'stored' AND id IN "
                            "(SELECT delivery_id FROM events)").fetchone()[0]
    if rows < expected:
        raise RuntimeError(f"mailhook stored {rows} deliveries with events, expected at least {expected}")


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
    parser.add_argument("--messages", type=int, default=2000, help="distinct messages per turn")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--sessions", type=int, default=SESSIONS, help="persistent SMTP sessions")
    parser.add_argument("--source-messages", type=int, default=2000,
                        help="messages per smtp-source turn (0: skip the smtp-source comparison)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed distinct messages per server first")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another checkout of mailhook to run beside this one, default mode (e.g. main)")
    parser.add_argument("--mailhook-only", action="store_true", help="no received mode, no peers")
    parser.add_argument("--mail-params", default="",
                        help='ESMTP parameters on every MAIL, as smtplib sends them: "size={size}" (bench/load.py)')
    args = parser.parse_args()
    print(machine())
    tables = bench(args.messages, args.repeats, args.workdir, args.sessions, args.source_messages, args.warmup,
                   tuple(p.resolve() for p in args.baseline), args.mailhook_only, args.mail_params)
    print("\n\n".join(t.render() for t in tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
