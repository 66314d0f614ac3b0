"""MAIL and RCPT: their common case answered by the session itself (`MailAndRcpt`), at once where it can be.

aiosmtpd's smtp_MAIL and smtp_RCPT run its full address parser and several
coroutines per command; `MailAndRcpt` answers the plain common case itself with
the same envelope, hook, log line and reply, and a lone MAIL or RCPT line as it
arrives (`answer_at_once`), leaving everything else to aiosmtpd's methods and
the command loop. The private names of aiosmtpd and asyncio it relies on are
listed in `PRIVATE_NAMES` and `ASYNCIO_PRIVATE_NAMES` and checked by
tests/test_library_internals.py; each override carries a comment saying what it
replaces and why.
"""

from __future__ import annotations

import logging
from typing import Any

from aiosmtpd.smtp import log as aiosmtpd_log
from aiosmtpd.smtp import syntax

from mailhook.smtp.command_loop import SOCKET_TRANSPORT, CommandLoop
from mailhook.smtp.connection import SHUTTING_DOWN
from mailhook.smtp.fastpath import PLAIN_ANGLE_ADDR, plain_mail_options, unreadable_size

# aiosmtpd's private names this module relies on; tests/test_library_internals.py checks them against the installed
# aiosmtpd (and that smtp_MAIL and smtp_RCPT, whose common case this module answers, are still the versions read),
# and pyproject.toml caps it.
PRIVATE_NAMES = (
    "SMTP._getaddr", "SMTP._reset_timeout", "SMTP._auth_required", "SMTP._decode_data",
    "SMTP._tls_handshake_okay", "SMTP._tls_protocol", "SMTP._enforce_call_limit",
)
# asyncio's private names `MailAndRcpt.answer_at_once` reads (its reader's state, and the socket transport's write
# buffer and closing state, as `sent` reads them); checked by tests/test_library_internals.py.
ASYNCIO_PRIVATE_NAMES = (
    "StreamReader._buffer", "StreamReader._exception", "StreamReader._eof",
    "_SelectorSocketTransport._buffer", "_SelectorSocketTransport._closing",
)


