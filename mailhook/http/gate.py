"""The HTTP door's caps on connections and its refusals: who is let in, who makes room, what each refusal says.

`Gate` counts the connections `mailhook.http.connection.Connection` admits
(in total and per address, as nginx's `limit_conn`), picks the connection
that makes room at the total cap, and keeps the refusal answers and their
summed-up log lines. It touches no private part of aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web

from mailhook.config.settings import HttpSettings
from mailhook.logs import Summary

if TYPE_CHECKING:
    from mailhook.http.connection import Connection
    from mailhook.metrics import Metrics

SERVER = "mailhook"
# How often a flood of refusals or timeouts is summed up in the log.
LOG_INTERVAL = 60.0


def raw_response(status: int, message: str, *headers: str) -> bytes:
    """Return a complete `Connection: close` HTTP/1.1 response with a JSON error body, as bytes."""
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Server: {SERVER}",
            "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(body)}", *headers,
            "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def error_response(status: int, message: str) -> web.Response:
    """Return a JSON error response that closes the connection."""
    response = web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json",
                            headers={"Server": SERVER})
    response.force_close()
    return response


class Gate:
    """Counts connections in under the caps, and holds what each protocol shares (manager, settings, loop, logs)."""

    def __init__(self, manager: web.Server, settings: HttpSettings, metrics: Metrics, logger: logging.Logger,
                 protocol_log: logging.Logger | logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self.manager = manager
        self.settings = settings
        self.metrics = metrics
        self.protocol_log = protocol_log
        self.loop = asyncio.get_running_loop()
        self.open = 0
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.connections: set[Connection] = set()
        self.refusals = Summary(logger, logging.WARNING, "HTTP connections refused at the caps", LOG_INTERVAL)
        self.timeouts = Summary(logger, logging.WARNING, "HTTP connections closed without a whole request head",
                                LOG_INTERVAL)
        self.evictions = Summary(logger, logging.INFO, "HTTP connections closed to make room at the total cap",
                                 LOG_INTERVAL)
        self._evicted = raw_response(503, "connection closed to make room for others; retry later", "Retry-After: 5")
        self._too_many = raw_response(503, "too many connections; retry later", "Retry-After: 5")
        self._too_many_here = raw_response(503, "too many connections from your address; retry later",
                                           "Retry-After: 5")
        self._head_late = raw_response(
            408, f"request head not received within {settings.header_timeout:g} seconds")
        self._head_large = raw_response(400, f"request head larger than {settings.max_header_size} bytes")

    def admit(self, conn: Connection) -> bytes | None:
        """Count a connection in, or return the 503 response that refuses it.

        At `max_connections`, a connection waiting for a request head makes
        room (see `_idlest`), so connections that never complete a request
        cannot shut out one that does. `max_per_ip` stays a hard cap, as
        nginx's `limit_conn`: past it an address competes only with itself.
        """
        peer = conn.peer
        if self.per_ip[peer] < self.settings.max_per_ip and self.open >= self.settings.max_connections:
            idlest = self._idlest()
            if idlest is not None:
                idlest.evict()
        if self.open >= self.settings.max_connections:
            self.metrics.on_rejected("http", "too_many_connections")
            self.refusals.note("refused connection channel=http peer=%s: %d connections open (http.max_connections)",
                               peer, self.open)
            return self._too_many
        if self.per_ip[peer] >= self.settings.max_per_ip:
            self.metrics.on_rejected("http", "too_many_from_address")
            self.refusals.note("refused connection channel=http peer=%s: %d connections from it (http.max_per_ip)",
                               peer, self.per_ip[peer])
            return self._too_many_here
        self.open += 1
        self.per_ip[peer] += 1
        self.connections.add(conn)
        return None

    def release(self, conn: Connection) -> None:
        """Count a connection out."""
        self.connections.discard(conn)
        self.open -= 1
        self.per_ip[conn.peer] -= 1
        if self.per_ip[conn.peer] <= 0:
            del self.per_ip[conn.peer]

    def _idlest(self) -> Connection | None:
        """Return the connection that makes room at `max_connections`, if any.

        That is one waiting for a request head (none sent yet, one still
        incomplete, or idle between kept-alive requests) for at least
        `evict_after` seconds, from the address holding the most connections,
        and of those the one waiting longest. A connection whose request is
        being read, handled or answered is never chosen. Preferring the
        address holding the most means that a client holding a place or two
        is not displaced by a flood from a few addresses; the flood displaces itself.
        """
        latest = self.loop.time() - self.settings.evict_after
        candidates = (c for c in self.connections if c.waiting_since(latest))
        return min(candidates, key=lambda c: (-self.per_ip[c.peer], c.since), default=None)

    def evicted(self, peer: str, waited: float, started: bool) -> bytes | None:
        """Note a connection closed to make room; return the 503 to send, if any."""
        self.metrics.on_rejected("http", "evicted")
        self.evictions.note("closed connection channel=http peer=%s: no whole request head for %.1f s, its place "
                            "given to a new connection (http.max_connections)", peer, waited)
        # A client mid-head is told to retry; one idle (or silent) since its last request is closed
        # silently, as nginx closes reusable connections and as any keep-alive client expects.
        return self._evicted if started else None

    def head_overdue(self, peer: str, started: bool) -> bytes | None:
        """Note a connection closed for want of a whole request head; return the 408 to send, if any."""
        self.metrics.on_rejected("http", "timeout")
        if not started:
            # Nothing was sent at all: closed without an answer, as nginx does.
            self.timeouts.note("closed connection channel=http peer=%s: no request within %g seconds",
                               peer, self.settings.header_timeout)
            return None
        self.timeouts.note("request refused channel=http peer=%s status=408 reason=request head not received "
                           "within %g seconds", peer, self.settings.header_timeout)
        return self._head_late

    def head_too_large(self, peer: str) -> bytes:
        """Note a request head over `max_header_size`; return the 400 to send."""
        self.metrics.on_rejected("http", "malformed")
        self.refusals.note("request refused channel=http peer=%s status=400 reason=request head larger than %d bytes",
                           peer, self.settings.max_header_size)
        return self._head_large

    def send_overdue(self, peer: str) -> None:
        """Note a connection closed because its client left an answer unread."""
        self.metrics.on_rejected("http", "timeout")
        self.timeouts.note("closed connection channel=http peer=%s: an answer stayed unread for %g seconds",
                           peer, self.settings.send_timeout)

    def close(self) -> None:
        """Log what the summaries still count."""
        self.refusals.close()
        self.timeouts.close()
        self.evictions.close()
