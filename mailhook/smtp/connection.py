"""One SMTP connection: admitted under the session caps, bounded in time, junk and errors (`SessionBase`).

The base of the session's class (smtp/session.py's `Connection`, through the
command loop of smtp/command_loop.py): its state, its admission and release,
its reader, its idle and lifetime timers and its final replies. Every private
name of aiosmtpd or asyncio it relies on is listed in `PRIVATE_NAMES` or
`ASYNCIO_PRIVATE_NAMES` and checked by tests/test_library_internals.py; each
override carries a comment saying what it replaces and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP

from mailhook.smtp.reader import SessionReader

if TYPE_CHECKING:
    from mailhook.smtp.door import SmtpDoor
    from mailhook.smtp.handler import Handler

log = logging.getLogger("mailhook.smtp")

# aiosmtpd's private names this module relies on; tests/test_library_internals.py checks them against the installed
# aiosmtpd, and pyproject.toml caps it.
PRIVATE_NAMES = (
    "SMTP._reset_timeout", "SMTP._timeout_cb", "SMTP._timeout_handle", "SMTP._timeout_duration", "SMTP._writer",
)
# asyncio's private names `SessionBase.own_reader` relies on (the protocol's reference to its reader); checked by
# tests/test_library_internals.py.
ASYNCIO_PRIVATE_NAMES = ("StreamReaderProtocol._stream_reader_wr", "StreamReaderProtocol._strong_reader")

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


class SessionBase(SMTP):
    """A session's connection: admitted under the caps, its reader, its idle and lifetime timers, its goodbye.

    The state `Connection` (smtp/session.py) keeps its limits in: junk
    commands put the idle timer back (`junk_command`), a message being stored
    holds the timeouts and eviction off (`hold_timeout`), and a message
    accepted forgives errors, junk and overshoot (`accepted`).
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
        # is all it is: the idle timer reads it on every command (docs/performance-log.md, door-cut4).
        self.clock: Callable[[], float] = (
            time.monotonic if type(self.loop).time is asyncio.BaseEventLoop.time else self.loop.time)

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
