"""Open files: how many the connection caps need, and one summary line when accepting runs out of them.

Every connection is an open file. When the caps allow more connections than
the process may open (RLIMIT_NOFILE; 1024 for a systemd service unless the
unit says `LimitNOFILE=`), accepting fails with "Too many open files" and
asyncio logs a traceback for every failed accept() (up to a backlog's worth
per second). `check-config` and `serve` warn about the first; the loop's
exception handler here turns the second into one line per interval, while
asyncio retries accepting every second so the doors serve again as soon as
files are free.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from typing import Any

from mailhook.config.settings import Settings
from mailhook.logs import Summary

log = logging.getLogger("mailhook.server")

# Files mailhook holds besides connections: the database, its -wal and -shm (for
# the writer and readers), listening sockets, the event loop's own, the log,
# sd_notify, extraction workers' pipes, refused connections being closed.
MARGIN = 128
# What asyncio says (selector_events._accept_connection) when accept() fails for want of files or memory.
ACCEPT_FAILED = "socket.accept() out of system resource"
_OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def needed(settings: Settings, *, smtp: bool, http: bool) -> int:
    """Return how many files the process may need with every enabled door full."""
    return (MARGIN + (settings.smtp.max_sessions if smtp else 0)
            + (settings.http.max_connections if http else 0))


def limit() -> int:
    """Return how many files this process may open: its hard limit, up to which `raise_limit` lifts the soft one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else 1 << 30


def raise_limit(need: int) -> None:
    """Lift the open-file soft limit to `need`, as far as the hard limit allows.

    A login shell's soft limit (and systemd's default for services) is 1024 on
    purpose, for programs that still use select(); the hard limit is the one
    meant for servers that need more, as asyncio's epoll loop does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(need, limit())
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def shortfall(settings: Settings, *, smtp: bool, http: bool) -> str | None:
    """Say why the caps do not fit within the open-file limit, or None when they do."""
    need = needed(settings, smtp=smtp, http=http)
    have = limit()
    if need <= have:
        return None
    parts = [*([f"smtp.max_sessions {settings.smtp.max_sessions}"] if smtp else []),
             *([f"http.max_connections {settings.http.max_connections}"] if http else []),
             f"{MARGIN} for mailhook itself"]
    return (f"the connection caps need up to {need} open files ({' + '.join(parts)}) but this process may "
            f"open only {have} (RLIMIT_NOFILE's hard limit); raise LimitNOFILE= in the unit or `ulimit -Hn`, "
            "or lower the caps, or connections beyond the limit wait unaccepted")


def guard_accept(loop: asyncio.AbstractEventLoop, interval: float = 60.0) -> Summary:
    """Log accept() failing for want of files as one line per interval instead of a traceback per attempt."""
    summary = Summary(log, logging.ERROR, "accepting connections failed", interval)
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if context.get("message") == ACCEPT_FAILED and isinstance(error, OSError) and error.errno in _OUT_OF:
            where = _address(context.get("socket"))
            summary.note("cannot accept connections on %s: %s (open-file limit %d); retrying every second",
                         where, error.strerror, limit())
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return summary


def _address(sock: Any) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except (AttributeError, OSError, TypeError, ValueError):
        return "a listening socket"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
