"""Extraction: CPU time of `extract()` per email on generated notification emails and on the fixtures.

    python bench/extract.py [--count 2000] [--passes 5] [--seed 1] [--profile]

No server, no database: each email is extracted in this process and timed
with `time.process_time` (CPU, not wall clock, as the machine is shared).
One warm-up pass, then `--passes` timed passes; the median pass is reported.
Each pass of the generated corpus gets `--count` new emails from the same
generator, as a server never sees an email twice: repeating the same emails
would let `re`'s cache keep the pattern the standard library compiles for
each (unique) MIME boundary, which real traffic never does. The fixtures
are the same emails in every pass. `--profile` runs one more pass under cProfile and
prints the functions with the most own time and the most cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common import ROOT, Table, machine, median
from corpus import Generator

sys.path.insert(0, str(ROOT))

from mailhook.extract import extract

FIXTURE_EMAILS = ROOT / "fixtures" / "email"


def generated(count: int, seed: int) -> list[bytes]:
    """Return `count` generated emails (bench/corpus.py's mix of shapes)."""
    gen = Generator(seed)
    return [gen.message() for _ in range(count)]


def fixtures() -> list[bytes]:
    """Return every email fixture's raw bytes."""
    return [path.read_bytes() for path in sorted(FIXTURE_EMAILS.glob("*.eml"))]


def batches(count: int, seed: int, passes: int) -> list[list[bytes]]:
    """Return `passes` lists of `count` generated emails, no email in two lists."""
    gen = Generator(seed)
    return [[gen.message() for _ in range(count)] for _ in range(passes)]


def time_pass(emails: Sequence[bytes]) -> float:
    """Return the CPU seconds one extraction of every email in `emails` takes."""
    started = time.process_time()
    for raw in emails:
        extract(raw, "email")
    return time.process_time() - started


def per_email_us(passes: Sequence[Sequence[bytes]]) -> tuple[float, float, float]:
    """Return the median, fastest and slowest pass in µs per email, after a warm-up on the first."""
    time_pass(passes[0])
    runs = [time_pass(emails) / len(emails) * 1e6 for emails in passes[1:]]
    return median(runs), min(runs), max(runs)


def profile(emails: Sequence[bytes], top: int) -> str:
    """Return cProfile's top functions (own time, then cumulative) over one pass of `emails`."""
    profiler = cProfile.Profile()
    profiler.runcall(time_pass, emails)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def bench(count: int, passes: int, seed: int) -> Table:
    corpus = batches(count, seed, passes + 1)
    samples = fixtures()
    table = Table(f"Extraction: CPU per email, median of {passes} passes after a warm-up")
    for name, runs in ((f"generated ({count:,} new emails a pass, seed {seed})", corpus),
                       (f"fixtures ({len(samples)} emails)", [samples] * (passes + 1))):
        mid, low, high = per_email_us(runs)
        size = sum(map(len, runs[0])) / len(runs[0])
        table.add(name, f"{mid:,.0f} µs", f"passes {low:,.0f}-{high:,.0f} µs; {size:,.0f} bytes on average")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="generated emails per pass")
    parser.add_argument("--passes", type=int, default=5, help="timed passes (the median is reported)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    parser.add_argument("--top", type=int, default=30, help="functions listed by --profile")
    parser.add_argument("--workdir", type=Path, help="unused; accepted like the other scenarios")
    args = parser.parse_args()
    print(machine())
    print(bench(args.count, args.passes, args.seed).render())
    if args.profile:
        print(profile(generated(args.count, args.seed) + fixtures(), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
