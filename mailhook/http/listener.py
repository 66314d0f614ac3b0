"""The HTTP door's listening socket: `listen` serves an aiohttp application through `Connection` under a `Gate`."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from mailhook.config.addresses import parse_address
from mailhook.config.settings import HttpSettings
from mailhook.errors import ConfigError
from mailhook.http.connection import Connection, Handler, serve_through
from mailhook.http.gate import Gate
from mailhook.http.request_loop import Quick

if TYPE_CHECKING:
    from mailhook.metrics import Metrics

# nginx's default listen backlog; a socket systemd passes keeps the unit's Backlog= instead.
BACKLOG = 511


class Listener:
    """The HTTP door's listening socket and its gate."""

    def __init__(self, server: asyncio.Server, gate: Gate) -> None:
        self.server = server
        self.gate = gate

    def addresses(self) -> list[str]:
        """Return the bound HOST:PORT of every listening socket (the real port when 0 was asked)."""
        result = []
        for sock in self.server.sockets:
            host, port = sock.getsockname()[:2]
            result.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return result

    def close(self) -> None:
        """Stop accepting."""
        self.server.close()
        self.gate.close()


async def listen(
    runner: web.AppRunner, settings: HttpSettings, metrics: Metrics, logger: logging.Logger,
    protocol_log: logging.Logger | logging.LoggerAdapter, sock: socket.socket | None = None,  # type: ignore[type-arg]
    handler: Handler | None = None, quick: Quick | None = None,
) -> Listener:
    """Serve `runner`'s application on `sock` (passed by systemd) or on `settings.listen`.

    With `handler`, each request goes to it instead of to the application
    (which it may pass on to, through `application_handler`); with `quick`,
    each request is offered to it first (`Connection`'s `quick`). Raises
    `ConfigError` when the address cannot be bound, so `serve` exits 78 with
    one line as for the SMTP door.
    """
    loop = asyncio.get_running_loop()
    assert runner.server is not None, "runner.setup() first"
    if handler is not None:
        serve_through(runner.server, handler)
    gate = Gate(runner.server, settings, metrics, logger, protocol_log)
    factory = functools.partial(Connection, gate, quick)  # the protocol for one accepted connection
    try:
        if sock is not None:
            server = await loop.create_server(factory, sock=sock, backlog=BACKLOG)
        else:
            host, port = parse_address(settings.listen, "http.listen")
            server = await loop.create_server(factory, host, port, reuse_address=True, backlog=BACKLOG)
    except OSError as exc:
        where = settings.listen if sock is None else "the socket systemd passed"
        # asyncio wraps bind errors in a long sentence; the errno says it in the usual words.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"http.listen: cannot listen on {where}: {reason}") from None
    return Listener(server, gate)
