"""The steps of the default path that need no server, timed in one process or counted under valgrind.

Used by bench/profile_path.py (`--stages`, `--callgrind`), which runs this
module's `stages_child` as its child process; see that script's docstring.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ISOLATED = ("parse", "extract", "derive", "payload JSON", "log line", "metrics")


def _in_starmap(work: Callable[[], Any]) -> Any:
    return next(itertools.starmap(work, [()]))


def _in_takewhile(work: Callable[[], Any]) -> Any:
    out: list[Any] = []
    for _ in itertools.takewhile(lambda _: out.append(work()) or False, (0,)):
        pass
    return out[0]


def _in_dropwhile(work: Callable[[], Any]) -> Any:
    out: list[Any] = []
    for _ in itertools.dropwhile(lambda _: out.append(work()) or True, (0,)):
        pass
    return out[0]


def _in_filterfalse(work: Callable[[], Any]) -> Any:
    out: list[Any] = []
    for _ in itertools.filterfalse(lambda _: out.append(work()) or True, (0,)):
        pass
    return out[0]


def _in_groupby(work: Callable[[], Any]) -> Any:
    out: list[Any] = []
    for _ in itertools.groupby((0,), key=lambda _: out.append(work())):
        pass
    return out[0]


def _in_pairwise(work: Callable[[], Any]) -> Any:
    out: list[Any] = []

    def items() -> Iterator[int]:
        yield 0
        out.append(work())
        yield 1

    for _ in itertools.pairwise(items()):
        pass
    return out[0]


# Each step runs inside its own C function of itertools, which nothing on the measured path uses, so
# that `valgrind --tool=callgrind` gives the step's instructions as that function's inclusive cost.
MARKERS: dict[str, Callable[[Callable[[], Any]], Any]] = {
    "parse": _in_starmap, "extract": _in_takewhile, "derive": _in_dropwhile, "payload JSON": _in_filterfalse,
    "log line": _in_groupby, "metrics": _in_pairwise,
}
MARKER_FUNCTIONS = {"parse": "starmap_next", "extract": "takewhile_next", "derive": "dropwhile_next",
                    "payload JSON": "filterfalse_next", "log line": "groupby_next", "metrics": "pairwise_next"}


def callgrind(args: argparse.Namespace, trees: dict[str, Path], work: Path, script: str) -> str:
    """Count each isolated step's instructions per message under callgrind (deterministic); return the table."""
    counts: dict[str, dict[str, dict[str, float]]] = {name: {} for name in trees}
    for name, tree in trees.items():
        for kind in ("smtp", "http"):
            out = work / f"callgrind.{name}.{kind}"
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script,
                 "--stages-child", "--tree", str(tree), "--workdir", str(work), "--messages", str(args.messages),
                 "--passes", "1", "--seed", str(args.seed), "--kinds", kind, "--steps", args.steps],
                capture_output=True, cwd=tree, timeout=3600,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")},
                     "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
            )
            if done.returncode:
                raise RuntimeError(f"callgrind on {tree} failed: {done.stderr.decode()[-3000:]}")
            annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                                       capture_output=True, text=True, check=True).stdout
            found: dict[str, float] = {}
            for step, function in MARKER_FUNCTIONS.items():
                for line in annotated.splitlines():
                    if line.rstrip().endswith("]") and f":{function} [" in line:
                        found[step] = int(line.split()[0].replace(",", "")) / args.messages
                        break
                else:
                    found[step] = 0.0
            if kind == "smtp":
                found["extract"] -= found["parse"]  # extract() parses the email again
            counts[name][kind] = found
            print(f"callgrind {name} {kind} done", file=sys.stderr, flush=True)
    names = list(trees)
    lines = ["| step (instructions per message) | " + " | ".join(f"{k.upper()} {n}" for k in ("smtp", "http")
                                                              for n in names) + " |",
             "|---|" + "---:|" * (2 * len(names))]
    for step in (*_steps(args), None):
        cells = []
        for kind in ("smtp", "http"):
            for name in names:
                value = counts[name][kind].get(step, 0.0) if step else sum(counts[name][kind].values())
                cells.append(f"{value / 1000:,.0f} k")
        lines.append(f"| {step or '**these steps**'} | " + " | ".join(cells) + " |")
    return (f"Instructions per message (valgrind --tool=callgrind), {args.messages:,} new messages after as many "
            "for warm-up\n" + "\n".join(lines))


def _steps(args: argparse.Namespace) -> tuple[str, ...]:
    """Return the steps `--steps` asks for: all the isolated ones, or parse and extract alone."""
    return ISOLATED if args.steps == "all" else ("parse", "extract")