class MailAndRcpt(CommandLoop):
    """The session's MAIL and RCPT: aiosmtpd's, with their common case answered here (at once where it can be)."""

    # Private override: SMTP._getaddr (MAIL/RCPT argument parsing), for speed; falls back to it for anything not plain.
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split MAIL/RCPT's argument into address and parameters, plainly when the address is plain.

        aiosmtpd runs the full RFC 5322 parser (and defines a class) on every
        call (docs/performance.md, "Where the code is shaped for speed"); a plain `<local@domain>` is
        returned as that parser would.
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


    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """Start a transaction, unless the server is stopping."""
        if self.door.closing:
            self.say_goodbye(SHUTTING_DOWN)
            return
        mail = self._plain_mail(arg)
        if mail is None:
            await self._general_mail(arg)
            return
        assert self.envelope is not None and self.session is not None
        address, options, utf8 = mail
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

    def _plain_mail(self, arg: str | None) -> tuple[str, list[str], bool] | None:
        """Return MAIL's address, parameters and SMTPUTF8 where `smtp_MAIL` answers it itself; None for aiosmtpd's."""
        plain = self._plain_address(arg, "FROM:")
        if plain is None or self.envelope is None or self.envelope.mail_from:
            return None
        taken = self._plain_mail_options(plain[1]) if plain[1] else ([], False)
        return None if taken is None else (plain[0], *taken)

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
        address = self._plain_rcpt(arg)
        if address is None:
            await super().smtp_RCPT(arg)
            return
        assert self.session is not None and self.envelope is not None
        # aiosmtpd's RCPT for `TO:<plain address>` without parameters (it refuses them all), as for MAIL above.
        status = self.event_handler.rcpt(self, self.envelope, address, [])
        if self.info_logged:  # as for MAIL
            aiosmtpd_log.info("%r recip: %s", self.session.peer, address)
        if not self.sent(status):
            await self.push(status)

    def _plain_rcpt(self, arg: str | None) -> str | None:
        """Return RCPT's address where `smtp_RCPT` answers it itself (no parameters, after MAIL); else None."""
        plain = self._plain_address(arg, "TO:")
        if plain is None or plain[1] or self.envelope is None or not self.envelope.mail_from:
            return None
        return plain[0]

    # Reads the private SMTP._tls_handshake_okay, _tls_protocol and _enforce_call_limit, as the command loop does,
    # the private StreamReader._buffer, _exception and _eof of the session's reader (`fed`), and asyncio's socket
    # transport's _buffer and _closing, as `sent` does.
    def answer_at_once(self, data: bytes) -> bool:
        """Answer a MAIL or RCPT (DATA: `data_at_once`) that arrived alone while the loop waits, as it would; or False.

        Called for the bytes that arrive between commands (`command_received`):
        a client that waits for each reply sends each command alone, and
        answering it here spares waking the session's task (a turn of the event
        loop, its future and `Handle`, the reads' frames): two of a message's
        four round trips. Only where the loop would do nothing but what is done
        here: one whole command line with nothing buffered before it, within its
        size limit, no TLS or STARTTLS check or call limit that could refuse it,
        aiosmtpd's log lines disabled, the session not ending, the transport's
        write buffer empty, and MAIL or RCPT in the common case `smtp_MAIL` and
        `smtp_RCPT` answer themselves, which the hook accepts (`sender_refusal`,
        `recipient_refusal`). Anything else (a refusal, a 452, a second line)
        goes to the reader and the loop, unchanged.
        """
        reader = self.fed
        if (type(data) is not bytes or data.find(b"\n") != len(data) - 1 or reader is None or reader._buffer
                or reader._exception is not None or reader._eof):
            return False
        command_bytes, _, arg_bytes = data.rstrip(b"\r\n").partition(b" ")
        command_bytes = command_bytes.upper()
        if command_bytes == b"MAIL":
            command = "MAIL"
        elif command_bytes == b"RCPT":
            command = "RCPT"
        elif command_bytes == b"DATA":
            command = "DATA"
        else:
            return False
        session = self.session
        if (session is None or self.ended or self.door.closing or not self._tls_handshake_okay
                or self._enforce_call_limit or (self.require_starttls and not self._tls_protocol)):
            return False
        limit = self.command_size_limits[command] if session.extended_smtp else self.command_size_limit
        if len(data.rstrip(b"\r\n")) > limit or aiosmtpd_log.isEnabledFor(logging.INFO):
            return False
        transport: Any = self.transport
        if transport is None or (transport._buffer or transport._closing if type(transport) is SOCKET_TRANSPORT
                                 else transport.get_write_buffer_size() or transport.is_closing()):
            return False  # `sent` would not write: `push` answers
        if command == "DATA":
            return self.data_at_once(arg_bytes)
        if not arg_bytes:
            return False
        if self.enable_SMTPUTF8:
            arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        else:
            try:
                arg = arg_bytes.strip().decode("ascii")
            except UnicodeDecodeError:
                return False
        handler, envelope = self.event_handler, self.envelope
        if envelope is None:
            return False
        # aiosmtpd's address parser, reached for what is not plain, raises on some inputs (IndexError for "<"):
        # the loop's method then raises it again and answers as before (`handle_exception`).
        if command == "MAIL":
            try:
                mail = self._plain_mail(arg)
            except Exception:  # noqa: BLE001 - answered by the command loop, as before
                return False
            if mail is None or handler.sender_refusal(mail[0]) is not None:
                return False
            self.info_logged = False
            self._reset_timeout()
            envelope.smtp_utf8 = mail[2]
            status = handler.take_sender(envelope, mail[0], mail[1])
        else:
            try:
                address = self._plain_rcpt(arg)
            except Exception:  # noqa: BLE001 - as for MAIL
                return False
            if address is None or handler.recipient_refusal(envelope, address) is not None:
                return False
            self.info_logged = False
            self._reset_timeout()
            status = handler.take_recipient(envelope, address, [])
        return self.sent(status)  # True: a 250 to an empty write buffer of a session not ended

    def data_at_once(self, arg_bytes: bytes) -> bool:
        """Answer a lone DATA line as `answer_at_once` answers MAIL and RCPT; True if answered (here, never).

        `arg_bytes` is what follows the command; smtp/body_at_once.py answers it.
        """
        return False

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
