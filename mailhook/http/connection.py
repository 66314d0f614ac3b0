"""aiohttp's connection handling with mailhook's limits: connection caps, a request-head deadline, plain errors.

aiohttp closes idle keep-alive connections but has no cap on connections and
no deadline for a request head (a client dripping header bytes holds its
connection, and an open file, for an hour), and it answers requests it cannot
parse itself, echoing the bytes it choked on and naming the Python and aiohttp
versions in `Server:`. The HTTP door (`mailhook.http.door`) serves through the
`Connection` protocol here instead of aiohttp's sites (`mailhook.http.listener`),
under the caps `mailhook.http.gate` counts; this is the one module
that relies on aiohttp's private internals, each use commented with what it
replaces and why. `PRIVATE_NAMES` lists them; tests/test_http_connection.py fails
naming the one an aiohttp upgrade renamed, and pyproject.toml caps aiohttp.

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
from types import MappingProxyType
from typing import Any

from aiohttp import HttpVersion, HttpVersion10, HttpVersion11, StreamReader, web
from aiohttp.helpers import ceil_timeout, rfc822_formatted_time
from aiohttp.http_exceptions import LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.web_protocol import _PAYLOAD_ACCESS_ERROR, ERROR, RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

from mailhook.http.gate import Gate, error_response

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
#   StreamResponse._eof_sent, StreamResponse._keep_alive, StreamResponse._body_length
#                                the state aiohttp's prepare and write_eof leave in a response (Answer, below)
#   helpers.rfc822_formatted_time
#                                the Date header's value, as aiohttp's prepare writes it (Answer, below)
#   StreamResponse.__init__      not called: the state it sets is class attributes of Answer (below)
#   RequestHandler.start         copied whole, each request handled in the connection's task (Connection.start)
#   RequestHandler._handle_request, RequestHandler.finish_response, StreamWriter.drain
#                                mirrored for a request the door takes itself, or called for its rarer answers
#                                (Connection._quickly)
PRIVATE_NAMES = ("RequestHandler._waiter", "RequestHandler.handle_error", "BaseProtocol._reading_paused",
                 "BaseProtocol._buffer_paused", "Application._handle", "Server.request_handler",
                 "StreamResponse._eof_sent", "StreamResponse._keep_alive", "StreamResponse._body_length",
                 "helpers.rfc822_formatted_time", "RequestHandler.start",
                 "StreamResponse.__init__", "RequestHandler._handle_request", "RequestHandler.finish_response",
                 "StreamWriter.drain")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A door's own handling of a request as aiohttp parsed it (its message, body and the client's address, as
# `BaseRequest.remote` says it): the answer to await, or None to leave the request to aiohttp's path.
Quick = Callable[[RawRequestMessage, StreamReader, "str | None"], "Awaitable[web.StreamResponse] | None"]


class Answer(web.StreamResponse):
    """A 200 answer whose head is formatted and written with its body at once: the bytes aiohttp's Response writes.

    aiohttp's `Response` copies its headers into a new CIMultiDict, then
    `prepare` runs six coroutines (headers, the prepare signal, the status
    line), adds Content-Length, Date and Connection to that copy and
    serializes it, and `write_eof` three more to write head and body
    together. `fields` are the header lines that come before Content-Length
    (as `Response(headers=...)` orders them); the rest is added here as
    `prepare` adds it. Only for a body of bytes, without cookies,
    compression, chunking or a prepare signal (`app.on_response_prepare`
    runs only for requests the router matched), on a status that has a body.
    Private: the state `prepare` and `write_eof` leave (`_keep_alive`,
    `_eof_sent`, `_body_length`), which aiohttp's server reads afterwards,
    and the state `StreamResponse.__init__` makes, kept in the class.
    """

    __slots__ = ("_answer", "_fields")

    # What StreamResponse.__init__ would set per answer (a dict, an empty CIMultiDict, the status through
    # `_set_status`), as class attributes: nothing reads them but the properties, the headers read-only.
    _state: dict[Any, Any] = MappingProxyType({})  # type: ignore[assignment]
    _headers: CIMultiDict[str] = CIMultiDictProxy(CIMultiDict())  # type: ignore[assignment]
    _status = 200
    _reason = "OK"

    def __init__(self, fields: bytes, body: bytes) -> None:
        # Private: StreamResponse.__init__ is not called (see the class attributes above).
        self._fields = fields
        self._answer = body

    async def prepare(self, request: web.BaseRequest) -> None:
        """Write the whole answer, as `prepare` followed by `write_eof` write it (which is left with nothing to do)."""
        if self._eof_sent:
            return
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        writer = request.writer
        await writer.write_eof(self.encode(request.version, keep_alive))
        self._eof_sent = True
        self._body_length = writer.output_size

    def encode(self, version: HttpVersion, keep_alive: bool) -> bytes:
        """Return the whole answer's bytes, head and body, for a request of `version` and a connection kept or not."""
        if keep_alive:
            connection = b"Connection: keep-alive\r\n" if version == HttpVersion10 else b""
        else:
            connection = b"Connection: close\r\n" if version == HttpVersion11 else b""
        body = self._answer
        return b"HTTP/%d.%d 200 OK\r\n%sContent-Length: %d\r\nDate: %s\r\n%s\r\n%s" % (
            version[0], version[1], self._fields, len(body), rfc822_formatted_time().encode(), connection, body)


