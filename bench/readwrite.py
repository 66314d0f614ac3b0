"""Read/write: SMTP ingest rate with and without an analyst query loop, and the WAL size afterwards.

    python bench/readwrite.py [--preload 10000] [--messages 2000]

The database is first filled with `--preload` notifications (mailhook ingest
of a generated mbox) so the analyst's queries have something to chew on.
Then smtp-source sends the same load twice to `mailhook serve`: once alone,
once while bench/analyst.py runs its queries on a read-only connection.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backfill import ensure_mbox
from common import ROOT, Table, free_port, machine, mailhook_serve, stop
from corpus import Generator
from smtp import SESSIONS, blast

ANALYST = Path(__file__).resolve().parent / "analyst.py"


def wal_mb(db: Path) -> float:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size / 2**20 if wal.exists() else 0.0


def bench(preload: int, messages: int, workdir: Path) -> Table:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="readwrite-", dir=workdir))
    db = tmp / "mailhook.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env.update(MAILHOOK_CONFIG="", PYTHONPATH=str(ROOT), MAILHOOK_ALLOW_ROOT="1")  # benchmarks may run as root
    subprocess.run([sys.executable, "-m", "mailhook", "ingest", "--db", str(db), "--quiet",
                    str(ensure_mbox(workdir, preload))], cwd=ROOT, env=env, check=True,
                   stderr=subprocess.DEVNULL, timeout=3600)
    gen = Generator(seed=23)
    per_session = max(1, messages // SESSIONS)
    port = free_port()
    server = mailhook_serve(db, smtp_port=port, http_port=None, log=tmp / "mailhook.log")
    table = Table(f"Read/write: {per_session * SESSIONS:,} SMTP messages into a database of {preload:,} notifications")
    try:
        rates = {}
        for phase in ("alone", "with analyst loop"):
            files = []
            for i in range(SESSIONS):
                path = tmp / f"{phase[:5]}-{i}.eml"
                path.write_bytes(gen.message().replace(b"\n", b"\r\n"))
                files.append(path)
            analyst = None
            if phase != "alone":
                analyst = subprocess.Popen([sys.executable, str(ANALYST), str(db), "3600"],
                                           stdout=subprocess.PIPE, text=True)
                time.sleep(0.5)
            started = time.perf_counter()
            rates[phase] = blast(port, files, per_session, persistent=True)
            elapsed = time.perf_counter() - started
            note = f"WAL {wal_mb(db):.1f} MB right after"
            if analyst is not None:
                analyst.terminate()
                during = int(analyst.communicate(timeout=30)[0].strip() or 0)
                alone = subprocess.run([sys.executable, str(ANALYST), str(db), "3"],
                                       capture_output=True, text=True, check=True).stdout.strip()
                note += f"; analyst {during / elapsed:.0f} queries/s meanwhile ({int(alone) / 3:.0f}/s with no ingest)"
            table.add(f"smtp ingest {phase}", f"{rates[phase]:,.0f}/s", note)
    finally:
        stop(server)
    table.add("WAL after shutdown", f"{wal_mb(db):.1f} MB", f"database {db.stat().st_size / 2**20:.0f} MB")
    shutil.rmtree(tmp, ignore_errors=True)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preload", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    args = parser.parse_args()
    print(machine())
    print(bench(args.preload, args.messages, args.workdir).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
