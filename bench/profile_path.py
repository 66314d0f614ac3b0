"""Where the CPU goes per message: the default path's steps, SMTP and HTTP, this tree against an older one.

    python bench/profile_path.py [--before REV] [--messages 3000] [--rounds 3] [--sessions 8]

Each turn starts a fresh process that runs `mailhook.server.serve` (SMTP and
HTTP doors, the group-commit writer on a new database, the log line written
as `serve` writes it, metrics) and drives it with bench/load.py: distinct
notifications (bench/distinct.py), first an untimed warm-up, then
`--messages` SMTP messages over `--sessions` persistent sessions, then as many
HTTP requests over as many keep-alive connections. The steps are timed in that
process with `time.thread_time_ns` around the functions that make them:

- parse: `mailhook.extract.mail.parse_mail` (mail-parser and `email`);
- extract: the rest of `extract()` (documents, text, values);
- derive: `derived.e164` and `derived.sent_at`, as the store calls them;
- payload JSON: `store.rows.rows` as the store calls it (each event's and attempt's row, its JSON);
- log line: `pipeline.log_delivery` (formatted and written to a file, as to stderr);
- metrics: the pipeline's listeners (Prometheus counters, status counters) and the writer's commit observer;
- door: the rest of the event-loop thread (the protocol, asyncio, the pipeline's glue);
- store commit: the rest of the other threads (the writer: SQL, indexes, FTS, fsync).

A wrapper costs ~0.5 µs per call; the total is the process's own CPU, measured
apart. With `--before REV` the same turns run on `git archive REV` too, the two
trees alternating within each round on the same emails; figures are medians of
the rounds, in µs of CPU per message.

`--stages` times parse, extract, derive, payload JSON, log line and metrics
in one process instead, each over a list of new messages with
`time.process_time` (less noisy on a shared machine than a server under load;
the door and the store commit need the server).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import ROOT, free_port
from distinct import http_file, smtp_file

LOAD = ROOT / "bench" / "load.py"
STEPS = ("door", "parse", "extract", "derive", "payload JSON", "log line", "metrics", "store commit")


class Clock:
    """CPU nanoseconds per step, kept apart for the event-loop thread and the others."""

    def __init__(self) -> None:
        self.main = threading.main_thread().ident
        self.ns: dict[tuple[str, bool], int] = defaultdict(int)
        self.depth = threading.local()

    def wrap(self, step: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """Return `func` timed as `step` (an inner timed call's time is not counted twice)."""
        ns = self.ns
        main = self.main
        depth = self.depth
        clock = time.thread_time_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = getattr(depth, "step", None)
            depth.step = step
            started = clock()
            try:
                return func(*args, **kwargs)
            finally:
                spent = clock() - started
                depth.step = outer
                on_main = threading.get_ident() == main
                ns[(step, on_main)] += spent
                if outer is not None:
                    ns[(outer, on_main)] -= spent

        timed.__wrapped__ = func  # type: ignore[attr-defined]
        return timed

    def reset(self) -> None:
        self.ns.clear()


def _patch(clock: Clock, module: Any, name: str, step: str) -> bool:
    func = getattr(module, name, None)
    if func is None:
        return False
    setattr(module, name, clock.wrap(step, func))
    return True


def thread_cpu_ns() -> tuple[int, int]:
    """Return (CPU ns of this process's main thread, CPU ns of all its other threads), from /proc."""
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    main = others = 0
    pid = os.getpid()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) * tick
        if int(task) == pid:
            main += used
        else:
            others += used
    return main, others


async def _load(kind: str, port: int, payloads: Path, sessions: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(LOAD), kind, str(port), str(payloads), "--sessions", str(sessions),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"load client failed: {err.decode()[-2000:]}") from None
    if result["errors"] or result["refused"]:
        raise RuntimeError(f"{kind}: {result['refused']} refused ({result['first_refusal']}), {result['errors'][:2]}")
    return int(result["messages"])


