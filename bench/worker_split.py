"""How bursts of connections opened at once split over the workers of `mailhook serve --workers 2`.

Each burst opens 8 connections together from one asyncio client (as bench/smtp.py opens its sessions),
holds them until each is served (the SMTP greeting; an HTTP `GET /healthz`), then reads which worker holds
each one: the server side of the connection in /proc/net/tcp, its socket inode among a worker's fds.
Prints each burst's split and how many bursts went whole to one worker.

    python bench/worker_split.py [--root TREE] [--bursts 20] [--door smtp|http]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SESSIONS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_sides(port: int) -> dict[int, str]:
    """Return the socket inode of each established connection to `port`, by the client's port."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if local == port and fields[3] == "01":
            found[remote] = fields[9]
    return found


def _owners(pids: list[int]) -> dict[str, int]:
    """Return the pid holding each socket inode among `pids`' open files."""
    owned = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owned[link[8:-1]] = pid
    return owned


def _workers(parent: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in children if b"mailhook.group" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def _burst(port: int, door: str, workers: list[int]) -> list[int]:
    opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(SESSIONS)))
    for reader, writer in opened:
        if door == "http":
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: mailhook\r\n\r\n")
        await reader.readline()
    sides, owners = _server_sides(port), _owners(workers)
    counts = dict.fromkeys(workers, 0)
    for _, writer in opened:
        counts[owners[sides[writer.get_extra_info("sockname")[1]]]] += 1
    for reader, writer in opened:
        if door == "smtp":
            writer.write(b"QUIT\r\n")
            await reader.readline()
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for _, writer in opened), return_exceptions=True)
    return [counts[pid] for pid in workers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="the tree to run")
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--door", choices=("smtp", "http"), default="smtp")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="worker-split-"))
    smtp, http = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env |= {"PYTHONPATH": args.root, "MAILHOOK_CONFIG": "", "MAILHOOK_ALLOW_ROOT": "1"}
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhook", "serve", "--workers", "2", "--db", str(tmp / "m.db"),
             "--smtp-listen", f"127.0.0.1:{smtp}", "--http-listen", f"127.0.0.1:{http}"],
            env=env, stdout=out, stderr=out, cwd=tmp)
    try:
        for _ in range(600):
            if b"worker processes serving" in log.read_bytes():
                break
            time.sleep(0.1)
        workers = _workers(proc.pid)
        assert len(workers) == 2, log.read_text()
        splits = []
        for _ in range(args.bursts):
            splits.append(asyncio.run(_burst(smtp if args.door == "smtp" else http, args.door, workers)))
            time.sleep(0.05)
        whole = sum(1 for split in splits if 0 in split)
        print(args.root, args.door, "splits:", " ".join("/".join(map(str, split)) for split in splits))
        totals = [sum(split[i] for split in splits) for i in range(len(workers))]
        print(f"bursts whole on one worker: {whole}/{args.bursts}; connections per worker: {totals}")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
