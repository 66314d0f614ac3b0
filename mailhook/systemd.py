"""The systemd service protocol, spoken directly: sd_notify datagrams and sockets passed with LISTEN_FDS.

Both are tiny, stable protocols (see sd_notify(3) and sd_listen_fds(3)), so
mailhook needs neither libsystemd nor a binding. Outside systemd (no
NOTIFY_SOCKET, no LISTEN_FDS) everything here quietly does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Mapping

log = logging.getLogger("mailhook.systemd")

LISTEN_FDS_START = 3
DOORS = ("smtp", "http")
TCP_LISTEN = 10  # tcp_info.tcpi_state of a listening socket (include/net/tcp_states.h)
DEFAULT_BACKLOG = 100  # asyncio's, for a socket whose backlog cannot be read


class Notifier:
    """Sends sd_notify messages (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) to $NOTIFY_SOCKET."""

    def __init__(self, env: Mapping[str, str]) -> None:
        address = env.get("NOTIFY_SOCKET", "")
        # A leading @ names a socket in the abstract namespace (a NUL byte on the wire).
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Say whether a service manager is listening."""
        return bool(self.address)

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of VAR=value lines; return whether it was sent. Never raises."""
        if not self.address or not assignments:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.connect(self.address)
            self._socket.sendall(message)
        except OSError as exc:
            self.close()
            if not self._failed:
                # The service manager going away must not take the server with it.
                log.warning("cannot notify the service manager at %s: %s", self.address.lstrip("\0"), exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        """Say the service is up (listeners bound, database open)."""
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str, *, watchdog: bool = False) -> bool:
        """Update the one-line status `systemctl status` shows, optionally with a watchdog ping."""
        return self.notify(f"STATUS={status}", *(["WATCHDOG=1"] if watchdog else []))

    def stopping(self, status: str) -> bool:
        """Say the service is shutting down."""
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Return how often to send WATCHDOG=1 (half of WatchdogSec=), or None when no watchdog is set."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def listen_sockets(env: Mapping[str, str]) -> dict[str, socket.socket]:
    """Take the listening sockets systemd passed (LISTEN_FDS), keyed by door name: smtp, http.

    Sockets are matched by FileDescriptorName= (smtp or http); unnamed ones
    are given to the doors in order (first smtp, then http).
    """
    if env.get("LISTEN_PID") != str(os.getpid()):
        return {}
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        log.warning("ignoring LISTEN_FDS=%r: not a number", env.get("LISTEN_FDS"))
        return {}
    names = env["LISTEN_FDNAMES"].split(":") if env.get("LISTEN_FDNAMES") else []
    result: dict[str, socket.socket] = {}
    others: list[tuple[str, socket.socket]] = []
    for index in range(count):
        fd = LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        name = names[index] if index < len(names) else ""
        if sock.type != socket.SOCK_STREAM:
            sock.close()
            raise OSError(f"socket {name or fd} passed by systemd is not a stream socket")
        if name in DOORS and name not in result:
            result[name] = sock
        else:
            others.append((name, sock))
    for door in DOORS:
        if door not in result and others:
            name, sock = others.pop(0)
            log.info("socket %s passed by systemd goes to %s", name or "without a name", door)
            result[door] = sock
    for name, sock in others:
        log.warning("ignoring an extra socket passed by systemd: %s", name or sock.fileno())
        sock.close()
    return result


def backlog(sock: socket.socket) -> int:
    """Return the listen backlog a passed socket already has (the unit's Backlog=), to listen again with it.

    asyncio and aiohttp call listen() again on a socket they are handed, with their own default (100, 128),
    which would silently replace the .socket unit's Backlog=. Linux reports a listening TCP socket's
    backlog in TCP_INFO (tcpi_sacked, after eight one-byte fields and five 32-bit ones).
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except (OSError, AttributeError):
        return DEFAULT_BACKLOG
    if len(info) < 32 or info[0] != TCP_LISTEN:
        return DEFAULT_BACKLOG
    value: int = struct.unpack_from("=I", info, 28)[0]
    return value or DEFAULT_BACKLOG


def describe(sock: socket.socket) -> str:
    """Return a socket's local address as HOST:PORT (or its path)."""
    address = sock.getsockname()
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)