def child(args: argparse.Namespace) -> int:
    """Serve, drive and time one turn in this process; print the steps as JSON."""
    sys.path.insert(0, str(args.tree))
    import mailhook
    import mailhook.extract
    import mailhook.pipeline
    import mailhook.store.write
    from mailhook import logs
    from mailhook.config.load import load
    from mailhook.server import Runtime, serve

    clock = Clock()
    found = {
        "parse": _patch(clock, mailhook.extract, "parse_mail", "parse"),
        "extract": _patch(clock, mailhook.pipeline, "extract", "extract"),
        "derive": _patch(clock, mailhook.store.write, "e164", "derive")
        & _patch(clock, mailhook.store.write, "sent_at", "derive"),
        "payload JSON": _patch(clock, mailhook.store.write, "rows", "payload JSON"),
        "log line": _patch(clock, mailhook.pipeline, "log_delivery", "log line"),
    }
    smtp_port, http_port = free_port(), free_port()
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(args.workdir / "mailhook.db"),
           "MAILHOOK_SMTP_LISTEN": f"127.0.0.1:{smtp_port}", "MAILHOOK_HTTP_LISTEN": f"127.0.0.1:{http_port}"}
    settings = load({}, env)
    logs.setup(settings.log.level, settings.log.format)
    results: dict[str, Any] = {"wrapped": [k for k, v in found.items() if v], "from": mailhook.__file__}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[Runtime] = loop.create_future()
        server = asyncio.create_task(serve(settings, env, started=started))
        runtime = await started
        pipeline = runtime.pipeline
        pipeline.listeners[:] = [clock.wrap("metrics", listener) for listener in pipeline.listeners]
        writer = runtime.writer
        if getattr(writer, "observer", None) is not None:
            writer.observer = clock.wrap("metrics", writer.observer)
        results["wrapped"].append("metrics")
        try:
            for kind, port, warmup, payloads in (("smtp", smtp_port, args.smtp_warmup, args.smtp),
                                                 ("http", http_port, args.http_warmup, args.http)):
                await _load(kind, port, warmup, args.sessions)
                await asyncio.sleep(0.2)  # the last commit's callbacks
                clock.reset()
                profiler = cProfile.Profile(time.thread_time_ns, 1e-9) if args.cprofile else None
                if profiler is not None:
                    profiler.enable()
                main0, others0 = thread_cpu_ns()
                process0 = time.process_time_ns()
                messages = await _load(kind, port, payloads, args.sessions)
                await asyncio.sleep(0.2)
                main1, others1 = thread_cpu_ns()
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(str(args.cprofile / f"{kind}.pstats"))
                process = time.process_time_ns() - process0
                ns = dict(clock.ns)
                on_main = sum(v for (_, m), v in ns.items() if m)
                off_main = sum(v for (_, m), v in ns.items() if not m)
                steps = {step: sum(v for (s, _), v in ns.items() if s == step) for step in STEPS}
                steps["door"] = (main1 - main0) - on_main
                steps["store commit"] = (others1 - others0) - off_main
                results[kind] = {
                    "messages": messages,
                    "us": {step: value / messages / 1000 for step, value in steps.items()},
                    "total": process / messages / 1000,
                }
        finally:
            runtime.stopping.set()
            await server

    asyncio.run(main())
    print(json.dumps(results))
    return 0


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


def callgrind(args: argparse.Namespace, trees: dict[str, Path], work: Path) -> str:
    """Count each isolated step's instructions per message under callgrind (deterministic); return the table."""
    counts: dict[str, dict[str, dict[str, float]]] = {name: {} for name in trees}
    for name, tree in trees.items():
        for kind in ("smtp", "http"):
            out = work / f"callgrind.{name}.{kind}"
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                 "--stages-child", "--tree", str(tree), "--workdir", str(work), "--messages", str(args.messages),
                 "--passes", "1", "--seed", str(args.seed), "--kinds", kind],
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
    for step in (*ISOLATED, None):
        cells = []
        for kind in ("smtp", "http"):
            for name in names:
                value = counts[name][kind].get(step, 0.0) if step else sum(counts[name][kind].values())
                cells.append(f"{value / 1000:,.0f} k")
        lines.append(f"| {step or '**these steps**'} | " + " | ".join(cells) + " |")
    return (f"Instructions per message (valgrind --tool=callgrind), {args.messages:,} new messages after as many "
            "for warm-up\n" + "\n".join(lines))


def stages_child(args: argparse.Namespace) -> int:
    """Time the steps that need no server, in this process, on `--messages` new emails and documents; print JSON."""
    sys.path.insert(0, str(args.tree))
    import logging

    from distinct import Emails
    from notifications import Documents

    import mailhook.derived as derived
    from mailhook import logs
    from mailhook.extract import extract
    from mailhook.extract.mail import parse_mail
    from mailhook.metrics import Metrics
    from mailhook.models import Delivery, Receipt
    from mailhook.pipeline import log_delivery
    from mailhook.server import Counters
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
            raws = emails
            deliveries = [Delivery("smtp", raw, "x", envelope_from="bounce@callfire.com",
                                   envelope_to=("ops@example.com",), remote_addr="127.0.0.1") for raw in raws]
        else:
            us["parse"] = 0.0
            found = timed("extract", us, count,
                          lambda: [extract(body, "document", content_type=ctype) for body, ctype in docs])
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


