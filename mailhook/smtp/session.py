"""The SMTP session: aiosmtpd's `SMTP` subclass, the one place mailhook touches aiosmtpd's private names.

Every override of a private method (or read of a private attribute) is
listed in `PRIVATE_NAMES` and checked against the installed aiosmtpd by
tests/test_library_internals.py; each carries a comment saying what it replaces and why.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import weakref
from asyncio import selector_events
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex

from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, BOGUS_LIMIT, MISSING, SMTP, TLSSetupException, sanitized_log, syntax
from aiosmtpd.smtp import log as aiosmtpd_log

from mailhook.logs import logfmt
from mailhook.smtp.fastpath import PLAIN_ANGLE_ADDR, hook_names, plain_mail_options, read_body, unreadable_size
from mailhook.smtp.limits import UNFIT_TEXT

if TYPE_CHECKING:
    from mailhook.smtp.door import Handler, SmtpDoor

log = logging.getLogger("mailhook.smtp")

# aiosmtpd's private names this module relies on; tests/test_library_internals.py checks them against the installed
# aiosmtpd (and that smtp_DATA, copied into `Connection.smtp_DATA`, is still the version copied), and
# pyproject.toml caps it.
PRIVATE_NAMES = (
    "SMTP._getaddr", "SMTP._syntax_available", "SMTP._reset_timeout", "SMTP._timeout_cb",
    "SMTP._timeout_handle", "SMTP._timeout_duration", "SMTP._reader", "SMTP._writer",
    "SMTP._set_post_data_state", "SMTP._call_handler_hook", "SMTP._handle_client", "SMTP._proxy_timeout",
    "SMTP._enforce_call_limit", "SMTP._call_limit_default", "SMTP._call_limit_base", "SMTP._tls_handshake_okay",
    "SMTP._tls_protocol", "SMTP._smtp_methods", "SMTP._auth_required", "SMTP._decode_data",
)
# asyncio's private names `SessionReader` and `Connection.__init__` rely on (the StreamReader's state, which the
# reader's overrides keep as its own methods do, and the protocol's reference to its reader); checked by
# tests/test_library_internals.py, and the reader against asyncio's own by tests/test_smtp_reader.py.
ASYNCIO_PRIVATE_NAMES = (
    "StreamReader._buffer", "StreamReader._waiter", "StreamReader._eof", "StreamReader._exception",
    "StreamReader._limit", "StreamReader._paused", "StreamReader._transport", "StreamReader._loop",
    "StreamReaderProtocol._stream_reader_wr", "StreamReaderProtocol._strong_reader",
    "_SelectorSocketTransport._buffer", "_SelectorSocketTransport._closing",
)
# asyncio's plain TCP transport, whose write buffer and closing state `Connection.sent` reads directly.
SOCKET_TRANSPORT: Any = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]

SHUTTING_DOWN = b"421 4.3.2 Service shutting down, please try again later\r\n"
EVICTED = b"421 4.3.2 Too many connections; closing this session, which delivered no message lately\r\n"
SESSION_TIME = b"421 4.4.2 Session time limit reached, closing connection\r\n"
TOO_MUCH_JUNK = b"421 4.7.0 Too many commands without mail, closing connection\r\n"
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
TOO_MANY_AUTH_FAILURES = b"421 4.7.0 Too many authentication failures, closing connection\r\n"
RCPT_OVERSHOOT = "452 4.5.3 Too many recipients"
# Replies that refuse something, by prefix (all 5xx), and the reason `mailhook_rejected_total` counts them under.
REFUSALS = {"550 5.1.1": "recipient", "550 5.7.1": "sender", "552": "too_large", "535": "unauthorized",
            "530": "unauthenticated", "501 5.1.7": "bad_address", "501 5.1.3": "bad_address"}


# Overrides asyncio.StreamReader's feed_data, readuntil and readexactly, reading and setting its private state
# (`ASYNCIO_PRIVATE_NAMES`) exactly as asyncio's own methods do.
class SessionReader(asyncio.StreamReader):
    """asyncio's StreamReader with less Python per round trip: the same bytes, limits, flow control and errors.

    A session's every command and body is one round trip (four a message):
    the data arrives (`feed_data`, `_wakeup_waiter`), the read waits and
    wakes (`_wait_for_data`'s coroutine, the loop's `create_future`). Here
    `feed_data` wakes the reader itself, and `readuntil` and `readexactly`
    wait on their future themselves; everything else is asyncio's code,
    copied (docs/performance.md, smtp-proto7). aiosmtpd's STARTTLS (which
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
            try:
                self._transport.pause_reading()
            except NotImplementedError:
                self._transport = None
            else:
                self._paused = True

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


