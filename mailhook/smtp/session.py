"""The SMTP session: aiosmtpd's `SMTP` subclass (`Connection`), its commands answered with mailhook's limits.

`Connection` adds the commands to its bases: the connection's state, caps and
timers (smtp/connection.py), the command loop with its replies
(smtp/command_loop.py), MAIL and RCPT (smtp/mail_rcpt.py) and DATA and its
body answered as they arrive (smtp/body_at_once.py); it reads through
smtp/reader.py's `SessionReader`. Those six modules are the only ones that
touch aiosmtpd's (and asyncio's)
private names: each lists those it relies on in `PRIVATE_NAMES`, checked against
the installed aiosmtpd by tests/test_library_internals.py; each override
carries a comment saying what it replaces and why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import syntax

from mailhook.logs import logfmt
from mailhook.smtp.body_at_once import BodyAtOnce
from mailhook.smtp.connection import SHUTTING_DOWN, TOO_MANY_AUTH_FAILURES
from mailhook.smtp.fastpath import hook_names, read_body
from mailhook.smtp.limits import UNFIT_TEXT

log = logging.getLogger("mailhook.smtp")

# aiosmtpd's private names this module relies on; tests/test_library_internals.py checks them against the installed
# aiosmtpd (and that smtp_DATA, copied into `Connection.smtp_DATA`, is still the version copied), and
# pyproject.toml caps it.
PRIVATE_NAMES = (
    "SMTP._syntax_available", "SMTP._reset_timeout", "SMTP._reader", "SMTP._writer",
    "SMTP._set_post_data_state", "SMTP._call_handler_hook", "SMTP._auth_required",
)


class Connection(BodyAtOnce):
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
        connection; over all its attributes that was much of setting one up
        (docs/performance.md, "Where the code is shaped for speed").
        """
        return hook_names(type(self))

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

    # A copy of aiosmtpd's SMTP.smtp_DATA under the DATA timeout, with the body read by `read_body` (bounded, one
    # pass) instead of its line loop, and its greeting and AUTH checks awaited only when one can fail (read from the
    # private SMTP._auth_required, as check_auth_needed reads it), its replies sent by `sent` when no coroutine is
    # needed and its DATA hook called directly, not through SMTP._call_handler_hook; reads the private
    # SMTP._reader/_writer and calls SMTP._set_post_data_state as the original does. One coroutine, not the
    # timeout's and the copy's apart (docs/performance-log.md, smtp-door6). tests/test_library_internals.py fails when
    # the original changes.
    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA with the body read by `read_body`, under the DATA timeout, then the idle timeout again."""
        # A DATA whose 354 the session sent as it arrived, its body handed on to be read here (smtp/body_at_once.py):
        # the DATA timeout runs since then, and the checks passed. The flag is taken from the instance, where
        # `BodyAtOnce.body_arrived` sets it.
        handed = self.__dict__.pop("body_handed_over", False)
        if not handed:
            self._reset_timeout(self.door.settings.data_timeout)
        session = self.session
        assert session is not None and self.envelope is not None
        try:
            # The two checks' coroutines only when one can fail (greeting missing, AUTH required and not done).
            if handed:
                reading = True
            elif (not session.host_name or (self._auth_required and not session.authenticated)) and (
                await self.check_helo_needed() or await self.check_auth_needed("DATA")
            ):
                reading = False
            elif not self.envelope.rcpt_tos:
                reading = False
                await self.push("503 Error: need RCPT command")
            elif arg:
                reading = False
                await self.push("501 Syntax: DATA")
            else:
                reading = True
                if not self.sent("354 End data with <CR><LF>.<CR><LF>"):
                    await self.push("354 End data with <CR><LF>.<CR><LF>")
            if reading:
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