def stages(args: argparse.Namespace, trees: dict[str, Path], work: Path) -> str:
    """Run the isolated steps for every tree, alternating, `--rounds` times; return the table of medians."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {"smtp": [], "http": []} for name in trees}
    for n in range(args.rounds):
        order = list(trees.items()) if n % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            done = subprocess.run(
                [sys.executable, __file__, "--stages-child", "--tree", str(tree), "--workdir", str(work),
                 "--messages", str(args.messages), "--passes", str(args.passes), "--seed", str(args.seed + 100 * n)],
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
            return statistics.median(sum(p[s] for s in ISOLATED) for p in passes)
        return statistics.median(p[step] for p in passes)

    for step in (*ISOLATED, None):
        label = step or "**these steps**"
        lines.append(f"| {label} | " + " | ".join(f"{cell(n, k, step):,.1f}" for k in ("smtp", "http")
                                                   for n in names) + " |")
    return (f"CPU µs per message in one process, median of {args.rounds} x {args.passes} passes of "
            f"{args.messages:,} new messages each\n" + "\n".join(lines))


def turn(tree: Path, files: dict[str, Path], sessions: int, cprofile: Path | None = None) -> dict[str, Any]:
    """Run one child turn on `tree`; return its JSON."""
    with tempfile.TemporaryDirectory(prefix="mailhook-profile-") as work:
        log = Path(work) / "mailhook.log"
        with log.open("wb") as err:
            done = subprocess.run(
                [sys.executable, __file__, "--child", "--tree", str(tree), "--workdir", work,
                 "--sessions", str(sessions), *(x for k, v in files.items() for x in (f"--{k}", str(v))),
                 *(["--cprofile", str(cprofile)] if cprofile else [])],
                stdout=subprocess.PIPE, stderr=err, cwd=tree, timeout=1800,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")},
                     "PYTHONPATH": str(tree)},
            )
        if done.returncode:
            raise RuntimeError(f"turn on {tree} failed: {log.read_text()[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return result


def export(rev: str, into: Path) -> Path:
    """Write `git archive REV` of this repository into `into`; return it."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def render(results: dict[str, list[dict[str, Any]]]) -> str:
    """Return the per-step table (medians of the rounds) as Markdown."""
    names = list(results)
    kinds = ("smtp", "http")
    head = "| step | " + " | ".join(f"{k.upper()} {n}" for k in kinds for n in names) + " |"
    lines = [head, "|---|" + "---:|" * (len(kinds) * len(names))]

    def cell(kind: str, name: str, step: str | None) -> float:
        turns = results[name]
        if step is None:
            return statistics.median(t[kind]["total"] for t in turns)
        return statistics.median(t[kind]["us"][step] for t in turns)

    for step in (*STEPS, None):
        label = step or "**total (process CPU)**"
        lines.append(f"| {label} | " + " | ".join(f"{cell(k, n, step):,.0f}" for k in kinds for n in names) + " |")
    lines.append("| sum of the steps | " + " | ".join(
        f"{sum(cell(k, n, s) for s in STEPS):,.0f}" for k in kinds for n in names) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git revision to measure beside this tree (e.g. main)")
    parser.add_argument("--messages", type=int, default=3000, help="timed messages per door and turn")
    parser.add_argument("--warmup", type=int, default=500, help="untimed messages per door first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--cprofile", type=Path,
                        help="profile the event-loop thread of one turn (no --before) into DIR/{smtp,http}.pstats")
    parser.add_argument("--stages", action="store_true",
                        help="time the steps that need no server in one process (less noisy; no door, no store)")
    parser.add_argument("--passes", type=int, default=3, help="with --stages: timed passes per round")
    parser.add_argument("--callgrind", action="store_true",
                        help="count the --stages steps' instructions under valgrind instead (deterministic, slow)")
    parser.add_argument("--kinds", default="smtp,http", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stages-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    for name in ("smtp", "http", "smtp-warmup", "http-warmup"):
        parser.add_argument(f"--{name}", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.stages_child:
        return stages_child(args)
    with tempfile.TemporaryDirectory(prefix="mailhook-profile-") as tmp:
        work = Path(tmp)
        trees = {"after": ROOT}
        if args.before:
            (work / "before").mkdir()
            trees = {"before": export(args.before, work / "before"), "after": ROOT}
        if args.callgrind:
            print(callgrind(args, trees, work))
            return 0
        if args.stages:
            print(stages(args, trees, work))
            return 0
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for n in range(args.rounds):
            seed = args.seed + 10 * n
            files = {"smtp": work / "smtp.bin", "http": work / "http.bin",
                     "smtp-warmup": work / "smtp-warm.bin", "http-warmup": work / "http-warm.bin"}
            smtp_file(files["smtp"], args.messages, seed)
            http_file(files["http"], args.messages, seed + 1)
            smtp_file(files["smtp-warmup"], args.warmup, seed + 2)
            http_file(files["http-warmup"], args.warmup, seed + 3)
            order = list(trees.items()) if n % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                result = turn(tree, files, args.sessions, args.cprofile)
                results[name].append(result)
                print(f"round {n + 1} {name}: SMTP {result['smtp']['total']:.0f} µs/msg, "
                      f"HTTP {result['http']['total']:.0f} µs/req (wrapped: {', '.join(result['wrapped'])})",
                      file=sys.stderr, flush=True)
        print(f"CPU µs per message, median of {args.rounds} rounds, {args.messages:,} distinct messages per door "
              f"and turn, {args.sessions} sessions/connections")
        print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
