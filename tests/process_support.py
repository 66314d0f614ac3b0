"""Helpers for tests that run servers as processes: a free loopback port, and a process's descendants."""

from __future__ import annotations

import socket
from contextlib import suppress
from pathlib import Path

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
