"""aiohttp's connection handling with mailhook's limits: connection caps, a request-head deadline, plain errors.

aiohttp closes idle keep-alive connections but has no cap on connections and
no deadline for a request head (a client dripping header bytes holds its
connection, and an open file, for an hour), and it answers requests it cannot
parse itself, echoing the bytes it choked on and naming the Python and aiohttp
versions in `Server:`. The HTTP door (`mailhook.http.door`) serves through the
`Connection` protocol here instead of aiohttp's sites (`mailhook.http.listener`),
under the caps `mailhook.http.gate` counts. It and the two modules it
stands on, `mailhook.http.request_loop` (aiohttp's `start`, copied) and
`mailhook.http.answer` (the 200 written at once), are the only ones that rely
on aiohttp's private internals, each use commented with what it replaces and
why. Each lists those it uses in `PRIVATE_NAMES`; tests/test_http_connection.py
fails naming the one an aiohttp upgrade changed, and pyproject.toml caps aiohttp.

The limits mirror nginx: `limit_conn` (total and per address, answered 503;
at the total cap a connection still waiting for a request head makes room, as
nginx reuses its idle connections when `worker_connections` run out),
`client_header_timeout` (408), `large_client_header_buffers` (a cap on a
request head's size, 400), `send_timeout` (a client not reading its
answers), `keepalive_timeout` (aiohttp's own knob).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_request import BaseRequest

from mailhook.http.gate import Gate, error_response
from mailhook.http.request_loop import Quick, RequestLoop

# Seconds the unread rest of a refused request body is read and dropped after the answer, so the client
# sees the answer rather than a reset (aiohttp's lingering_time, 10 s by default; nginx's lingering_timeout).
LINGER = 5.0
# aiohttp's private names this module relies on (checked by tests/test_http_connection.py):
#   RequestHandler._waiter       the future start() awaits while no whole request head has arrived
#   RequestHandler.handle_error  builds aiohttp's own error page (overridden below)
#   BaseProtocol._reading_paused, BaseProtocol._buffer_paused
#                                the two reasons aiohttp pauses reading (resume_reading, overridden below)
#   Application._handle          routes a request through the application (application_handler, below)
#   Server.request_handler       what each connection's protocol calls per request (serve_through, below)
# and through its base classes, those of mailhook/http/request_loop.py and mailhook/http/answer.py.
PRIVATE_NAMES = ("RequestHandler._waiter", "RequestHandler.handle_error", "BaseProtocol._reading_paused",
                 "BaseProtocol._buffer_paused", "Application._handle", "Server.request_handler")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Connection(RequestLoop):
    """aiohttp's per-connection protocol, admitted under the caps and with a deadline for each request head."""

    __slots__ = ("_admitted", "_counted", "_gate", "_head_size", "_head_started", "_head_timer", "_send_timer",
                 "peer", "since")

    def __init__(self, gate: Gate, quick: Quick | None = None) -> None:
        super().__init__(gate.manager, loop=gate.loop, keepalive_timeout=gate.settings.keepalive_timeout,
                         logger=gate.protocol_log, access_log=None, lingering_time=LINGER, quick=quick)
        self._gate = gate
        self.peer = "-"
        self._admitted = False
        self._counted = False  # holds a place under the caps
        # Loop time of accept, then of each whole request head: a connection waiting for a head has waited since.
        self.since = gate.loop.time()
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        self._head_size = 0
        self._send_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the connection or answer 503 and close; start the deadline for the first request's head."""
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "-"
        if peer is not None:
            self._remote = str(peer[0]) if isinstance(peer, (list, tuple)) else str(peer)
        refusal = self._gate.admit(self)
        if refusal is not None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(refusal)
            transport.close()
            return
        self._admitted = self._counted = True
        super().connection_made(transport)
        # As nginx's client_header_timeout: the whole first head within the deadline from accept.
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Release the connection's place under the caps."""
        self._disarm_head_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if not self._admitted:
            return  # aiohttp never saw it
        self._admitted = False
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._gate.release(self)

    def waiting_since(self, latest: float) -> bool:
        """Say whether this connection has waited for a request head since `latest` or earlier (may make room)."""
        transport = self.transport
        return (self._counted and self.since <= latest and transport is not None and not transport.is_closing()
                and self._waiting_for_head())

    def evict(self) -> None:
        """Close this connection, waiting for a request head, to make room for a new one; give up its place now."""
        answer = self._gate.evicted(self.peer, self._loop.time() - self.since, self._head_started)
        self._release()
        self._disarm_head_timer()
        if answer is not None and self.transport is not None:
            self.transport.write(answer)
        self.force_close()

    def data_received(self, data: bytes) -> None:
        """Feed aiohttp's parser; a head's first bytes start its deadline, a whole head stops it.

        aiohttp bounds each header line (8190 bytes) and their number (128), so
        one head could still hold ~1 MB while it trickles in; the head as a
        whole is bounded here, as nginx's large_client_header_buffers do.
        """
        # `_waiting_for_head()` written out, here and below: this runs for every read.
        waiter = self._waiter
        waiting = waiter is not None and not waiter.done()
        if data and waiting:
            self._head_started = True
            self._head_size += len(data)
        super().data_received(data)
        waiter = self._waiter
        if waiter is None or waiter.done():
            if waiting:
                self.since = self._loop.time()  # a whole head: no longer a candidate to make room
            self._disarm_head_timer()
        elif self._head_size > self._gate.settings.max_header_size and self.transport is not None:
            self.transport.write(self._gate.head_too_large(self.peer))
            self.force_close()
        elif self._head_started and self._head_timer is None:
            # Armed only for a head still incomplete after these bytes: a kept-alive request's
            # head usually comes whole in one read, and a timer for it would be cancelled at once
            # (a TimerHandle and a heap entry per request). Same loop time as before the parse.
            self._head_timer = self._loop.call_later(self._gate.settings.header_timeout, self._head_overdue)

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Resume reading where aiohttp paused it; otherwise only let the parser go on with bytes it holds back.

        aiohttp's body stream calls this twice per request, paused or not:
        after a read that leaves its buffer under the low-water mark (to parse
        b"" through `data_received`, and resume the transport) and at the
        body's end (only to resume the transport). Private: aiohttp stops the
        transport only with `_reading_paused` (flow control) or
        `_buffer_paused` (a full queue of pipelined requests) set, so with
        neither there is no transport to resume. The parse of b"" stays: the
        parser may hold back a pipelined request even then (its count of
        queued requests can run ahead of the protocol's).
        """
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)
        elif resume_parser:
            if self._waiter is None:
                # A request is being read (bodies are read only then): no head is awaited before or
                # after this parse, so this class's data_received would only disarm a disarmed timer.
                super().data_received(b"")
            else:
                self.data_received(b"")

    def pause_writing(self) -> None:
        """The client stopped reading (the send buffer is full): it has `send_timeout` to read on.

        aiohttp waits for the buffer to drain without a deadline, so a client
        that never reads its answers would hold the connection for ever (nginx: send_timeout).
        """
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._gate.settings.send_timeout, self._send_overdue)

    def resume_writing(self) -> None:
        """The client read enough for writing to go on."""
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_overdue(self) -> None:
        self._send_timer = None
        if self.transport is not None:
            self._gate.send_overdue(self.peer)
            self.transport.abort()  # closing would wait for the unread answer to drain

    def _waiting_for_head(self) -> bool:
        # Private: aiohttp's start() awaits self._waiter exactly while it has no whole
        # request head to handle (aiohttp's own keep-alive check uses it the same way).
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self._loop.call_later(self._gate.settings.header_timeout, self._head_overdue)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_started = False
        self._head_size = 0

    def _head_overdue(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or not self._waiting_for_head():
            self._head_started = False
            return  # a request is being handled: its body has its own timeout
        answer = self._gate.head_overdue(self.peer, self._head_started)
        if answer is not None:
            transport.write(answer)
        self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse (or a handler crash) with JSON that repeats none of it.

        Replaces RequestHandler.handle_error, whose text/plain page holds the
        parser's message with the offending request bytes, and which is sent
        without the application's on_response_prepare (so `Server:` named
        Python and aiohttp). It still logs through the protocol logger and
        refuses when part of a response was sent, as the original does.
        """
        self.logger.exception("Error handling request from %s", self.peer, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if isinstance(exc, LineTooLong):
            reason = "request line or header too long"
        elif status == 400:
            reason = "malformed request"
        else:
            reason = HTTPStatus(status).phrase.lower()
        return error_response(status, reason)


def application_handler(app: web.Application) -> Handler:
    """Return aiohttp's own handling of a request by `app`: its expect handlers, router and route handlers.

    Private: `Application._handle` is what the server an AppRunner makes
    calls for each request; the door calls it for the requests it does not
    route itself (`listen`'s `handler`).
    """
    return app._handle


def serve_through(server: web.Server, handler: Handler) -> None:
    """Make every connection `server` serves from now on hand its requests to `handler`.

    Private: each connection's protocol (RequestHandler.__init__) takes the
    server's `request_handler`, the application's `_handle`; set before the
    first connection is accepted.
    """
    server.request_handler = handler  # type: ignore[assignment]
