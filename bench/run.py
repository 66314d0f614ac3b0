"""Run every benchmark and print one table: `python bench/run.py` (about 10 minutes on 2 cores).

    python bench/run.py [--quick] [--only smtp,http,...]

Each scenario runs as its own script in its own process (so one scenario's
memory or threads never colour another's). `--quick` uses small counts for a
smoke run; the figures in docs/performance.md come from the full defaults.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# A scenario's script, where its name would shadow a standard-library module (http).
SCRIPTS = {"http": "http_ingest"}

SCENARIOS: dict[str, tuple[list[str], list[str]]] = {
    # name: (full arguments, --quick arguments)
    "smtp": (["--messages", "3000", "--repeats", "3"],
             ["--messages", "400", "--repeats", "1", "--source-messages", "200", "--warmup", "50"]),
    "http": (["--requests", "4000", "--repeats", "3"], ["--requests", "500", "--repeats", "1", "--warmup", "50"]),
    "backfill": (["--count", "20000", "--repeats", "3"], ["--count", "2000", "--repeats", "1"]),
    "sessions": (["--idle", "500", "--active", "50", "--seconds", "15"], ["--seconds", "5"]),
    "readwrite": (["--preload", "20000", "--messages", "4000"], ["--preload", "3000", "--messages", "800"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run, not a measurement")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios to run")
    parser.add_argument("--workdir", default="/tmp/mailhook-bench")
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    tables: list[str] = []
    header = ""
    failed = []
    for name in chosen:
        full, quick = SCENARIOS[name]
        started = time.monotonic()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        script = HERE / f"{SCRIPTS.get(name, name)}.py"
        done = subprocess.run(
            [sys.executable, str(script), *(quick if args.quick else full), "--workdir", args.workdir],
            stdout=subprocess.PIPE, text=True, timeout=3 * 3600,
        )
        if done.returncode != 0:
            failed.append(name)
            tables.append(f"## {name}: FAILED (exit {done.returncode})")
            continue
        machine_line, _, table = done.stdout.partition("\n")
        header = header or machine_line
        tables.append(table.strip() + f"\n({time.monotonic() - started:.0f} s)")
    print(f"# mailhook benchmarks{' (--quick: smoke run only)' if args.quick else ''}")
    print(f"machine: {header}\n")
    print("\n\n".join(tables))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