def stages_child(args: argparse.Namespace) -> int:
    """Time the steps that need no server, in this process, on `--messages` new emails and documents; print JSON."""
    sys.path.insert(0, str(args.tree))
    import logging

    from distinct import Emails
    from notifications import Documents

    import mailhook.derived as derived
    from mailhook import logs
    from mailhook.delivery_log import log_delivery
    from mailhook.extract import extract
    from mailhook.extract.mail import parse_mail
    from mailhook.metrics import Metrics
    from mailhook.models import Delivery, Receipt
    from mailhook.status_line import Counters
    from mailhook.store.rows import rows
    from mailhook.store.schema import EVENT_COLUMNS

    number_columns = (EVENT_COLUMNS.index("from_number"), EVENT_COLUMNS.index("to_number"))
    log_file = (args.workdir / "log.txt").open("w")
    sys.stderr = log_file  # the log line is written to a file, as `serve` writes it to stderr
    logs.setup("info", "text")
    metrics, counters = Metrics(), Counters()
    clock = time.process_time_ns

    marked = [False]

    def timed(step: str, out: dict[str, float], count: int, work: Callable[[], Any]) -> Any:
        started = clock()
        result = MARKERS[step](work) if marked[0] else work()
        out[step] = out.get(step, 0.0) + (clock() - started) / count / 1000
        return result

    def one_pass(kind: str, emails: list[bytes], docs: list[tuple[bytes, str]]) -> dict[str, float]:
        us: dict[str, float] = {}
        count = len(emails)
        if kind == "smtp":
            timed("parse", us, count, lambda: [parse_mail(raw) for raw in emails])
            found = timed("extract", us, count, lambda: [extract(raw, "email") for raw in emails])
            us["extract"] -= us["parse"]
            if args.steps == "extract":
                return us
            raws = emails
            deliveries = [Delivery("smtp", raw, "x", envelope_from="bounce@callfire.com",
                                   envelope_to=("ops@example.com",), remote_addr="127.0.0.1") for raw in raws]
        else:
            us["parse"] = 0.0
            found = timed("extract", us, count,
                          lambda: [extract(body, "document", content_type=ctype) for body, ctype in docs])
            if args.steps == "extract":
                return us
            raws = [body for body, _ in docs]
            deliveries = [Delivery("http", body, "x", kind="document", remote_addr="127.0.0.1", content_type=ctype)
                          for body, ctype in docs]
        made = timed("payload JSON", us, count,
                     lambda: [rows(x, len(raw)) for x, raw in zip(found, raws, strict=True)])
        derived.e164.cache_clear()

        def derive() -> None:
            for delivery, row in zip(deliveries, made, strict=True):
                if delivery.kind == "email":
                    derived.sent_at(delivery.raw)
                for _, values, _ in row.events:
                    for column in number_columns:
                        derived.e164(values[column], "US")

        timed("derive", us, count, derive)
        pairs = [(d, Receipt(i, "stored", len(r.events), 0, None, r.message_id, tuple(e[0] for e in r.events)))
                 for i, (d, r) in enumerate(zip(deliveries, made, strict=True), 1)]
        timed("log line", us, count, lambda: [log_delivery(d, r, 0.0123, level=logging.INFO) for d, r in pairs])
        timed("metrics", us, count, lambda: [(metrics.on_delivery(d, r, 0.0123), counters.on_delivery(d, r, 0.0123))
                                              for d, r in pairs])
        return us

    results: dict[str, list[dict[str, float]]] = {"smtp": [], "http": []}
    emails_made, docs_made = Emails(args.seed), Documents(args.seed + 1)
    for n in range(args.passes + 1):  # the first is a warm-up; every pass new messages, as a server sees them
        emails = [emails_made.message() for _ in range(args.messages)]
        notes = [docs_made.next() for _ in range(args.messages)]
        docs = [(note.body.encode(), "text/xml; charset=UTF-8" if note.format == "xml"
                 else "application/json; charset=UTF-8") for note in notes]
        marked[0] = n > 0
        for kind in args.kinds.split(","):
            us = one_pass(kind, emails, docs)
            if n:
                results[kind].append(us)
    log_file.close()
    print(json.dumps(results), file=sys.__stdout__)
    return 0


def stages(args: argparse.Namespace, trees: dict[str, Path], work: Path, script: str) -> str:
    """Run the isolated steps for every tree, alternating, `--rounds` times; return the table of medians."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {"smtp": [], "http": []} for name in trees}
    for n in range(args.rounds):
        order = list(trees.items()) if n % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            done = subprocess.run(
                [sys.executable, script, "--stages-child", "--tree", str(tree), "--workdir", str(work),
                 "--messages", str(args.messages), "--passes", str(args.passes), "--seed", str(args.seed + 100 * n),
                 "--steps", args.steps],
                capture_output=True, cwd=tree, timeout=1800,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}, "PYTHONPATH": str(tree)},
            )
            if done.returncode:
                raise RuntimeError(f"stages on {tree} failed: {done.stderr.decode()[-3000:]}")
            got = json.loads(done.stdout.decode().strip().splitlines()[-1])
            for kind in ("smtp", "http"):
                results[name][kind] += got[kind]
            print(f"stages round {n + 1} {name} done", file=sys.stderr, flush=True)
    names = list(trees)
    head = "| step (in isolation) | " + " | ".join(f"{k.upper()} {n}" for k in ("smtp", "http") for n in names) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(names))]

    def cell(name: str, kind: str, step: str | None) -> float:
        passes = results[name][kind]
        if step is None:
            return statistics.median(sum(p[s] for s in _steps(args)) for p in passes)
        return statistics.median(p[step] for p in passes)

    for step in (*_steps(args), None):
        label = step or "**these steps**"
        lines.append(f"| {label} | " + " | ".join(f"{cell(n, k, step):,.1f}" for k in ("smtp", "http")
                                                   for n in names) + " |")
    return (f"CPU µs per message in one process, median of {args.rounds} x {args.passes} passes of "
            f"{args.messages:,} new messages each\n" + "\n".join(lines))
