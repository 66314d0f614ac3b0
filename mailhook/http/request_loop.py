"""The connection's request loop: aiohttp's `RequestHandler.start`, copied to handle each request in its own task.

`RequestLoop` serves a connection's parsed requests one after the other, in
the connection's task rather than a Task per request, and answers those the
door takes itself (`Quick`: a notification's POST whose body came whole)
without a `Request` (`_quickly`). `mailhook.http.connection.Connection` adds
the caps and deadlines on top. The private names of aiohttp it relies on are
listed in `PRIVATE_NAMES` and checked by tests/test_http_connection.py; the
copied sources are pinned by tests/test_library_internals.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import StreamReader, web
from aiohttp.helpers import ceil_timeout
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.web_protocol import _PAYLOAD_ACCESS_ERROR, ERROR, RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from mailhook.http.answer import Answer

# aiohttp's private names this module relies on (checked by tests/test_http_connection.py):
#   RequestHandler.start         copied whole, each request handled in the connection's task (RequestLoop.start)
#   RequestHandler._waiter       the future start() awaits while no whole request head has arrived
#   RequestHandler._handle_request, RequestHandler.finish_response, StreamWriter.drain
#                                mirrored for a request the door takes itself, or called for its rarer answers
#                                (RequestLoop._quickly)
#   StreamResponse._eof_sent, StreamResponse._keep_alive, StreamResponse._body_length
#                                set on the 200 `_quickly` writes, as prepare and write_eof would
PRIVATE_NAMES = ("RequestHandler.start", "RequestHandler._waiter", "RequestHandler._handle_request",
                 "RequestHandler.finish_response", "StreamWriter.drain", "StreamResponse._eof_sent",
                 "StreamResponse._keep_alive", "StreamResponse._body_length")

# A door's own handling of a request as aiohttp parsed it (its message, body and the client's address, as
# `BaseRequest.remote` says it): the answer to await, or None to leave the request to aiohttp's path.
Quick = Callable[[RawRequestMessage, StreamReader, "str | None"], "Awaitable[web.StreamResponse] | None"]


class RequestLoop(RequestHandler):
    """aiohttp's per-connection protocol, each request served in the connection's task, `Quick` ones at once."""

    __slots__ = ("_quick", "_remote")

    def __init__(self, *args: object, quick: Quick | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # Offered each parsed request first (`start`); what it takes is answered without a Request (`_quickly`).
        self._quick = quick
        self._remote: str | None = None  # the client's address as `BaseRequest.remote` gives it, once connected

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
