"""The store's write path alone: CPU per event through `Store.write`, for one or more checkouts, interleaved.

    python bench/store_write.py [--events 20000] [--batch 64] [--repeats 5] [--root OLD_CHECKOUT ...]
    python bench/store_write.py --profile [--events 20000]

Events come from bench/analyst_data.py (a synthetic account: calls with
attempts and transfers, texts both ways with replies, campaign events), one
delivery each, generated before the clock starts. Each run writes them into a
fresh database in batches of `--batch` (the writer's group commit) and
counts the CPU time (`time.process_time`) spent inside `Store.write` only.

Every `--root` (a checkout of mailhook, e.g. `git worktree add /tmp/base main`)
is measured beside this one, in a child process per run, taking turns round
after round; the table gives medians and each root's per-round ratio to the
first. `--profile` instead writes the same events with one index or trigger
dropped at a time (this checkout), to show what each one costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import child_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(root: Path, events: int, batch: int, drop: str | None) -> dict[str, float]:
    """Run in a child process with `root` first on sys.path: write `events` events, return CPU and wall time."""
    import time

    sys.path.insert(0, str(root / "bench"))
    import analyst_data  # inserts `root` itself first on sys.path

    from mailhook.models import Delivery, Extraction
    from mailhook.store.write import Store

    assert Path(analyst_data.__file__).resolve().parent == (root / "bench").resolve(), analyst_data.__file__
    work = [(Delivery(channel="file", raw=f"bench event {n}".encode(), received_at="", kind="document",
                      source=f"bench#{n}"), Extraction(events=(item,)))
            for n, item in enumerate(analyst_data.events(events))]
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.db")
        if drop:
            kind = store.conn.execute("SELECT type FROM sqlite_master WHERE name = ?", (drop,)).fetchone()[0]
            store.conn.execute(f'DROP {kind.upper()} "{drop}"')
        cpu = wall = 0.0
        for start in range(0, len(work), batch):
            part = work[start:start + batch]
            c0, w0 = time.process_time(), time.perf_counter()
            store.write(part)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
        count = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        store.conn.close()
    return {"cpu_ms": cpu / count * 1000, "wall_ms": wall / count * 1000, "events": count}


def run(root: Path, events: int, batch: int, drop: str | None = None) -> dict[str, float]:
    """Measure one run of `root` in a fresh child process."""
    measured = child_json("store_write", f"child(pathlib.Path({str(root)!r}), {events}, {batch}, {drop!r})")
    assert isinstance(measured, dict)
    return measured


def compare(roots: list[Path], events: int, batch: int, repeats: int) -> None:
    results: dict[Path, list[dict[str, float]]] = {root: [] for root in roots}
    for round_ in range(repeats):
        for root in roots:
            result = run(root, events, batch)
            results[root].append(result)
            print(f"  round {round_ + 1} {root}: {result['cpu_ms']:.3f} ms CPU per event", file=sys.stderr,
                  flush=True)
    print(f"Store.write, {events:,} events one per delivery, batches of {batch}, median of {repeats} rounds")
    first = results[roots[0]]
    for root in roots:
        cpu = statistics.median(r["cpu_ms"] for r in results[root])
        wall = statistics.median(r["wall_ms"] for r in results[root])
        ratios = [r["cpu_ms"] / f["cpu_ms"] for r, f in zip(results[root], first, strict=True)]
        print(f"{root!s:40} {cpu:.3f} ms CPU/event  {wall:.3f} ms wall/event  "
              f"x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) of the first")


def profile(events: int, batch: int, repeats: int) -> None:
    """Write the events with each index and trigger dropped in turn; print what each costs."""
    sys.path.insert(0, str(ROOT))
    from mailhook.store.write import Store

    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "names.db")
        names = [row[0] for row in store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL"
            " AND tbl_name IN ('events', 'attempts', 'deliveries') ORDER BY type, name")]
        store.conn.close()
    variants: list[str | None] = [None, *names]
    cpu: dict[str | None, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name in variants:
            cpu[name].append(run(ROOT, events, batch, name)["cpu_ms"])
    full = statistics.median(cpu[None])
    print(f"Store.write, {events:,} events, batches of {batch}: {full:.3f} ms CPU per event with everything")
    for name in names:
        without = statistics.median(cpu[name])
        print(f"  without {name:32} {without:.3f} ms  (it costs {full - without:+.3f} ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, action="append", default=[], help="another checkout to measure")
    parser.add_argument("--profile", action="store_true", help="the cost of each index and trigger")
    args = parser.parse_args()
    if args.profile:
        profile(args.events, args.batch, args.repeats)
    else:
        compare([ROOT, *(root.resolve() for root in args.root)], args.events, args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
