"""The HTTP door alone: loop-thread instructions (callgrind) or CPU per notification POST, trees side by side.

    python bench/http_door.py [--root OLD_CHECKOUT] [--connections 8] [--requests 5000] [--rounds 7]
    python bench/http_door.py --callgrind [--root OLD_CHECKOUT] [--connections 1] [--requests 2000]

Each turn starts `mailhook.http.door.start` of one tree in a server process
of its own, with the real metrics and in-flight budget but a stub pipeline
whose `ingest_soon` answers "stored" one loop turn later (no extraction, no
writer), so the loop thread runs only the door, aiohttp and asyncio. A
client process sends the v1.1 XML text fixture as POSTs over keep-alive
connections, `--warmup` first. Without `--callgrind` the server times its
loop thread (`time.thread_time`) over the counted requests, rounds
alternating the trees, and the medians are printed; with it, the server runs
under `valgrind --tool=callgrind --separate-threads=yes`, zeroed after the
warm-up and dumped after the counted requests, and the loop thread's
instructions per request are printed (one turn per tree: the count is
deterministic to ~2 k).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BODY = (ROOT / "fixtures" / "seed" / "text-outbound.xml").read_bytes()


class StubPipeline:
    """Answers every delivery "stored" one loop turn later; stops the server after `total`."""

    def __init__(self, warm: int, total: int, done: asyncio.Event, receipt: Any) -> None:
        self.receipt = receipt
        self.count = 0
        self.warm = warm
        self.total = total
        self.done = done
        self.started = self.ended = 0.0

    def ingest_soon(self, delivery: Any, outcome: asyncio.Future[Any] | None = None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop() if outcome is None else outcome.get_loop()
        future = loop.create_future() if outcome is None else outcome
        self.count += 1
        loop.call_soon(future.set_result, self.receipt(self.count, "stored", 1, 0))
        if self.count == self.warm:
            self.started = time.thread_time()
        if self.count == self.total:
            self.ended = time.thread_time()
            loop.call_later(0.2, self.done.set)
        return future


async def serve(address_file: Path, warm: int, total: int) -> None:
    """Serve the door on 127.0.0.1 until `total` POSTs are answered; print the loop thread's µs per counted one."""
    from mailhook.budget import InflightBudget
    from mailhook.config.settings import Settings
    from mailhook.http import door
    from mailhook.metrics import Metrics
    from mailhook.models import Receipt

    settings = Settings()
    settings = dataclasses.replace(settings, http=dataclasses.replace(settings.http, listen="127.0.0.1:0"))
    done = asyncio.Event()
    pipeline = StubPipeline(warm, total, done, Receipt)
    runtime = SimpleNamespace(settings=settings, pipeline=pipeline, metrics=Metrics(),
                              inflight=InflightBudget(256 * 1024 * 1024), sockets={})
    web = await door.start(runtime)  # type: ignore[arg-type]
    address_file.write_text(web.addresses()[0])
    await done.wait()
    await web.close()
    print(f"{(pipeline.ended - pipeline.started) * 1e6 / (total - warm):.1f}")


async def _post(host: str, port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n"
               b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    for _ in range(count):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()


async def drive(address: str, pid: int | None, per_connection_warm: int, per_connection: int,
                connections: int) -> None:
    """Send the warm-up and the counted POSTs; around the counted ones, zero and dump callgrind's counts."""
    host, port = address.rsplit(":", 1)
    await asyncio.gather(*(_post(host, int(port), per_connection_warm) for _ in range(connections)))
    if pid is not None:
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    await asyncio.gather(*(_post(host, int(port), per_connection) for _ in range(connections)))
    if pid is not None:
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)


def turn(tree: Path, args: argparse.Namespace, work: Path) -> float:
    """Run one server of `tree` and its client; return µs (CPU) or instructions per request of the loop thread."""
    connections = args.connections
    warm, counted = args.warmup // connections, args.requests // connections
    total = (warm + counted) * connections
    address = work / "address"
    address.unlink(missing_ok=True)
    out = work / "callgrind.out"
    command = [sys.executable, __file__, "--serve", str(address), str(warm * connections), str(total)]
    if args.callgrind:
        command = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}.%p",
                   *command]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while not address.exists() or not address.read_text():
        if server.poll() is not None:
            raise SystemExit(f"the server of {tree} exited with {server.returncode}")
        time.sleep(0.2)
    asyncio.run(drive(address.read_text(), server.pid if args.callgrind else None, warm, counted, connections))
    stdout, _ = server.communicate(timeout=600)
    if not args.callgrind:
        return float(stdout.split()[-1])
    [dump] = work.glob(f"callgrind.out.{server.pid}.1-01")  # the loop thread's counted part
    summary = next(line for line in dump.read_text().splitlines() if line.startswith("summary:"))
    for stale in work.glob("callgrind.out.*"):
        stale.unlink()
    return int(summary.split()[1]) / (counted * connections)


def main() -> None:
    """Measure this tree and each `--root`, rounds interleaved; print the medians."""
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(serve(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, action="append", default=[], help="another checkout to measure")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5000, help="counted POSTs per turn")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true", help="instructions, one turn per tree")
    args = parser.parse_args()
    trees = [*args.root, ROOT]
    results: dict[Path, list[float]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="http-door-") as tmp:
        for _ in range(1 if args.callgrind else args.rounds):
            for tree in trees:
                results[tree].append(turn(tree, args, Path(tmp)))
                print(f"{tree}: {results[tree][-1]:,.1f}", file=sys.stderr)
    unit = "instructions" if args.callgrind else "loop-thread CPU µs"
    for tree, values in results.items():
        print(f"{tree}: {statistics.median(values):,.1f} {unit} per request (median of {len(values)})")


if __name__ == "__main__":
    main()
