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
- log line: `submitter.log_delivery` (formatted and written to a file, as to stderr);
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
the door and the store commit need the server). `--steps extract` limits
`--stages` and `--callgrind` to parse and extract (the steps of
mailhook.extract), which makes a callgrind run several times shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, free_port
from distinct import http_file, smtp_file
from profile_steps import callgrind, stages, stages_child

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


def _patch_where(clock: Clock, modules: tuple[str, ...], name: str, step: str) -> bool:
    """Wrap `name` in each of `modules` (those a tree has) that imported it; say whether any did."""
    import importlib

    patched = []
    for module in modules:
        try:
            patched.append(_patch(clock, importlib.import_module(module), name, step))
        except ImportError:  # a tree from before or after the store's modules moved
            continue
    return any(patched)


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
    import mailhook.store.write
    from mailhook import logs
    from mailhook.config.load import load
    try:
        from mailhook.config.settings import ServerSettings
    except ImportError:  # a tree from before `serve --workers`
        ServerSettings = object
    from mailhook.server import Runtime, serve

    clock = Clock()
    found = {
        "parse": _patch(clock, mailhook.extract, "parse_mail", "parse"),
        # Where the pipeline calls them: `pipeline` until house12, then `submitter`.
        "extract": _patch_where(clock, ("mailhook.pipeline", "mailhook.submitter"), "extract", "extract"),
        # Where the store calls them: `store.write` until store8, then `store.event_rows` and `store.deliveries`.
        "derive": _patch_where(clock, ("mailhook.store.write", "mailhook.store.event_rows"), "e164", "derive")
        & _patch_where(clock, ("mailhook.store.write", "mailhook.store.deliveries"), "sent_at", "derive"),
        "payload JSON": _patch(clock, mailhook.store.write, "rows", "payload JSON"),
        "log line": _patch_where(clock, ("mailhook.pipeline", "mailhook.submitter"), "log_delivery", "log line"),
    }
    smtp_port, http_port = free_port(), free_port()
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(args.workdir / "mailhook.db"),
           "MAILHOOK_SMTP_LISTEN": f"127.0.0.1:{smtp_port}", "MAILHOOK_HTTP_LISTEN": f"127.0.0.1:{http_port}"}
    if hasattr(ServerSettings, "workers"):
        # One process: the steps are timed in this process's threads, and the
        # default (one worker per core) would move the doors out of sight.
        env["MAILHOOK_WORKERS"] = "1"
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
    parser.add_argument("--steps", choices=("all", "extract"), default="all",
                        help="with --stages or --callgrind: every isolated step, or parse and extract alone")
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
            print(callgrind(args, trees, work, __file__))
            return 0
        if args.stages:
            print(stages(args, trees, work, __file__))
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