class Connection(RequestHandler):
    """aiohttp's per-connection protocol, admitted under the caps and with a deadline for each request head."""

    __slots__ = ("_admitted", "_counted", "_gate", "_head_size", "_head_started", "_head_timer", "_quick",
                 "_remote", "_send_timer", "peer", "since")

    def __init__(self, gate: Gate, quick: Quick | None = None) -> None:
        super().__init__(gate.manager, loop=gate.loop, keepalive_timeout=gate.settings.keepalive_timeout,
                         logger=gate.protocol_log, access_log=None, lingering_time=LINGER)  # type: ignore[arg-type]
        self._gate = gate
        # Offered each parsed request first (`start`); what it takes is answered without a Request (`_quickly`).
        self._quick = quick
        self.peer = "-"
        self._remote: str | None = None  # the client's address as `BaseRequest.remote` gives it
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

    async def start(self) -> None:
        """Serve the connection's requests as aiohttp's `start` does, but each in this task, not in one of its own.

        A copy of RequestHandler.start (aiohttp 3.14.5, Apache-2.0, (c) the
        aiohttp contributors; its source is pinned by
        tests/test_library_internals.py, and pyproject.toml requires that
        version) with two changes. A request `_quick` takes (the door's
        notification POSTs that came whole) is answered by `_quickly`, without
        the Request and StreamWriter made here for the rest. And the request's
        `_handle_request` is awaited here instead of in a new Task. On Python
        3.11 that Task cost two more loop turns per request (one to start it,
        one to wake this loop when it ends) and a Task's objects; on 3.12 and
        later aiohttp starts it eagerly, as this runs it. aiohttp makes it "for
        copying context vars" (aiohttp #3406): no mailhook handler sets one. A
        lost connection does not cancel this task (`handler_cancellation` is
        off), so a handler still runs to its end, as before. Private: every
        name below but `log_debug` and `force_close`.
        """
        loop = self._loop
        manager = self._manager
        assert manager is not None
        keepalive_timeout = self._keepalive_timeout
        resp = None
        assert self._request_factory is not None
        assert self._request_handler is not None

        while not self._force_close:
            if not self._messages:
                try:
                    # wait for next request
                    self._waiter = loop.create_future()
                    await self._waiter
                finally:
                    self._waiter = None

            message, payload = self._messages.popleft()

            # Free a parser slot; resume reading once drained to low water so
            # pipelining keeps flowing while this request is handled.
            if self._parser is not None:
                self._parser.message_consumed()
            if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()

            start = loop.time() if self._logging_enabled else None

            manager.requests_count += 1
            # mailhook: a request the door takes itself (`_quick`) gets no writer or Request here (see `_quickly`).
            writer = request = handling = None
            if isinstance(message, _ErrInfo):
                # make request_factory work
                request_handler = self._make_error_handler(message)
                message = ERROR
            else:
                request_handler = self._request_handler
                if self._quick is not None:
                    handling = self._quick(message, payload, self._remote)

            if handling is None:
                writer = StreamWriter(self, loop)
                request = self._request_factory(message, payload, self, writer,
                                                self._task_handler or asyncio.current_task(loop))  # type: ignore[arg-type]
            try:
                try:
                    if handling is not None:
                        resp, reset = await self._quickly(handling, message, payload, start)
                    else:
                        # aiohttp: `await task` of a new Task running this coroutine (see the docstring).
                        resp, reset = await self._handle_request(request, start, request_handler)  # type: ignore[arg-type]
                except ConnectionError:
                    self.log_debug("Ignored premature client disconnection")
                    break

                if reset:
                    self.log_debug("Ignored premature client disconnection 2")
                    break

                # notify server about keep-alive
                self._keepalive = bool(resp.keep_alive)

                # check payload
                if not payload.is_eof():
                    lingering_time = self._lingering_time
                    if not self._force_close and lingering_time:
                        self.log_debug("Start lingering close timer for %s sec.", lingering_time)

                        now = loop.time()
                        end_t = now + lingering_time

                        try:
                            while not payload.is_eof() and now < end_t:
                                async with ceil_timeout(end_t - now):
                                    # read and ignore
                                    await payload.readany()
                                now = loop.time()
                        except (asyncio.CancelledError, TimeoutError):
                            if (t := asyncio.current_task()) and t.cancelling():
                                raise

                    # if payload still uncompleted
                    if not payload.is_eof() and not self._force_close:
                        self.log_debug("Uncompleted request.")
                        self.close()

                payload.set_exception(_PAYLOAD_ACCESS_ERROR)

            except asyncio.CancelledError:
                self.log_debug("Ignored premature client disconnection")
                self.force_close()
                raise
            except Exception as exc:  # noqa: BLE001 - aiohttp's: logged, and the connection closed
                self.log_exception("Unhandled exception", exc_info=exc)
                self.force_close()
            except BaseException:
                self.force_close()
                raise
            finally:
                if request is not None:
                    request._task = None  # type: ignore[assignment] # Break reference cycle in case of exception
                if self.transport is None and resp is not None:
                    self.log_debug("Ignored premature client disconnection.")

            if self._keepalive and not self._close and not self._force_close:
                # start keep-alive timer
                close_time = loop.time() + keepalive_timeout
                self._next_keepalive_close_time = close_time
                if self._keepalive_handle is None:
                    self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
            else:
                break

        # remove handler, close transport if no handlers left
        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self.transport.close()

    async def _quickly(self, handling: Awaitable[web.StreamResponse], message: RawRequestMessage,
                       payload: StreamReader, start: float | None) -> tuple[web.StreamResponse, bool]:
        """Await the answer `_quick` took a request for; write a 200 `Answer` to the transport; say if the client left.

        As `_handle_request` and `finish_response` do for a request, with the
        state aiohttp's shutdown and keep-alive read (`_request_in_progress`,
        `_handler_waiter`, the answer's keep-alive), but without the `Request`,
        the `StreamWriter` and their three coroutines for the common 200 (its
        bytes are `Answer.prepare`'s, written as one `write_eof` writes them,
        and a paused transport is drained as there). Any other answer, and a
        crash (aiohttp's 500), goes through aiohttp's `finish_response` with a
        Request made for it. Private: `_request_in_progress`,
        `_handler_waiter`, `_request_factory`, `_paused`, `_drain_helper`,
        `finish_response`, and the answer's `_keep_alive`, `_body_length` and `_eof_sent`.
        """
        self._request_in_progress = True
        try:
            try:
                resp = await handling
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - aiohttp's: its 500 (handle_error, above)
                resp = self.handle_error(self._request_for(message, payload), 500, exc)
        finally:
            self._request_in_progress = False
            if self._handler_waiter is not None:
                self._handler_waiter.set_result(None)
        if type(resp) is not Answer:
            request = self._request_for(message, payload)
            try:
                return await self.finish_response(request, resp, start)
            finally:
                request._task = None  # type: ignore[assignment] # as `start` does
        transport = self.transport
        if transport is None or transport.is_closing():
            return resp, True  # StreamWriter refuses to write to a closing transport: the client left
        keep_alive = resp._keep_alive = not message.should_close
        data = resp.encode(message.version, keep_alive)
        transport.write(data)
        resp._body_length = len(data)
        if self._paused:  # as StreamWriter.drain after the write, and finish_response if the client leaves meanwhile
            try:
                await self._drain_helper()
            except ConnectionError:
                return resp, True
        resp._eof_sent = True
        return resp, False

    def _request_for(self, message: RawRequestMessage, payload: StreamReader) -> BaseRequest:
        """Make the Request aiohttp's `start` would have made for `message` (for an answer aiohttp writes)."""
        assert self._request_factory is not None
        return self._request_factory(message, payload, self, StreamWriter(self, self._loop),
                                     self._task_handler or asyncio.current_task(self._loop))  # type: ignore[arg-type]

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
