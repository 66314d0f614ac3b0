"""The store's write path counted: statements executed, and instructions under callgrind, per distinct email.

    python bench/store_calls.py [--emails 400] [--batch 4] [--root OTHER_CHECKOUT ...]  # statements per email
    python bench/store_calls.py --callgrind [--emails 400] [--batch 4] [--root ...]      # instructions per email

Deterministic: the distinct bench emails of bench/store_frames.py (seed 11,
extracted beforehand) go through `Store.write` in batches of `--batch` (4 by
default; the server commits 1 to 4, a backfill 256) after 400 in batches of 4
to warm up. Statements are counted as the store
executes them (`executemany` per row). With `--callgrind` the measured writes
run inside `itertools.starmap`, so that `valgrind --tool=callgrind
--toggle-collect=starmap_next` counts them alone: the payload JSON and the
derivation `Store.write` makes included, the fsync's wait not.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WARM = 400
BATCH = 4


class _Counting:
    """A connection that counts the statements executed through it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.count = 0

    def execute(self, sql: str, *args: Any) -> Any:
        self.count += 1
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        self.count += len(rows)
        return self.conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def child(root: Path, emails: int, mode: str, batch: int = BATCH) -> None:
    """Run with `root` first on sys.path: write the emails, print statements per email (or just write them)."""
    sys.path.insert(0, str(HERE))
    from store_frames import _work

    work = _work(root, emails)
    from mailhook.store.write import Store

    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "calls.db")
        for start in range(0, WARM, BATCH):
            store.write(work[start:start + BATCH])
        measured = work[WARM:]

        def write_all() -> None:
            for start in range(0, emails, batch):
                store.write(measured[start:start + batch])

        if mode == "count":
            counting = _Counting(store.conn)
            store.conn = counting  # type: ignore[assignment]
            write_all()
            print(counting.count / emails)
        else:
            next(itertools.starmap(write_all, [()]))
        store.close()


def run(root: Path, emails: int, callgrind: bool, batch: int = BATCH) -> float:
    """Measure `root` in a fresh child process: statements, or instructions, per email."""
    code = (f"import sys, pathlib; sys.path.insert(0, {str(HERE)!r}); import store_calls; "
            f"store_calls.child(pathlib.Path({str(root)!r}), {emails}, {'cg' if callgrind else 'count'!r}, {batch})")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONHASHSEED": "0"}
    if not callgrind:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as folder:
        out_file = Path(folder) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=starmap_next",
                        f"--callgrind-out-file={out_file}", sys.executable, "-c", code],
                       capture_output=True, env=env, check=True)
        for line in out_file.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1]) / emails
    raise RuntimeError("callgrind wrote no totals")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=400)
    parser.add_argument("--batch", type=int, default=BATCH, help="deliveries per Store.write (one commit)")
    parser.add_argument("--root", type=Path, action="append", default=[], help="another checkout to measure")
    parser.add_argument("--callgrind", action="store_true", help="instructions per email (slow: ~2 min a tree)")
    args = parser.parse_args()
    unit = "instructions" if args.callgrind else "statements executed"
    print(f"Store.write, {args.emails:,} distinct emails in batches of {args.batch}, after {WARM}: {unit} per email")
    for root in [ROOT, *(r.resolve() for r in args.root)]:
        value = run(root, args.emails, args.callgrind, args.batch)
        print(f"{root!s:40} {value / 1000:10,.1f} k" if args.callgrind else f"{root!s:40} {value:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
