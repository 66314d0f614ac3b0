"""Helpers for tests that run servers as processes: a free loopback port, a process's descendants, waiting."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# This machine and CI run the tests as root, which `mailhook serve`, `imap` and `ingest` refuse unless allowed.
ALLOW_ROOT = {"MAILHOOK_ALLOW_ROOT": "1"}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Return the children of `pid`, their children and so on (a fork server's workers are grandchildren)."""
    found: list[int] = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something true and return that; fail naming `what` after `timeout` s.

    For state in another process or thread that cannot signal the test (a port that starts listening, a row
    that appears); `predicate` may raise OSError while the state is not there yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError):
            if result := predicate():
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether something accepts TCP connections on `host:port` (raising OSError while nothing does)."""
    socket.create_connection((host, port), timeout=1).close()
    return True


def read_all(sock: socket.socket) -> bytes:
    """Read until the server closes the connection (or resets it)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def unread_bytes(*ports: int) -> int:
    """Return the bytes on established loopback TCP connections to `ports` that the server has not read yet.

    What its clients' kernels still hold to send and its own kernel holds unread (/proc/net/tcp's
    tx_queue and rx_queue): 0 once everything sent to the server is in the server process's memory.
    """
    unread = 0
    for local, remote, state, queues, _ in _tcp_sockets():
        if state != "01":  # ESTABLISHED
            continue
        tx_queue, rx_queue = (int(q, 16) for q in queues.split(":"))
        if local in ports:
            unread += rx_queue  # the server's side
        elif remote in ports:
            unread += tx_queue  # a client's side
    return unread


def schedstat(pid: int, tid: int | None = None) -> tuple[float, float]:
    """Return the seconds thread `tid` of process `pid` (its main thread by default) has run on a CPU, and waited,
    runnable, for one (/proc's schedstat: the second is time lost to other processes' load)."""
    ran, waited, _ = Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()
    return int(ran) / 1e9, int(waited) / 1e9


def serving_process(sock: socket.socket, pids: list[int]) -> int:
    """Return which of `pids` holds the server's end of the loopback connection `sock`."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    inodes = {f"socket:[{inode}]" for local, remote, _, _, inode in _tcp_sockets()
              if (local, remote) == (server_port, client_port)}
    for pid in pids:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    raise AssertionError(f"no process of {pids} holds the server's end of {sock}")


def _tcp_sockets() -> list[tuple[int, int, str, str, str]]:
    """Return each IPv4 TCP socket of /proc/net/tcp: local port, remote port, state, "tx:rx" queues, inode."""
    sockets = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        sockets.append((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[3], fields[4],
                        fields[9]))
    return sockets
