"""Instructions per delivery of `serve --workers N`'s store path under callgrind, by thread, against one process's.

    python bench/group_path.py [--batch 1] [--received] [--root OTHER_CHECKOUT ...]

Deterministic: distinct bench emails (bench/distinct.py, seed 77), extracted
beforehand, go `--batch` per loop turn (each turn awaited) through
`Pipeline.ingest_soon`: in "group", a worker's pipeline over `RemoteStorage`,
the parent's `StoreService` and `Writer`, over a socketpair, all in one
process (the worker's loop thread, the parent's reader thread, its writer
thread; the loop on the worker's selector, `group.turn_end`, in a tree that
has it); in "one", the pipeline on the `Writer` itself, as one process
serves. Each path runs under `valgrind --tool=callgrind --separate-threads=yes`
with 50 and with 250 deliveries (250 made and extracted in both runs); the
difference divided by 200 is the cost per delivery, the start (imports, the
emails made and extracted beforehand) taken out.
The rows, the log line (to /dev/null) and the commit are included on both.
With `--received` the worker's (or the one process's) pipeline acknowledges
SMTP on receipt: each delivery is stored pending, its raw bytes only (nothing
extracts them later here: the backlog is left out).
With `--door` each delivery is awaited as the SMTP door's reply written at
once awaits it: its outcome a `StoreOutcome`, the reply a callback of it
(`Outcome.when_done` where the tree has it, else `add_done_callback`) that
resolves what the turn awaits, as the next command's bytes would arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FEW, MANY = 50, 250


def deliveries(count: int) -> list[object]:
    """Return `count` distinct bench emails as SMTP deliveries."""
    from distinct import smtp_file

    from mailhook.models import Delivery

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "emails.bin"
        smtp_file(path, count, seed=77)
        data, raws, at = path.read_bytes(), [], 0
    while at < len(data):
        (size,) = struct.unpack_from("!I", data, at)
        raws.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return [Delivery("smtp", raw, "2026-12-05T12:00:00.000000Z", "email", "bounce@callfire.com",
                     ("hook@example.com",), "127.0.0.1") for raw in raws[:count]]


def run(path: str, count: int, batch: int, received: bool = False, door: bool = False) -> None:
    """Send `count` deliveries through the `path` ("group" or "one"), `batch` per loop turn."""
    from mailhook.extract import extract
    from mailhook.logs import setup
    from mailhook.pipeline import Pipeline
    from mailhook.store.writer import Writer

    # As many made and extracted for either count: only what goes through the path differs between the two runs.
    made = deliveries(MANY)
    found = {id(delivery): extract(delivery.raw, "email", {}) for delivery in made}  # type: ignore[attr-defined]
    sent = made[:count]
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    setup("INFO", "text", pid=path == "group")
    gc.collect()
    gc.freeze()
    database = tempfile.TemporaryDirectory()
    writer = Writer(Path(database.name) / "path.db", checkpoint_interval=0)
    selector = None
    if path == "group":
        try:  # as a worker's loop runs, where the tree has it (a worker's writes sent as its loop turn ends)
            from mailhook.group.turn_end import TurnEndSelector
        except ImportError:
            pass
        else:
            selector = TurnEndSelector()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        service = storage = None
        if path == "group":
            from mailhook.group.channel import Channel
            from mailhook.group.remote import RemoteStorage
            from mailhook.group.service import StoreService
            from mailhook.metrics import Metrics

            worker_end, parent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            service = StoreService(Channel(parent_end), Pipeline(writer), loop, "worker-0", Metrics())
            service.start()
            turn_end = {} if selector is None else {"turn_end": selector}
            storage = RemoteStorage(Channel(worker_end), on_ping=lambda _: None, on_lost=lambda: None, loop=loop,
                                    **turn_end)
            pipeline = Pipeline(storage)
        else:
            pipeline = Pipeline(writer)
        pipeline._extracted = lambda delivery: found[id(delivery)]  # type: ignore[method-assign]
        if received:
            pipeline.deferred = frozenset({"smtp"})
        store: Any = pipeline.ingest_soon
        if door:
            from mailhook.smtp.handler import StoreOutcome

            def store(delivery: Any) -> asyncio.Future[Any]:
                outcome, replied = StoreOutcome(loop=loop), loop.create_future()
                then = getattr(outcome, "when_done", outcome.add_done_callback)
                then(lambda done: replied.set_result(done.result()))
                pipeline.ingest_soon(delivery, outcome)
                return replied

        for start in range(0, len(sent), batch):
            await asyncio.gather(*(store(d) for d in sent[start:start + batch]))
        if storage is not None and service is not None:
            storage.close()
            await asyncio.wait_for(service.ended, 10)

    if selector is None:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
            runner.run(main())
    writer.close()
    database.cleanup()


def instructions(
    root: Path, path: str, count: int, batch: int, tmp: Path, received: bool = False, door: bool = False,
) -> list[int]:
    """Return the instructions of each thread (in the order they started) of one run under callgrind."""
    out = tmp / f"cg.{path}.{count}.{batch}"
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{HERE}"}
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}.%p",
                    sys.executable, __file__, "--run", path, "--count", str(count), "--batch", str(batch),
                    *(["--received"] if received else []), *(["--door"] if door else [])],
                   env=env, check=True, capture_output=True)
    totals = []
    for part in sorted(tmp.glob(f"{out.name}.*-*")):
        for line in part.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                totals.append(int(line.split()[1]))
                break
    for part in tmp.glob(f"{out.name}.*"):
        part.unlink()
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="deliveries per loop turn")
    parser.add_argument("--received", action="store_true", help="acknowledge on receipt: store pending")
    parser.add_argument("--door", action="store_true", help="each awaited as the SMTP door's reply written at once")
    parser.add_argument("--root", type=Path, action="append", default=[], help="another checkout to count too")
    parser.add_argument("--run", choices=("group", "one"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=FEW, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.run, args.count, args.batch, args.received, args.door)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="group-path-"))
    names = {"group": ("worker loop", "parent writer", "parent reader"), "one": ("loop", "writer")}
    received = (", received" if args.received else "") + (", as the SMTP door" if args.door else "")
    print(f"instructions per delivery, {args.batch} a loop turn{received} ({MANY} - {FEW} deliveries, callgrind)")
    for root in [ROOT, *args.root]:
        for path in ("one", "group"):
            few, many = (instructions(root, path, count, args.batch, tmp, args.received, args.door)
                         for count in (FEW, MANY))
            per = [(b - a) / (MANY - FEW) for a, b in zip(few, many, strict=False)]
            threads = ", ".join(f"{name} {value / 1000:,.1f} k" for name, value in zip(names[path], per, strict=False))
            print(f"  {root} {path}: {sum(per) / 1000:,.1f} k ({threads})", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
