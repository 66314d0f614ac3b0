"""The session's reader: asyncio's StreamReader with less Python per round trip (`SessionReader`).

One of the session's modules (with smtp/connection.py, smtp/command_loop.py,
smtp/mail_rcpt.py and smtp/session.py) that touch asyncio's private names: those it reads and sets are
listed in `ASYNCIO_PRIVATE_NAMES` and checked by tests/test_library_internals.py,
and the reader against asyncio's own by tests/test_smtp_reader.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import Any, SupportsIndex

# asyncio's private names `SessionReader` relies on: the StreamReader's state, which its overrides keep as its own
# methods do; checked by tests/test_library_internals.py, and the reader against asyncio's own by
# tests/test_smtp_reader.py.
ASYNCIO_PRIVATE_NAMES = (
    "StreamReader._buffer", "StreamReader._waiter", "StreamReader._eof", "StreamReader._exception",
    "StreamReader._limit", "StreamReader._paused", "StreamReader._transport", "StreamReader._loop",
)


# Overrides asyncio.StreamReader's feed_data, readuntil and readexactly, reading and setting its private state
# (`ASYNCIO_PRIVATE_NAMES`) exactly as asyncio's own methods do.
class SessionReader(asyncio.StreamReader):
    """asyncio's StreamReader with less Python per round trip: the same bytes, limits, flow control and errors.

    A session's every command and body is one round trip (four a message):
    the data arrives (`feed_data`, `_wakeup_waiter`), the read waits and
    wakes (`_wait_for_data`'s coroutine, the loop's `create_future`). Here
    `feed_data` wakes the reader itself, and `readuntil` and `readexactly`
    wait on their future themselves; everything else is asyncio's code,
    copied (docs/performance-log.md, smtp-proto7). aiosmtpd's STARTTLS (which
    switches the reader's transport) and AUTH (`readline`) use it as they
    used asyncio's.
    """

    # asyncio's own attributes, which typeshed does not declare.
    _buffer: bytearray
    _waiter: asyncio.Future[None] | None
    _eof: bool
    _exception: BaseException | None
    _limit: int
    _paused: bool
    _transport: Any  # a transport, or None before the connection and where it cannot pause

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        # The waiter without `BaseEventLoop.create_future`'s Python frame where that is all it is.
        self.new_future: Callable[[], asyncio.Future[None]] = (
            functools.partial(asyncio.Future, loop=loop)
            if type(loop).create_future is asyncio.BaseEventLoop.create_future else loop.create_future)

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        """Add received bytes, waking a waiting read; pause the transport past twice the limit, as asyncio does."""
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        buffer = self._buffer
        buffer.extend(data)
        waiter = self._waiter
        if waiter is not None:  # asyncio's _wakeup_waiter, without its call
            self._waiter = None
            if not waiter.cancelled():
                waiter.set_result(None)
        if self._transport is not None and not self._paused and len(buffer) > 2 * self._limit:
            self._pause()

    def feed_quietly(self, data: bytes) -> None:
        """Add received bytes without waking a waiting read (`wake` does, later); flow control as `feed_data`'s.

        For what arrives while the session answers a message itself
        (smtp/body_at_once.py): the waiting read must not take it before that
        message's reply is written.
        """
        buffer = self._buffer
        buffer.extend(data)
        if self._transport is not None and not self._paused and len(buffer) > 2 * self._limit:
            self._pause()

    def _pause(self) -> None:
        """Pause the transport's reading (the buffer is past twice the limit), as asyncio's `feed_data` does."""
        try:
            self._transport.pause_reading()
        except NotImplementedError:
            self._transport = None
        else:
            self._paused = True

    def wake(self) -> None:
        """Wake a waiting read if bytes are buffered (fed by `feed_quietly`), as `feed_data` would have."""
        waiter = self._waiter
        if waiter is not None and self._buffer:
            self._waiter = None
            if not waiter.cancelled():
                waiter.set_result(None)

    def interrupt(self, signal: Exception) -> bool:
        """Raise `signal` in the waiting read (`readuntil`, `readexactly`); False if none waits.

        The reader's own state is untouched (unlike `set_exception`): the next
        read goes on as before.
        """
        waiter = self._waiter
        if waiter is None or waiter.done():
            return False
        self._waiter = None
        waiter.set_exception(signal)
        return True

    # typeshed types the separator by a private protocol (any sized bytes-like object); sessions pass bytes.
    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        """Read through `separator`, as asyncio's readuntil does (the same limit, LimitOverrunError, EOF)."""
        seplen = len(separator)
        if seplen == 0:
            raise ValueError("Separator should be at least one-byte string")
        if self._exception is not None:
            raise self._exception
        offset = 0
        while True:
            buffer = self._buffer
            buflen = len(buffer)
            if buflen - offset >= seplen:
                isep = buffer.find(separator, offset)
                if isep != -1:
                    break
                offset = buflen + 1 - seplen
                if offset > self._limit:
                    raise asyncio.LimitOverrunError("Separator is not found, and chunk exceed the limit", offset)
            if self._eof:
                chunk = bytes(buffer)
                buffer.clear()
                raise asyncio.IncompleteReadError(chunk, None)
            waiter = self._waiter_for("readuntil")  # outside the try: a second read leaves the first waiting
            try:
                await waiter
            finally:
                self._waiter = None
        if isep > self._limit:
            raise asyncio.LimitOverrunError("Separator is found, but chunk is longer than limit", isep)
        return self._take(isep + seplen)

    async def readexactly(self, n: int) -> bytes:
        """Read exactly `n` bytes, as asyncio's readexactly does (IncompleteReadError at EOF)."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        while len(self._buffer) < n:
            if self._eof:
                incomplete = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(incomplete, n)
            waiter = self._waiter_for("readexactly")  # outside the try: a second read leaves the first waiting
            try:
                await waiter
            finally:
                self._waiter = None
        return self._take(n)

    def _waiter_for(self, reading: str) -> asyncio.Future[None]:
        """Return the future `feed_data` resolves, resuming a paused transport: asyncio's _wait_for_data, no coroutine.

        A plain call where asyncio awaits a coroutine of its own per wait (the
        caller has checked the EOF, and clears `_waiter` once awakened).
        """
        if self._waiter is not None:
            raise RuntimeError(f"{reading}() called while another coroutine is already waiting for incoming data")
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        waiter = self._waiter = self.new_future()
        return waiter

    def _take(self, end: int) -> bytes:
        """Remove and return the buffer's first `end` bytes, resuming a paused transport as asyncio does."""
        buffer = self._buffer
        if end == len(buffer):  # all of it (a command, a body in one piece): no slice
            chunk = bytes(buffer)
            buffer.clear()
        else:
            chunk = bytes(buffer[:end])
            del buffer[:end]
        if self._paused and len(buffer) <= self._limit:  # asyncio's _maybe_resume_transport
            self._paused = False
            self._transport.resume_reading()
        return chunk
