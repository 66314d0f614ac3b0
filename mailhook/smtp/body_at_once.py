"""DATA and its body answered as they arrive (`BodyAtOnce`): the 354, the store and its reply without a task step.

A client that waits for each reply sends DATA alone, then the whole body
(an email of a few KB arrives in one read). smtp/mail_rcpt.py answers a lone
MAIL or RCPT where it arrives (`answer_at_once`); `BodyAtOnce` does the same
for DATA: its 354 is sent there, and a body that arrives whole, with nothing
after its end and short of every limit, is stored from there
(`Handler.store`), its reply written as the store's outcome is settled, in
the same loop turn (`Outcome.then`). The
session's task waits in its command loop's read throughout. Anything else (a
body in pieces, bytes after its end, a body near a limit or past the
in-flight budget, a reply that cannot be written at once, a cancelled store)
is handed on to the command loop (`HandedOver`), which reads and answers it
exactly as `Connection.smtp_DATA` does. The private names of aiosmtpd and
asyncio it relies on are listed in `PRIVATE_NAMES` and
`ASYNCIO_PRIVATE_NAMES` and checked by tests/test_library_internals.py.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from mailhook.smtp.command_loop import SOCKET_TRANSPORT, HandedOver
from mailhook.smtp.connection import SHUTTING_DOWN
from mailhook.smtp.fastpath import whole_body
from mailhook.smtp.mail_rcpt import MailAndRcpt

if TYPE_CHECKING:
    from mailhook.budget import InflightHold
    from mailhook.smtp.handler import StoreOutcome

# aiosmtpd's private names this module relies on; tests/test_library_internals.py checks them against the installed
# aiosmtpd, and pyproject.toml caps it.
PRIVATE_NAMES = ("SMTP._reset_timeout", "SMTP._set_post_data_state", "SMTP._auth_required")
# asyncio's private names `BodyAtOnce.stored_at_once` reads (the socket transport's write buffer and closing state,
# as `sent` reads them); checked by tests/test_library_internals.py.
ASYNCIO_PRIVATE_NAMES = ("_SelectorSocketTransport._buffer", "_SelectorSocketTransport._closing")

GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"


class BodyAtOnce(MailAndRcpt):
    """The session's DATA answered as it arrives where it can be: its 354, its whole body's store and reply."""

    body_due = False  # a 354 was sent at once: the next bytes to arrive are the body
    reply_due: StoreOutcome | None = None  # a store started as its body arrived, its reply not yet written
    store_hold: InflightHold | None = None  # that message's share of the in-flight budget

    def command_received(self, data: bytes) -> None:
        """Take bytes that arrive while the loop waits: a body due, bytes held behind a reply due, or a command."""
        if self.body_due:
            self.body_arrived(data)
        elif self.reply_due is not None:
            # Read by the loop once the reply is written (`stored_at_once` wakes it), as after smtp_DATA's.
            if self.fed is not None:
                self.fed.feed_quietly(data)
        elif not self.answer_at_once(data) and self.fed is not None:
            self.fed.feed_data(data)

    # Reads the private SMTP._auth_required, as aiosmtpd's check_auth_needed does; calls SMTP._reset_timeout as the
    # original smtp_DATA does.
    def data_at_once(self, arg_bytes: bytes) -> bool:
        """Send DATA's 354 as `smtp_DATA` would, where none of its checks can refuse it; False if the loop must.

        Called by `answer_at_once`, which has checked what the command loop
        checks (TLS, the call limit, the line's size, the log level) and that
        the write buffer is empty. Here: no argument, greeted, authenticated
        if AUTH is required, a recipient taken, and asyncio's plain socket
        transport (not TLS's).
        """
        session, envelope = self.session, self.envelope
        if (arg_bytes.strip() or session is None or envelope is None or not envelope.rcpt_tos
                or not session.host_name or (self._auth_required and not session.authenticated)
                or type(self.transport) is not SOCKET_TRANSPORT):
            return False
        self._reset_timeout(self.door.settings.data_timeout)
        self.body_due = self.sent(GO_AHEAD)  # True: an empty write buffer of a session not ended
        return self.body_due

    def body_arrived(self, data: bytes) -> None:
        """Store a body that arrived whole after a 354 sent at once; hand anything else to `smtp_DATA` to read."""
        self.body_due = False
        limit = self.line_length_limit
        if self.data_size_limit and self.data_size_limit < limit:
            limit = self.data_size_limit
        content = whole_body(data, limit) if type(data) is bytes else None
        if content is not None:
            # As `smtp_DATA` holds it: the body's bytes in the in-flight budget until its reply.
            hold = self.door.runtime.inflight.hold()
            if hold.grow(len(data)):
                self.store_at_once(content, hold)
                return
        reader = self.fed
        if reader is not None:
            reader.feed_quietly(data)
            self.body_handed_over = True  # taken by `smtp_DATA`: its 354 was sent, its checks passed
            reader.interrupt(HandedOver(functools.partial(self.smtp_DATA, None)))

    def store_at_once(self, content: bytes, hold: InflightHold) -> None:
        """Start storing a whole body as `smtp_DATA` does, its reply written by `stored_at_once` once it is done."""
        envelope = self.envelope
        assert envelope is not None
        envelope.content = envelope.original_content = content
        self.store_hold = hold
        outcome = self.reply_due = self.event_handler.store(self, envelope)
        outcome.when_done(self.stored_at_once)

    # Reads asyncio's socket transport's private _buffer and _closing, as `sent` does.
    def stored_at_once(self, outcome: StoreOutcome) -> None:
        """Write the reply to a store `store_at_once` started, as `smtp_DATA` would after its `handle_DATA`.

        A client gone (or the session ending) gets nothing, as the session's
        task, cancelled meanwhile, sends nothing once the store is done; a
        cancelled store, or a reply that cannot be written at once (unsent
        bytes), goes to the command loop (`reply_in_task`).
        """
        self.reply_due = None
        hold, self.store_hold = self.store_hold, None
        assert hold is not None
        transport: Any = self.transport
        if transport is None or transport._closing:
            self._dropped(outcome, hold)
        elif outcome.cancelled() or transport._buffer:
            if self.fed is None or not self.fed.interrupt(HandedOver(
                    functools.partial(self.reply_in_task, outcome, hold))):
                self._dropped(outcome, hold)
        else:
            self._replied(outcome, hold)

    def _dropped(self, outcome: StoreOutcome, hold: InflightHold) -> None:
        """End a store whose session sends nothing more, as its task, cancelled, ends once the store is done."""
        self.door.storing.discard(outcome)
        if not outcome.cancelled():
            outcome.exception()  # retrieved, as the cancelled session's await retrieves it
        hold.close()
        self.storing = False

    # Calls the private SMTP._set_post_data_state as the original smtp_DATA does.
    def _replied(self, outcome: StoreOutcome, hold: InflightHold) -> None:
        """Write a finished store's reply to an empty write buffer and end DATA, as `smtp_DATA` does."""
        status = self.event_handler.stored_reply(self, outcome)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        hold.close()
        self.sent(status)  # an empty write buffer: written (nothing if the session ended)
        self.storing = False
        self.after_data()
        if self.fed is not None:
            self.fed.wake()  # bytes that arrived meanwhile are read now, after the reply

    async def reply_in_task(self, outcome: StoreOutcome, hold: InflightHold) -> None:
        """Answer a finished store in the command loop, as `smtp_DATA` does once its `handle_DATA` returns or raises."""
        try:
            try:
                if outcome.cancelled():  # as `handle_DATA`'s await of it raises
                    self.door.storing.discard(outcome)
                    await outcome
                status = self.event_handler.stored_reply(self, outcome)
                self._set_post_data_state()  # type: ignore[no-untyped-call]
            finally:
                hold.close()
            if not self.sent(status):
                await self.push(status)
        finally:
            self.storing = False
        self.after_data()

    def after_data(self) -> None:
        """Restart the idle timer after DATA's reply; close the session if the server stops or its time ran out.

        As `smtp_DATA` ends.
        """
        self._reset_timeout()
        if self.door.closing:
            self.say_goodbye(SHUTTING_DOWN)
        elif self.expired:
            self._lifetime_over()