class Connection(SMTP):
    """One SMTP session: admitted under the session caps, bounded in time, junk, errors and AUTH failures.

    Commands that carry no mail (NOOP, RSET, HELP, VRFY, EXPN, a third
    HELO/EHLO) neither restart the idle timer nor count as progress, and only
    so many are answered; every 5xx reply counts as an error (delayed past the
    soft limit, the session closed at the hard limit), and so does every
    RCPT refused with 452 past max_recipients once more than
    max_recipient_overshoot were; a message accepted forgives all three, as in
    Postfix. The whole session ends at max_session_time.
    """

    def __init__(self, door: SmtpDoor, handler: Handler, **kwargs: Any) -> None:
        # RFC 5321 allows 1000 octets per line, but a notification email that
        # breaks it must still be stored rather than bounced, so accept long lines.
        self.line_length_limit = max(SMTP.line_length_limit, min(door.settings.max_message_size, 1 << 20))
        self.door = door
        self.peer_ip = "-"
        self.admitted = False
        self.ended = False  # a final reply was sent: nothing more is written
        self.storing = False  # a received message is being stored: never evicted, its reply still due
        self.expired = False  # the lifetime ran out while storing: close once the reply is sent
        self.last_progress = 0.0  # loop time of the last command that was not junk
        self.last_accepted = 0.0  # loop time of the last message accepted (the session's start before one)
        self.idle_deadline = 0.0
        self.rearmed_from = (0.0, 0.0)
        self.junk = 0
        self.greetings = 0
        self.errors = 0
        self.overshoot = 0  # RCPTs refused with 452 past max_recipients since the last message accepted
        self.failed_auths = 0
        self.auth_waited = False  # the current AUTH attempt already waited its address's penalty
        self.lifetime: asyncio.TimerHandle | None = None
        self.armed_for = 0.0  # the deadline the idle timer (`_timeout_handle`) was last armed for
        self.info_logged = True  # aiosmtpd's logger writes INFO lines, as the command loop last found it
        self.fed: SessionReader | None = None
        super().__init__(handler, **kwargs)
        self.own_reader()
        # The loop's clock, read without `BaseEventLoop.time`'s Python frame around `time.monotonic` where that
        # is all it is: the idle timer reads it on every command (docs/performance.md).
        self.clock: Callable[[], float] = (
            time.monotonic if type(self.loop).time is asyncio.BaseEventLoop.time else self.loop.time)

    def __dir__(self) -> list[str]:
        """List only the commands and AUTH mechanisms.

        aiosmtpd finds them with dir() and inspect.getmembers() on every new
        connection; over all its attributes that was much of setting one up (docs/performance.md).
        """
        return hook_names(type(self))

    # Private override: SMTP._getaddr (MAIL/RCPT argument parsing), for speed; falls back to it for anything not plain.
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split MAIL/RCPT's argument into address and parameters, plainly when the address is plain.

        aiosmtpd runs the full RFC 5322 parser (and defines a class) on every
        call (docs/performance.md); a plain `<local@domain>` is returned as that parser would.
        """
        match = PLAIN_ANGLE_ADDR.match(arg)
        if match is None or "=?" in arg:
            return super()._getaddr(arg)
        rest = arg[match.end():]
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()
        address = match.group(1)
        if rest.startswith("(") or (self.local_part_limit and address.rindex("@") > self.local_part_limit):
            return super()._getaddr(arg)
        return address, rest

    # Private override: SMTP._syntax_available (which commands HELP lists), to hide AUTH when it is not offered.
    def _syntax_available(self, method: Any) -> bool:
        """Leave AUTH out of HELP when no password file is configured, as EHLO does."""
        if getattr(method, "__name__", "") == "smtp_AUTH" and self.door.passwords is None:
            return False
        return bool(super()._syntax_available(method))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit or refuse a new connection; after STARTTLS, just switch transports."""
        if self.admitted:
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else "-"
        refusal = self.door.admit(self)
        if refusal is not None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(refusal)
            transport.close()
            return
        self.admitted = True
        self.last_accepted = self.loop.time()
        self.lifetime = self.loop.call_later(self.door.settings.max_session_time, self._lifetime_over)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Release the session's place under the caps."""
        if self.admitted:
            if self.lifetime is not None:
                self.lifetime.cancel()
            self.door.release(self)
            super().connection_lost(error)
            # As StreamReaderProtocol drops its reader: nothing is fed after the loss (its data_received again).
            self.fed = None
            self.__dict__.pop("data_received", None)
            self.armed_for = 0.0  # aiosmtpd cancelled the idle timer: the next `_reset_timeout` arms a new one

    # Closes the private SMTP._writer, as aiosmtpd's command loop does when its session is cancelled.
    def eof_received(self) -> bool | None:
        """End the session at the client's EOF, as aiosmtpd does, closing the connection now if a message is stored.

        aiosmtpd cancels the session, whose end closes the connection; a
        session awaiting its message's store (`StoreOutcome`) is cancelled
        only once the store is done, so the connection closes here instead,
        and the session leaves the caps when its client left, as before.
        """
        keep_open = super().eof_received()
        if self.storing and self.transport is not None:
            self._writer.close()  # as the cancelled session's command loop does
        return keep_open

    # Sets the private StreamReaderProtocol._stream_reader_wr and _strong_reader, as its __init__ sets them.
    def own_reader(self) -> None:
        """Read through a `SessionReader` instead of the StreamReader aiosmtpd's __init__ made, with the same limit.

        Set as StreamReaderProtocol.__init__ sets its reader (a weak reference,
        and a strong one until connection_made); `fed` is the reader data
        arrives for until the connection is lost. The transport's data goes
        straight to the reader's `feed_data`, this session's `data_received`
        until then: StreamReaderProtocol's reaches the same reader through its
        weak reference, two Python calls more per round trip.
        """
        reader = self.fed = SessionReader(self.line_length_limit, self.loop)
        self._stream_reader_wr = weakref.ref(reader)
        self._strong_reader = reader
        self.data_received = reader.feed_data  # type: ignore[method-assign]

    def hold_timeout(self) -> None:
        """Hold off the idle/DATA timeout while a received message is being stored (see `_timeout_cb`).

        The timer itself stays armed: cancelling it here cost a new TimerHandle
        (and heap entry) per message when `smtp_DATA` restarted it after the reply.
        """
        self.storing = True

    def accepted(self) -> None:
        """Forgive the session's errors, junk commands and recipient overshoot once a message is accepted.

        As Postfix does; the time is what eviction at the caps looks at.
        """
        self.errors = self.junk = self.overshoot = 0
        self.last_accepted = self.clock()

    def recipient_overshoot(self) -> None:
        """Count a RCPT refused past max_recipients; past max_recipient_overshoot its 452 counts as an error."""
        self.overshoot += 1

    # Private override: SMTP._reset_timeout (run before every recognised command), to let junk commands undo it;
    # reads SMTP._timeout_duration (the configured idle timeout).
    def _reset_timeout(self, duration: float | None = None) -> None:
        """Restart the idle (or DATA) timer, remembering the one before so that a junk command can put it back.

        Overridden because aiosmtpd restarts the timer before running every
        command it recognises, whatever the command; see `junk_command`.
        """
        self.rearmed_from = (self.idle_deadline, self.last_progress)
        self.last_progress = self.clock()
        self.idle_deadline = self.last_progress + (duration or self._timeout_duration)
        # aiosmtpd cancels the timer and schedules a new one for every command (5 per message, each a
        # heap entry): a timer still armed for no later than the new deadline is kept instead, and
        # `_timeout_cb` re-arms it for the rest of the time when it fires early. `armed_for` is the
        # handle's `when()`, kept here: every handle is armed by this class (`_arm`).
        # `armed_for` is also the handle's state without asking it (`cancelled()`, a Python call per command):
        # only aiosmtpd's connection_lost cancels it without re-arming, and `connection_lost` below zeroes it.
        if self.last_progress < self.armed_for <= self.idle_deadline:
            return
        handle = self._timeout_handle
        if handle is not None:
            handle.cancel()
        self._arm(self.idle_deadline)

    # Sets the private SMTP._timeout_handle (the idle timer) with SMTP._timeout_cb, as aiosmtpd's _reset_timeout does.
    def _arm(self, deadline: float) -> None:
        """Arm the idle timer for `deadline` (loop time), remembering it in `armed_for`."""
        self.armed_for = deadline
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)

    # Re-arms the private SMTP._timeout_handle with SMTP._timeout_cb, as _reset_timeout does, at the old deadline.
    def junk_command(self) -> bool:
        """Count a command that carries no mail; True when that was one too many and the session is closed.

        The idle timer aiosmtpd restarted for it is put back, so NOOPs (or
        RSETs...) cannot keep a session open past the idle timeout.
        """
        self.idle_deadline, self.last_progress = self.rearmed_from
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._arm(self.idle_deadline)
        self.junk += 1
        if self.junk <= self.door.settings.max_junk_commands:
            return False
        log.info("closing session peer=%s: more than %d commands without mail", self.peer_ip,
                 self.door.settings.max_junk_commands)
        self.door.runtime.metrics.on_rejected("smtp", "junk_commands")
        self.say_goodbye(TOO_MUCH_JUNK)
        return True

    def _lifetime_over(self) -> None:
        if self.storing:  # the message's reply is sent first (see smtp_DATA)
            self.expired = True
            return
        log.info("closing session peer=%s: session time limit reached", self.peer_ip)
        self.door.runtime.metrics.on_rejected("smtp", "session_time")
        self.say_goodbye(SESSION_TIME)

    def evict(self) -> None:
        """Close this session to make room for a new one."""
        log.info("closing session peer=%s: no message accepted for %.0f s, its place given to a new connection",
                 self.peer_ip, self.loop.time() - self.last_accepted)
        self.door.runtime.metrics.on_rejected("smtp", "evicted")
        self.say_goodbye(EVICTED)

    def in_transaction(self) -> bool:
        """Say whether the client has started a mail transaction (MAIL accepted)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def say_goodbye(self, reply: bytes) -> None:
        """Send a final reply and close the connection."""
        self.ended = True
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply)
            transport.close()

    # Writes to the session's transport, the one aiosmtpd's push writes to through the private SMTP._writer:
    # aiosmtpd's connection_made switches both together at STARTTLS (checked by tests/test_library_internals.py);
    # reads asyncio's socket transport's private _buffer and _closing as its methods do (`ASYNCIO_PRIVATE_NAMES`).
    def sent(self, status: str) -> bool:
        """Send a reply that is no refusal as `push` would, without its coroutine; False (nothing sent) if not one.

        The door's own MAIL, RCPT and DATA answer through this (four replies per
        message). False for what `push` does more than write: a 5xx or a 452
        past the recipient overshoot (counted), or an empty write buffer not to
        be had (unsent bytes, a closing transport: `push` awaits `drain()`). A
        reply written to an empty buffer cannot fill it past its high-water
        mark, so the `drain()` push would await after it returns at once.
        """
        if self.ended:
            return True  # as push: nothing more is written
        if status[:1] == "5" or (status.startswith(RCPT_OVERSHOOT)
                                 and self.overshoot > self.door.settings.max_recipient_overshoot):
            return False
        # The transport itself, not the StreamWriter's `transport` property and `write` around it (two Python
        # calls per reply); None once the connection is lost, where push writes and raises as before.
        transport: Any = self.transport
        if transport is None:
            return False
        if type(transport) is SOCKET_TRANSPORT:
            # asyncio's socket transport (not TLS's): its `get_write_buffer_size()` and `is_closing()` are these two
            # reads, two Python calls less per reply.
            if transport._buffer or transport._closing:
                return False
        elif transport.get_write_buffer_size() or transport.is_closing():
            return False
        transport.write(status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n")
        return True

    # Reads the private SMTP._writer (the session's StreamWriter), as aiosmtpd's push does.
    async def push(self, status: Any) -> None:
        """Send a reply, counting refusals in the metrics and errors against the session's error limits."""
        if self.ended:
            return
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        settings = self.door.settings
        # A 452 for one recipient too many is no error, but past the overshoot limit each one is
        # (Postfix's smtpd_recipient_overshoot_limit): pipelined or slow RCPT loops end at the hard limit.
        overshot = text.startswith(RCPT_OVERSHOOT) and self.overshoot > settings.max_recipient_overshoot
        if not text.startswith("5") and not overshot:
            # aiosmtpd's push, written directly (four replies per message): the same bytes, and
            # `drain()` (two coroutines deep) only when there is something to wait for: unsent
            # bytes (the client reads slowly) or a closing transport (it raises as aiosmtpd's would).
            writer = self._writer
            writer.write(status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n"
                         if isinstance(status, str) else status + b"\r\n")
            transport = writer.transport
            if transport.get_write_buffer_size() or transport.is_closing():
                await writer.drain()
            return
        for prefix, reason in REFUSALS.items():  # every refusal counted is a 5xx
            if text.startswith(prefix):
                self.door.runtime.metrics.on_rejected("smtp", reason)
        self.errors += 1
        if self.errors > settings.soft_error_limit and settings.error_sleep_time:
            await asyncio.sleep(settings.error_sleep_time)  # Postfix's tarpit: slows a client that errs on
            if self.transport is None or self.transport.is_closing():
                return
        await super().push(status)
        if self.errors >= settings.hard_error_limit:
            log.info("closing session peer=%s: %d errors", self.peer_ip, self.errors)
            self.door.runtime.metrics.on_rejected("smtp", "errors")
            self.say_goodbye(TOO_MANY_ERRORS)

    async def check_password(self, check: Callable[[str, str], bool], user: str, password: str) -> bool:
        """Check a password, first waiting the address's penalty if it failed lately.

        Waiting before the (costly) check, not only before the 535, means that
        guesses sent in parallel cannot make the door hash any faster; the
        check itself runs off the event loop, one per address at a time and
        smtp.max_auth_checks in all (`AuthChecks`).
        """
        delay = self.door.auth_penalty.pending(self.peer_ip, self.loop.time())
        self.auth_waited = delay > 0
        if delay:
            await asyncio.sleep(delay)  # on the event loop's clock: other sessions go on meanwhile
        return await self.door.auth_checks.run(self.peer_ip, check, user, password)

    async def failed_auth(self, mechanism: str, user: str) -> None:
        """Log a failed AUTH and, unless it waited before the check, wait the address's growing penalty now."""
        self.failed_auths += 1
        delay, count = self.door.auth_penalty.failed(self.peer_ip, self.loop.time())
        log.warning("auth failed peer=%s mechanism=%s user=%s failures=%d address_failures=%d delay=%.1fs",
                    self.peer_ip, logfmt(mechanism), logfmt(user), self.failed_auths, count, delay)
        waited, self.auth_waited = self.auth_waited, False
        if not waited:
            await asyncio.sleep(delay)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH, closing the connection after too many failures on it."""
        await super().smtp_AUTH(arg)
        if self.session is not None and self.session.authenticated:
            self.door.auth_penalty.forgive(self.peer_ip)
        elif self.failed_auths >= self.door.settings.max_auth_failures:
            log.warning("closing session peer=%s: %d failed AUTH attempts", self.peer_ip, self.failed_auths)
            self.say_goodbye(TOO_MANY_AUTH_FAILURES)

    async def _greeting(self, hostname: str) -> bool:
        """Check a HELO/EHLO name; True when the command was answered (refused, or over the junk cap)."""
        if hostname and UNFIT_TEXT.search(hostname):
            await self.push("501 5.5.2 Invalid host name: not UTF-8 or holds a control character")
            return True
        self.greetings += 1
        # One greeting, and one more after STARTTLS, are the protocol; any more carry no mail.
        return self.greetings > 2 and self.junk_command()

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        """aiosmtpd's HELO, refusing names that are not text, and counted as junk past the second greeting."""
        if not await self._greeting(hostname):
            await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        """aiosmtpd's EHLO, refusing names that are not text, and counted as junk past the second greeting."""
        if not await self._greeting(hostname):
            await super().smtp_EHLO(hostname)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        """aiosmtpd's NOOP, counted as junk."""
        if not self.junk_command():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        """aiosmtpd's RSET, counted as junk."""
        if not self.junk_command():
            await super().smtp_RSET(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        """aiosmtpd's HELP, counted as junk."""
        if not self.junk_command():
            await super().smtp_HELP(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        """aiosmtpd's VRFY, counted as junk."""
        if not self.junk_command():
            await super().smtp_VRFY(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        """aiosmtpd's EXPN (not implemented: 502), counted as junk."""
        if not self.junk_command():
            await super().smtp_EXPN(arg)

    # Private override: SMTP._handle_client (the command loop), a copy of aiosmtpd's with three changes, for speed:
    # its two log lines per command (`sanitized_log`, which builds a list and runs a regex on the line before the
    # logger looks at its level) are made only when aiosmtpd's logger would write them (one level check per
    # command when it would write neither, as mail.log is at ERROR), DATA does not restart
    # the idle timer, since `smtp_DATA` restarts it with the DATA timeout at once, and the command and its
    # argument are decoded by `bytes.decode` with positional arguments. Reads the private
    # SMTP._proxy_timeout, _enforce_call_limit, _call_limit_default, _call_limit_base, _tls_handshake_okay,
    # _tls_protocol, _smtp_methods, _reader and _writer as the original does; tests/test_library_internals.py
    # fails when the original changes.
    async def _handle_client(self) -> None:
        """aiosmtpd's command loop, without its disabled log lines' cost and DATA's extra timer restart."""
        from aiosmtpd.proxy_protocol import get_proxy

        assert self.session is not None
        log = aiosmtpd_log
        log.info('%r handling connection', self.session.peer)

        if self._proxy_timeout is not None:
            self._reset_timeout(self._proxy_timeout)
            log.debug("%r waiting PROXY handshake", self.session.peer)
            self.session.proxy_data = await get_proxy(self._reader)
            if self.session.proxy_data:
                log.info("%r valid PROXY handshake", self.session.peer)
                status = await self._call_handler_hook("PROXY", self.session.proxy_data)
                log.debug("%r handle_PROXY returned %r", self.session.peer, status)
            else:
                log.warning("%r invalid PROXY handshake", self.session.peer)
                status = False
            if status is MISSING or not status:
                log.info("%r rejected by handle_PROXY", self.session.peer)
                assert self.transport is not None
                self.transport.close()
                return
            self._reset_timeout()

        await self.push(f'220 {self.hostname} {self.__ident__}')
        call_limit: dict[str, int]
        if self._enforce_call_limit:
            call_limit = collections.defaultdict(lambda: self._call_limit_default, self._call_limit_base)
        else:
            call_limit = {}
        bogus_budget = BOGUS_LIMIT

        while self.transport is not None:
            try:
                try:
                    line: bytes = await self._reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # Line too long. Read until end of line before sending 500.
                    await self._reader.read(error.consumed)
                    while True:
                        try:
                            await self._reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as e:
                            # Line is even longer...
                            await self._reader.read(e.consumed)
                            continue
                    await self.push('500 Command line too long')
                    continue
                # One level check per command when neither line is written: DEBUG is enabled only where INFO is.
                # Kept for the command's own INFO line (`info_logged`), made before the command's first await.
                self.info_logged = log.isEnabledFor(logging.INFO)
                if self.info_logged:
                    if log.isEnabledFor(logging.DEBUG):
                        sanitized_log(log.debug, '_handle_client readline: %r', line)
                    line = line.rstrip(b'\r\n')
                    sanitized_log(log.info, '%r >> %r', self.session.peer, line)
                else:
                    line = line.rstrip(b'\r\n')
                if not line:
                    await self.push('500 Error: bad syntax')
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                # bytes.decode with positional arguments, not aiosmtpd's str(..., encoding=, errors=): the same
                # text or UnicodeDecodeError, ~2 k instructions less a call (the keywords' parsing; counted alone).
                try:
                    command = command_bytes.upper().decode('ascii')
                except UnicodeDecodeError:
                    await self.push('500 Error: bad syntax')
                    continue
                arg: str | None
                if not arg_bytes:
                    arg = None
                else:
                    arg_bytes = arg_bytes.strip()
                    if self.enable_SMTPUTF8:
                        arg = arg_bytes.decode('utf-8', 'surrogateescape')
                    else:
                        try:
                            arg = arg_bytes.decode('ascii')
                        except UnicodeDecodeError:
                            await self.push('500 Error: strict ASCII mode')
                            continue
                max_sz = (
                    self.command_size_limits[command]
                    if self.session.extended_smtp
                    else self.command_size_limit
                )
                if len(line) > max_sz:
                    await self.push('500 Command line too long')
                    continue
                if not self._tls_handshake_okay and command != 'QUIT':
                    await self.push('554 Command refused due to lack of security')
                    continue
                if (self.require_starttls
                        and not self._tls_protocol
                        and command not in ALLOWED_BEFORE_STARTTLS):
                    await self.push('530 Must issue a STARTTLS command first')
                    continue

                if self._enforce_call_limit:
                    budget = call_limit[command]
                    if budget < 1:
                        log.warning("%r over limit for %s", self.session.peer, command)
                        await self.push(f"421 4.7.0 {command} sent too many times")
                        self.transport.close()
                        continue
                    call_limit[command] = budget - 1

                method = self._smtp_methods.get(command)
                if method is None:
                    log.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        log.warning("%r too many bogus commands", self.session.peer)
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue

                # Received a valid command, reset the timer (DATA: smtp_DATA does, with the DATA timeout).
                if command != "DATA":
                    self._reset_timeout()
                await method(arg)
            except asyncio.CancelledError:
                # The connection got reset during the DATA command.
                log.info('%r Connection lost during _handle_client()', self.session.peer)
                self._writer.close()
                raise
            except ConnectionResetError:
                log.info('%r Connection lost during _handle_client()', self.session.peer)
                self._writer.close()
                raise
            except Exception as error:  # noqa: BLE001 (as aiosmtpd: every error is answered, by handle_exception)
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner_error:  # noqa: BLE001 (as aiosmtpd)
                    try:
                        log.exception('%r Exception in handle_exception()', self.session.peer)
                        status = f'500 Error: ({inner_error.__class__.__name__}) {inner_error}'
                    except Exception:  # noqa: BLE001 (as aiosmtpd)
                        status = '500 Error: Cannot describe error'
                finally:
                    if isinstance(error, TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)

    # Private override: SMTP._timeout_cb (the idle timer's callback), to log, count and send a 421 before closing.
    def _timeout_cb(self) -> None:
        now = self.clock()
        if now < self.idle_deadline:  # armed for an earlier deadline (see _reset_timeout)
            self._arm(self.idle_deadline)
            return
        if self.storing:  # no timeout while a message is stored: looked at again later, restarted after its reply
            self._arm(now + self._timeout_duration)
            return
        log.info("timeout peer=%s", self.peer_ip)
        self.door.runtime.metrics.on_rejected("smtp", "timeout")
        self.say_goodbye(b"421 4.4.2 Timeout, closing connection\r\n")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """Start a transaction, unless the server is stopping."""
        if self.door.closing:
            self.say_goodbye(SHUTTING_DOWN)
            return
        plain = self._plain_address(arg, "FROM:")
        taken: tuple[list[str], bool] | None = None
        if plain is not None and self.envelope is not None and not self.envelope.mail_from:
            taken = self._plain_mail_options(plain[1]) if plain[1] else ([], False)
        if taken is None:
            await self._general_mail(arg)
            return
        assert plain is not None and self.envelope is not None and self.session is not None
        address, (options, utf8) = plain[0], taken
        # aiosmtpd's MAIL for its common case (greeted, authenticated if need be, `FROM:<plain address>`
        # with no parameters or only those it takes: SIZE within the limit, BODY, SMTPUTF8) in one
        # coroutine instead of four: the same steps, envelope, hook, log line and reply.
        self.envelope.smtp_utf8 = utf8
        # The hook's answer without its coroutine (`Handler.mail`, which handle_MAIL returns), sent likewise.
        status = self.event_handler.mail(self, self.envelope, address, options)
        if self.info_logged:  # checked by the command loop earlier in this step: the logger's level is the same
            aiosmtpd_log.info("%r sender: %s", self.session.peer, address)
        if not self.sent(status):
            await self.push(status)

    async def _general_mail(self, arg: str | None) -> None:
        """aiosmtpd's own MAIL, except that a SIZE its method would fail to read gets its syntax error."""
        if arg and self._refuses_unreadable_size(arg):
            await self.push("501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")
            return
        await super().smtp_MAIL(arg)

    # Reads the private SMTP._auth_required, as aiosmtpd's check_auth_needed does.
    def _refuses_unreadable_size(self, arg: str) -> bool:
        """Say whether MAIL gets aiosmtpd's syntax error for a SIZE its method would fail to read (`unreadable_size`).

        Only where aiosmtpd's method would reach that SIZE: after EHLO (parameters
        after HELO are a syntax error already), authenticated if AUTH is required.
        """
        session = self.session
        if session is None or not session.extended_smtp or (self._auth_required and not session.authenticated):
            return False
        return unreadable_size(arg)

    # Reads the private SMTP._decode_data (whether aiosmtpd reads a BODY parameter), as its smtp_MAIL does.
    def _plain_mail_options(self, rest: str) -> tuple[list[str], bool] | None:
        """Return MAIL's parameters and SMTPUTF8 as aiosmtpd's smtp_MAIL would take them; None if it would not.

        None also for anything it takes that is not the common case (see
        `plain_mail_options`): aiosmtpd's method answers those.
        """
        assert self.session is not None
        if not self.session.extended_smtp:  # parameters after HELO: aiosmtpd's syntax error
            return None
        return plain_mail_options(rest, self.data_size_limit or 0, not self._decode_data, self.enable_SMTPUTF8)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        """Add a recipient, as aiosmtpd does; its common case without its checks' extra coroutines."""
        plain = self._plain_address(arg, "TO:")
        if plain is None or plain[1] or self.envelope is None or not self.envelope.mail_from:
            await super().smtp_RCPT(arg)
            return
        assert self.session is not None
        # aiosmtpd's RCPT for `TO:<plain address>` without parameters (it refuses them all), as for MAIL above.
        address = plain[0]
        status = self.event_handler.rcpt(self, self.envelope, address, [])
        if self.info_logged:  # as for MAIL
            aiosmtpd_log.info("%r recip: %s", self.session.peer, address)
        if not self.sent(status):
            await self.push(status)

    # Reads the private SMTP._auth_required, as aiosmtpd's check_auth_needed does.
    def _plain_address(self, arg: str | None, keyword: str) -> tuple[str, str] | None:
        """Return MAIL's or RCPT's address and what follows it, when aiosmtpd's checks would all pass.

        That is: the session greeted, authenticated if AUTH is required, and
        `arg` is `keyword` then an address `_getaddr` reads. None sends the
        command through aiosmtpd's own method.
        """
        session = self.session
        if arg is None or session is None or not session.host_name:
            return None
        if self._auth_required and not session.authenticated:  # read as check_auth_needed reads it
            return None
        if arg[:len(keyword)].upper() != keyword:
            return None
        address, rest = self._getaddr(arg[len(keyword):].strip())
        return (address, rest or "") if address else None

    # A copy of aiosmtpd's SMTP.smtp_DATA under the DATA timeout, with the body read by `read_body` (bounded, one
    # pass) instead of its line loop, and its greeting and AUTH checks awaited only when one can fail (read from the
    # private SMTP._auth_required, as check_auth_needed reads it), its replies sent by `sent` when no coroutine is
    # needed and its DATA hook called directly, not through SMTP._call_handler_hook; reads the private
    # SMTP._reader/_writer and calls SMTP._set_post_data_state as the original does. One coroutine, not the
    # timeout's and the copy's apart (docs/performance.md). tests/test_library_internals.py fails when the original
    # changes.
    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA with the body read by `read_body`, under the DATA timeout, then the idle timeout again."""
        self._reset_timeout(self.door.settings.data_timeout)
        session = self.session
        assert session is not None and self.envelope is not None
        try:
            # The two checks' coroutines only when one can fail (greeting missing, AUTH required and not done).
            if (not session.host_name or (self._auth_required and not session.authenticated)) and (
                await self.check_helo_needed() or await self.check_auth_needed("DATA")
            ):
                pass
            elif not self.envelope.rcpt_tos:
                await self.push("503 Error: need RCPT command")
            elif arg:
                await self.push("501 Syntax: DATA")
            else:
                if not self.sent("354 End data with <CR><LF>.<CR><LF>"):
                    await self.push("354 End data with <CR><LF>.<CR><LF>")
                # The message's bytes count in the server's in-flight budget from arrival until its reply: given
                # back by `close()` as the hold's `__exit__` would (no `with`: two Python calls less per message).
                hold = self.door.runtime.inflight.hold()
                try:
                    try:
                        content, refusal = await read_body(self._reader, self.line_length_limit,
                                                           self.data_size_limit or 0, hold)
                    except asyncio.CancelledError:  # the connection was lost meanwhile
                        self._writer.close()
                        raise
                    status: str | None = None
                    if refusal is not None:
                        if hold.refused:
                            self.door.runtime.metrics.on_rejected("smtp", "busy")
                            self.door.runtime.inflight.refused("smtp", self.peer_ip, hold.received)
                        await self.push(refusal)
                    else:
                        self.envelope.content = self.envelope.original_content = content
                        del content
                        # The hook called directly, as `_call_handler_hook("DATA")` calls it (one coroutine less):
                        # mailhook's handlers define handle_DATA, so aiosmtpd's MISSING cannot come of it.
                        status = await self.event_handler.handle_DATA(self, session, self.envelope)
                    self._set_post_data_state()  # type: ignore[no-untyped-call]
                finally:
                    hold.close()
                if status is not None and not self.sent(status):
                    await self.push(status)
        finally:
            self.storing = False
        self._reset_timeout()
        if self.door.closing:
            self.say_goodbye(SHUTTING_DOWN)
        elif self.expired:
            self._lifetime_over()
