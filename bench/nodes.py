"""Throughput on PostgreSQL beside SQLite, and two nodes against one, in the same run (SMTP, HTTP, backfill).

    python bench/nodes.py [--count 2000] [--rounds 3] [--pg-url postgresql://...] [--workdir /tmp/mailhook-nodes]

Without --pg-url a throwaway PostgreSQL cluster is started (Debian's
postgresql package, as the tests start it: tests/postgres_support.py). Each
round runs every scenario once, in turn, each into a fresh database:

- `sqlite, 1 node` and `postgresql, 1 node`: `mailhook serve`, 8 SMTP sessions
  (or 8 HTTP keep-alive connections) from bench/load.py;
- `postgresql, 2 nodes`: two `mailhook serve` on one database, each sent half
  the payloads by its own client with 4 sessions (8 in all), at once;
- backfill: `mailhook ingest` of an mbox into each store.

All payloads are distinct notifications (bench/distinct.py). Per scenario:
median messages per second over the rounds, CPU milliseconds per message of
the mailhook processes (every node's whole tree) and of PostgreSQL's server
processes, and the per-round ratio to SQLite. Numbers from a shared 2-core
machine are noisy; compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, Table, free_port, machine, mailhook_serve, stop, tree_cpu_seconds, wait_port
from distinct import http_file, read_records, smtp_file, write_mbox, write_records

LOAD = ROOT / "bench" / "load.py"
SESSIONS = 8


@dataclass
class Scenario:
    """One way of storing the load: which store, how many nodes, which door; and what each round measured."""

    name: str
    kind: str  # "smtp", "http" or "backfill"
    store: str  # "sqlite" or "postgresql"
    nodes: int = 1
    runs: list[tuple[float, float, float]] = field(default_factory=list)  # rate, mailhook CPU ms, PostgreSQL CPU ms


class Postgres:
    """Where PostgreSQL runs: fresh databases on demand, and the CPU its server processes used so far."""

    def __init__(self, url: str | None, workdir: Path) -> None:
        self.cluster = None
        if url is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from postgres_support import start_cluster

            self.cluster = start_cluster(Path(tempfile.mkdtemp(prefix="mailhook-bench-pg-", dir=workdir)))
            url = self.cluster.admin_url
        self.admin = url

    def database(self) -> str:
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.admin.rsplit("/", 1)[0] + "/" + name

    def cpu(self) -> float:
        """CPU seconds of the server's processes so far (the postmaster's tree), or NaN when it is not ours."""
        if self.cluster is None:
            return float("nan")
        pid = int((self.cluster.directory / "data" / "postmaster.pid").read_text().split()[0])
        return tree_cpu_seconds(pid)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop("immediate")
            shutil.rmtree(self.cluster.directory, ignore_errors=True)


def client(kind: str, port: int, payloads: Path, sessions: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(LOAD), kind, str(port), str(payloads), "--sessions", str(sessions)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> int:
    out, err = proc.communicate(timeout=1800)
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise SystemExit(f"load client failed: {err[-2000:]}") from None
    if result["errors"] or result["refused"]:
        raise SystemExit(f"{result['refused']} refused ({result['first_refusal']}), errors {result['errors'][:2]}")
    return int(result["messages"])


def serve_turn(scenario: Scenario, db: Callable[[], str], files: dict[tuple[str, int], list[Path]],
               pg: Postgres, workdir: Path) -> tuple[float, float, float]:
    target = db()
    nodes = []
    for n in range(scenario.nodes):
        port = free_port()
        nodes.append((port, mailhook_serve(Path(target) if scenario.store == "sqlite" else target,
                                           smtp_port=port if scenario.kind == "smtp" else None,
                                           http_port=port if scenario.kind == "http" else None,
                                           log=workdir / f"serve-{n}.log")))
    try:
        for port, proc in nodes:
            wait_port(port, proc=proc)
        cpu_before = sum(tree_cpu_seconds(proc.pid) for _, proc in nodes)
        pg_before = pg.cpu()
        started = time.perf_counter()
        clients = [client(scenario.kind, port, payloads, SESSIONS // scenario.nodes)
                   for (port, _), payloads in zip(nodes, files[(scenario.kind, scenario.nodes)], strict=True)]
        messages = sum(finish(c) for c in clients)
        elapsed = time.perf_counter() - started
        cpu = sum(tree_cpu_seconds(proc.pid) for _, proc in nodes) - cpu_before
        pg_cpu = pg.cpu() - pg_before
    finally:
        for _, proc in nodes:
            stop(proc)
    return messages / elapsed, cpu / messages * 1000, pg_cpu / messages * 1000


def backfill_turn(db: str, mbox: Path, count: int, pg: Postgres, workdir: Path) -> tuple[float, float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env.update(MAILHOOK_CONFIG="", PYTHONPATH=str(ROOT), MAILHOOK_ALLOW_ROOT="1")
    pg_before = pg.cpu()
    with (workdir / "ingest.log").open("ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "mailhook", "ingest", "--db", db, str(mbox)],
                                cwd=ROOT, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mailhook ingest --db {db.split('@')[-1]} failed; see {workdir / 'ingest.log'}")
    return count / elapsed, (usage.ru_utime + usage.ru_stime) / count * 1000, (pg.cpu() - pg_before) / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", help="an existing PostgreSQL's maintenance database (CREATE DATABASE allowed)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mailhook-nodes")
    parser.add_argument("--no-backfill", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # the cluster's own user must reach its directory below
    print(machine(), file=sys.stderr)

    files: dict[tuple[str, int], list[Path]] = {}
    for kind, make in (("smtp", smtp_file), ("http", http_file)):
        whole = workdir / f"{kind}-{args.count}.bin"
        make(whole, args.count, 500)
        records = read_records(whole)
        halves = [workdir / f"{kind}-{args.count}-{n}of2.bin" for n in range(2)]
        for n, half in enumerate(halves):
            write_records(half, records[n::2])
        files[(kind, 1)], files[(kind, 2)] = [whole], halves
    mbox = workdir / f"backfill-{args.count}.mbox"
    write_mbox(mbox, args.count, 501)

    scenarios = [Scenario(f"{kind}, {store}, {nodes} node{'s' * (nodes > 1)}", kind, store, nodes)
                 for kind in ("smtp", "http") for store, nodes in (("sqlite", 1), ("postgresql", 1),
                                                                    ("postgresql", 2))]
    if not args.no_backfill:
        scenarios += [Scenario(f"backfill, {store}", "backfill", store) for store in ("sqlite", "postgresql")]
    pg = Postgres(args.pg_url, workdir)
    try:
        for round_ in range(args.rounds):
            for scenario in scenarios:
                def db(store: str = scenario.store) -> str:
                    if store == "postgresql":
                        return pg.database()
                    path = workdir / f"round-{uuid.uuid4().hex[:8]}.db"
                    return str(path)
                if scenario.kind == "backfill":
                    run = backfill_turn(db(), mbox, args.count, pg, workdir)
                else:
                    run = serve_turn(scenario, db, files, pg, workdir)
                scenario.runs.append(run)
                print(f"round {round_ + 1} {scenario.name}: {run[0]:,.0f}/s, mailhook CPU {run[1]:.2f} ms/msg, "
                      f"PostgreSQL CPU {run[2]:.2f} ms/msg", file=sys.stderr, flush=True)
            for path in workdir.glob("round-*.db*"):
                path.unlink()
    finally:
        pg.close()

    table = Table(f"PostgreSQL beside SQLite, {args.count} distinct notifications, {args.rounds} rounds "
                  f"({machine()})")
    for scenario in scenarios:
        rate = statistics.median(r[0] for r in scenario.runs)
        note = f"mailhook CPU {statistics.median(r[1] for r in scenario.runs):.2f} ms/msg"
        if scenario.store == "postgresql":
            note += f", PostgreSQL CPU {statistics.median(r[2] for r in scenario.runs):.2f} ms/msg"
        # Each against SQLite on one node, and two nodes against one, as per-round ratios (noise cancels).
        bases = [b for b in scenarios if b.kind == scenario.kind and b is not scenario
                 and (b.store, b.nodes) in ((("sqlite", 1),) + ((("postgresql", 1),) if scenario.nodes > 1 else ()))]
        for base in bases:
            ratios = [r[0] / b[0] for r, b in zip(scenario.runs, base.runs, strict=True)]
            spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
            note += f"; {statistics.median(ratios):.2f}x{spread} {base.name}"
        table.add(scenario.name, f"{rate:,.0f}/s", note)
    print(table.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
