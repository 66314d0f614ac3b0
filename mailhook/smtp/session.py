"""The SMTP session: aiosmtpd's `SMTP` subclass (`Connection`), its commands answered with mailhook's limits.

`Connection` adds the commands to its bases: the connection's state, caps and
timers (smtp/connection.py) and the command loop with its replies
(smtp/command_loop.py); it reads through smtp/reader.py's `SessionReader`.
Those four modules are the only ones that touch aiosmtpd's (and asyncio's)
private names: each lists those it relies on in `PRIVATE_NAMES`, checked against
the installed aiosmtpd by tests/test_library_internals.py; each override
carries a comment saying what it replaces and why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import log as aiosmtpd_log
from aiosmtpd.smtp import syntax

from mailhook.logs import logfmt
from mailhook.smtp.command_loop import SOCKET_TRANSPORT, CommandLoop
from mailhook.smtp.connection import SHUTTING_DOWN, TOO_MANY_AUTH_FAILURES
from mailhook.smtp.fastpath import PLAIN_ANGLE_ADDR, hook_names, plain_mail_options, read_body, unreadable_size
from mailhook.smtp.limits import UNFIT_TEXT

log = logging.getLogger("mailhook.smtp")

# aiosmtpd's private names this module relies on; tests/test_library_internals.py checks them against the installed
# aiosmtpd (and that smtp_DATA, copied into `Connection.smtp_DATA`, is still the version copied), and
# pyproject.toml caps it.
PRIVATE_NAMES = (
    "SMTP._getaddr", "SMTP._syntax_available", "SMTP._reset_timeout", "SMTP._reader", "SMTP._writer",
    "SMTP._set_post_data_state", "SMTP._call_handler_hook", "SMTP._auth_required", "SMTP._decode_data",
    "SMTP._tls_handshake_okay", "SMTP._tls_protocol", "SMTP._enforce_call_limit",
)
# asyncio's private names `Connection.answer_at_once` reads (its reader's state, and the socket transport's write
# buffer and closing state, as `sent` reads them); checked by tests/test_library_internals.py.
ASYNCIO_PRIVATE_NAMES = (
    "StreamReader._buffer", "StreamReader._exception", "StreamReader._eof",
    "_SelectorSocketTransport._buffer", "_SelectorSocketTransport._closing",
)


class Connection(CommandLoop):
    """One SMTP session: admitted under the session caps, bounded in time, junk, errors and AUTH failures.

    Commands that carry no mail (NOOP, RSET, HELP, VRFY, EXPN, a third
    HELO/EHLO) neither restart the idle timer nor count as progress, and only
    so many are answered; every 5xx reply counts as an error (delayed past the
    soft limit, the session closed at the hard limit), and so does every
    RCPT refused with 452 past max_recipients once more than
    max_recipient_overshoot were; a message accepted forgives all three, as in
    Postfix. The whole session ends at max_session_time.
    """

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
        """Answer a MAIL or RCPT that arrived alone while the command loop waits, as the loop would; False if not one.

        Called for the bytes that arrive between commands (`command_received`):
        a client that waits for each reply sends each command alone, and
        answering it here spares waking the session's task (a turn of the event
        loop, its future and `Handle`, the reads' frames): two of a message's
        four round trips. Only where the loop would do nothing but what is done
        here: one whole command line with nothing buffered before it, within its
        size limit, no TLS or STARTTLS check or call limit that could refuse it,
        aiosmtpd's log lines disabled, the session not ending, the transport's
        write buffer empty, and MAIL or RCPT in the common case `smtp_MAIL` and
        `smtp_RCPT` answer themselves, which the hook accepts (`refuses_sender`,
        `refuses_recipient`). Anything else (a refusal, a 452, a second line)
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
        else:
            return False
        session = self.session
        if (not arg_bytes or session is None or self.ended or self.door.closing or not self._tls_handshake_okay
                or self._enforce_call_limit or (self.require_starttls and not self._tls_protocol)):
            return False
        limit = self.command_size_limits[command] if session.extended_smtp else self.command_size_limit
        if len(data.rstrip(b"\r\n")) > limit or aiosmtpd_log.isEnabledFor(logging.INFO):
            return False
        if self.enable_SMTPUTF8:
            arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        else:
            try:
                arg = arg_bytes.strip().decode("ascii")
            except UnicodeDecodeError:
                return False
        transport: Any = self.transport
        if transport is None or (transport._buffer or transport._closing if type(transport) is SOCKET_TRANSPORT
                                 else transport.get_write_buffer_size() or transport.is_closing()):
            return False  # `sent` would not write: `push` answers
        handler, envelope = self.event_handler, self.envelope
        if envelope is None:
            return False
        if command == "MAIL":
            mail = self._plain_mail(arg)
            if mail is None or handler.refuses_sender(mail[0]):
                return False
            self.info_logged = False
            self._reset_timeout()
            envelope.smtp_utf8 = mail[2]
            status = handler.take_sender(envelope, mail[0], mail[1])
        else:
            address = self._plain_rcpt(arg)
            if address is None or handler.refuses_recipient(envelope, address):
                return False
            self.info_logged = False
            self._reset_timeout()
            status = handler.take_recipient(envelope, address, [])
        return self.sent(status)  # True: a 250 to an empty write buffer of a session not ended

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
