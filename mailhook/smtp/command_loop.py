"""The session's command loop and its replies: aiosmtpd's `_handle_client`, copied with less Python per command.

`CommandLoop` reads each command, runs its `smtp_` method (smtp/session.py, smtp/mail_rcpt.py)
and sends the replies (`sent`, `push`), counting refusals and errors. The
private names of aiosmtpd and asyncio it relies on are listed in
`PRIVATE_NAMES` and `ASYNCIO_PRIVATE_NAMES` and checked by
tests/test_library_internals.py; each override carries a comment saying what it
replaces and why.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from asyncio import selector_events
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, BOGUS_LIMIT, MISSING, TLSSetupException, sanitized_log
from aiosmtpd.smtp import log as aiosmtpd_log

from mailhook.smtp.connection import RCPT_OVERSHOOT, REFUSALS, TOO_MANY_ERRORS, SessionBase

log = logging.getLogger("mailhook.smtp")

# aiosmtpd's private names this module relies on; tests/test_library_internals.py checks them against the installed
# aiosmtpd (and that `_handle_client`, copied into `CommandLoop._handle_client`, is still the version copied), and
# pyproject.toml caps it.
PRIVATE_NAMES = (
    "SMTP._handle_client", "SMTP._proxy_timeout", "SMTP._enforce_call_limit", "SMTP._call_limit_default",
    "SMTP._call_limit_base", "SMTP._tls_handshake_okay", "SMTP._tls_protocol", "SMTP._smtp_methods",
    "SMTP._reader", "SMTP._writer", "SMTP._call_handler_hook", "SMTP._reset_timeout",
)
# asyncio's private names `CommandLoop.sent` reads (its socket transport's write buffer and closing state); checked by
# tests/test_library_internals.py.
ASYNCIO_PRIVATE_NAMES = ("_SelectorSocketTransport._buffer", "_SelectorSocketTransport._closing")
# asyncio's plain TCP transport, whose write buffer and closing state `Connection.sent` reads directly.
SOCKET_TRANSPORT: Any = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]


class HandedOver(Exception):
    """What the session took on as it arrived, handed on to its command loop, which awaits `work` (a body, a reply).

    Raised in the loop's waiting read by `SessionReader.interrupt` (smtp/body_at_once.py).
    """

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.work = work


class CommandLoop(SessionBase):
    """The session's command loop (aiosmtpd's, copied) and its replies, counted against the session's limits."""

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

    def command_received(self, data: bytes) -> None:
        """Take bytes that arrive while the loop waits for a command: answered at once if the session can, else read."""
        if not self.answer_at_once(data) and self.fed is not None:
            self.fed.feed_data(data)

    def answer_at_once(self, data: bytes) -> bool:
        """Answer a command that arrived alone without waking the loop; True if answered (here, never)."""
        return False

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

    # Private override: SMTP._handle_client (the command loop), a copy of aiosmtpd's with four changes, for speed:
    # its two log lines per command (`sanitized_log`, which builds a list and runs a regex on the line before the
    # logger looks at its level) are made only when aiosmtpd's logger would write them (one level check per
    # command when it would write neither, as mail.log is at ERROR), DATA does not restart
    # the idle timer, since `smtp_DATA` restarts it with the DATA timeout at once, and the command and its
    # argument are decoded by `bytes.decode` with positional arguments, and what the session took on as it arrived
    # but hands on (`HandedOver`: a DATA's body, a store's reply) is awaited where a command would be. Reads the private
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
                    # Between commands, what arrives may be answered at once (`command_received`); the reader's
                    # own `feed_data` takes the transport's data again once a line is read (if still connected).
                    if self.fed is self._reader:
                        self.data_received = self.command_received  # type: ignore[method-assign]
                    try:
                        line: bytes = await self._reader.readuntil()
                    finally:
                        if self.fed is not None:
                            self.data_received = self.fed.feed_data  # type: ignore[method-assign]
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
                except HandedOver as handed:
                    await handed.work()
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
