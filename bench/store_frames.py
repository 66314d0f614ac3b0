"""The store's write path in pages: WAL frames per commit, and pages a checkpoint copies, per message.

    python bench/store_frames.py [--emails 2000] [--batch 4] [--root OLD_CHECKOUT ...] [--drop NAME ...]
    python bench/store_frames.py --checkpoints 1000,4000,16000

Deterministic (no clocks): distinct bench emails (bench/distinct.py, seed 11) are
extracted before counting and written through `Store.write` in batches of
`--batch` (the writer's average commit is about 4 deliveries), after 400 to warm
the indexes up, with automatic checkpoints off; the WAL then holds every frame
the commits wrote. Each is a 4 KiB page SQLite writes (and fsyncs) on commit and
copies again into the database at the next checkpoint. `--drop` drops indexes
or triggers first, to show what each costs; every `--root` (another checkout,
e.g. `git worktree add /tmp/base main`) is measured the same way beside this one.
`--checkpoints` instead counts, for each automatic checkpoint interval (pages),
the pages checkpoints copy per message while the same emails are written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import child_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WARM = 400


def _work(root: Path, emails: int) -> list[Any]:
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(HERE))
    from distinct import Emails

    from mailhook.extract import extract
    from mailhook.models import Delivery

    source = iter(Emails(11))
    work = []
    for _ in range(WARM + emails):
        raw = next(source).replace(b"\n", b"\r\n")
        delivery = Delivery(channel="smtp", raw=raw, received_at="", kind="email", envelope_from="a@b.c",
                            envelope_to=("x@y.z",), remote_addr="127.0.0.1")
        work.append((delivery, extract(raw, "email")))
    return work


def child(root: Path, emails: int, batch: int, drop: list[str], autocheckpoint: int) -> dict[str, float]:
    """Run with `root` first on sys.path: write the emails, return WAL frames per commit (and checkpoint copies)."""
    work = _work(root, emails)
    from mailhook.store.write import Store

    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "frames.db")
        conn = store.conn
        for name in drop:
            kind = conn.execute("SELECT type FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
            conn.execute(f'DROP {kind.upper()} "{name}"')
        for start in range(0, WARM, batch):
            store.write(work[start:start + batch])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        (path,) = conn.execute("SELECT file FROM pragma_database_list WHERE name = 'main'").fetchone()
        commits = copied = 0
        for start in range(WARM, WARM + emails, batch):
            store.write(work[start:start + batch])
            commits += 1
            # What SQLite's automatic checkpoint does after a commit, counting the pages it copies.
            if autocheckpoint and _wal_pages(path + "-wal")[0] >= autocheckpoint:
                copied += _wal_pages(path + "-wal")[1]
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        frames, pages = _wal_pages(path + "-wal")
        result = {"frames_per_commit": frames / commits, "commits": commits}
        if autocheckpoint:
            result["copied_per_message"] = (copied + pages) / emails
        conn.close()
    return result


def _wal_pages(wal: str) -> tuple[int, int]:
    """Return the frames of the WAL's current generation and how many distinct pages they hold."""
    data = Path(wal).read_bytes()
    if len(data) < 32:
        return 0, 0
    page_size = int.from_bytes(data[8:12], "big")
    salt = data[16:24]
    frames = 0
    pages = set()
    # A checkpoint restarts the WAL from its start with new salts; frames of older generations follow.
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        if data[offset + 8:offset + 16] != salt:
            break
        frames += 1
        pages.add(data[offset:offset + 4])
    return frames, len(pages)


def run(root: Path, emails: int, batch: int, drop: list[str], autocheckpoint: int = 0) -> dict[str, float]:
    """Measure `root` in a fresh child process."""
    measured = child_json("store_frames", f"child(pathlib.Path({str(root)!r}), {emails}, {batch}, {drop!r}, "
                                          f"{autocheckpoint})")
    assert isinstance(measured, dict)
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--root", type=Path, action="append", default=[], help="another checkout to measure")
    parser.add_argument("--drop", action="append", default=[], help="an index or trigger to drop first")
    parser.add_argument("--checkpoints", help="automatic checkpoint intervals (pages) to compare, e.g. 1000,4000")
    args = parser.parse_args()
    print(f"Store.write, {args.emails:,} distinct emails in batches of {args.batch}")
    if args.checkpoints:
        for pages in (int(p) for p in args.checkpoints.split(",")):
            result = run(ROOT, args.emails, args.batch, args.drop, pages)
            print(f"wal_autocheckpoint={pages:<6} {result['copied_per_message']:6.1f} pages copied per message")
        return 0
    for root in [ROOT, *(r.resolve() for r in args.root)]:
        result = run(root, args.emails, args.batch, args.drop)
        print(f"{root!s:40} {result['frames_per_commit']:6.1f} WAL frames per commit "
              f"({result['frames_per_commit'] / args.batch:.1f} per message)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
