"""The SMTP door: an aiosmtpd server on mailhook's own event loop that answers 250 only once stored.

Every accepted message becomes a `Delivery` handed to the pipeline; the reply
to DATA waits until the group-commit writer has made it durable. Policy
(recipient and sender allow-lists, size, session caps, timeouts, STARTTLS and
AUTH) is enforced here, before anything reaches the pipeline.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from mailhook.config import SmtpSettings, parse_address, refuse_open_relay
from mailhook.errors import ConfigError, Rejected, RetryLater, TooLarge
from mailhook.models import Delivery
from mailhook.smtpauth import PasswordAuth, PasswordFile, tls_context
from mailhook.smtplimits import AuthPenalty, ConnectionRate, RefusalSummary
from mailhook.smtpwire import PLAIN_ANGLE_ADDR, UNFIT_TEXT, hook_names, read_body
from mailhook.store import utcnow

if TYPE_CHECKING:
    from mailhook.server import Runtime

log = logging.getLogger("mailhook.smtp")

IDENT = "ESMTP mailhook"
RETRY_LATER = "451 4.3.0 Storage temporarily unavailable, please try again later"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down, please try again later\r\n"
TOO_MANY_SESSIONS = b"421 4.3.2 Too many connections, please try again later\r\n"
TOO_MANY_FROM_ADDRESS = b"421 4.7.0 Too many connections from your address, please try again later\r\n"
TOO_FAST = b"421 4.7.0 Too many connections from your address in the last minute, please slow down\r\n"
EVICTED = b"421 4.3.2 Too many connections; closing this session, which sent no mail command lately\r\n"
SESSION_TIME = b"421 4.4.2 Session time limit reached, closing connection\r\n"
TOO_MUCH_JUNK = b"421 4.7.0 Too many commands without mail, closing connection\r\n"
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
TOO_MANY_AUTH_FAILURES = b"421 4.7.0 Too many authentication failures, closing connection\r\n"
# Replies that refuse something, by prefix (all 5xx), and the reason `mailhook_rejected_total` counts them under.
REFUSALS = {"550 5.1.1": "recipient", "550 5.7.1": "sender", "552": "too_large", "535": "unauthorized",
            "530": "unauthenticated", "501 5.1.7": "bad_address", "501 5.1.3": "bad_address"}
def matches(address: str, patterns: tuple[str, ...]) -> bool:
    """Say whether `address` is one of `patterns`: an exact ADDR or any address @DOMAIN, ignoring case."""
    address = address.lower()
    domain = "@" + address.rpartition("@")[2]
    return any(p.lower() in (address, domain) for p in patterns)


class Handler(PasswordAuth):
    """The aiosmtpd hooks: who may send to whom, and storing each message before answering."""

    def __init__(self, door: SmtpDoor) -> None:
        self.door = door
        self.settings = door.settings
        self.passwords = door.passwords

    def __dir__(self) -> list[str]:
        """List only the hooks: aiosmtpd searches dir() of its handler on every new connection."""
        return hook_names(type(self))

    async def handle_MAIL(
        self, server: Connection, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse senders that are not text, and those outside the sender allow-list (when there is one)."""
        if UNFIT_TEXT.search(address):
            # Permanent: the same bytes can never be stored; the address itself stays out of the log.
            log.info("refused sender peer=%s: not UTF-8 or holds a control character", server.peer_ip)
            return "501 5.1.7 Bad sender address syntax"
        if self.settings.senders and not matches(address, self.settings.senders):
            log.info("refused sender peer=%s from=%s", server.peer_ip, address)
            return "550 5.7.1 Sender not allowed"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Connection, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse recipients that are not text, or outside the allow-list (empty: allowed on loopback only)."""
        if UNFIT_TEXT.search(address):
            log.info("refused recipient peer=%s: not UTF-8 or holds a control character", server.peer_ip)
            return "501 5.1.3 Bad recipient address syntax"
        if self.settings.accept and not matches(address, self.settings.accept):
            log.info("refused recipient peer=%s to=%s", server.peer_ip, address)
            return "550 5.1.1 Recipient not accepted here"
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            # Temporary on purpose: the sender delivers the rest in another transaction.
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Connection, session: Session, envelope: Envelope) -> str:
        """Store the message and answer only when it is durable: 250, or 451 so the sender retries."""
        server.hold_timeout()
        delivery = Delivery(
            channel="smtp",
            raw=bytes(envelope.original_content or b""),
            received_at=utcnow(),
            kind="email",
            envelope_from=envelope.mail_from,
            envelope_to=tuple(envelope.rcpt_tos),
            remote_addr=server.peer_ip,
        )
        # The store goes on even if the client vanishes or times out meanwhile:
        # the door waits for these tasks before the writer is closed.
        task = asyncio.ensure_future(self.door.runtime.pipeline.accept_async(delivery))
        self.door.track(task)
        try:
            receipt = await asyncio.shield(task)
        except RetryLater:
            return RETRY_LATER
        except TooLarge:
            return "552 5.3.4 Message too big"
        except Rejected:
            return "554 5.6.0 Message refused"
        except Exception:  # the client gets a retryable answer, never the exception text
            log.exception("unexpected error while storing a message from %s", server.peer_ip)
            return RETRY_LATER
        server.accepted()
        return f"250 2.0.0 OK delivery {receipt.delivery_id} {receipt.status}"

    async def handle_exception(self, error: Exception) -> str:
        """Answer an unexpected error with a temporary failure that does not leak its text."""
        log.error("SMTP session error: %s", type(error).__name__, exc_info=error)
        return "451 4.3.0 Internal error, please try again later"


class TlsWithoutAuthHandler(Handler):
    """The hooks of a door offering STARTTLS without a password file, where AUTH must stay hidden."""

    async def handle_EHLO(
        self, server: Connection, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Greet without the AUTH line aiosmtpd adds after STARTTLS even with no mechanism to offer."""
        session.host_name = hostname
        return [r for r in responses if not r.startswith("250-AUTH")]


class Connection(SMTP):
    """One SMTP session: admitted under the session caps, bounded in time, junk, errors and AUTH failures.

    Commands that carry no mail (NOOP, RSET, HELP, VRFY, EXPN, a third
    HELO/EHLO) neither restart the idle timer nor count as progress, and only
    so many are answered; every 5xx reply counts as an error (delayed past the
    soft limit, the session closed at the hard limit); a message accepted
    forgives both, as in Postfix. The whole session ends at max_session_time.
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
        self.idle_deadline = 0.0
        self.rearmed_from = (0.0, 0.0)
        self.junk = 0
        self.greetings = 0
        self.errors = 0
        self.failed_auths = 0
        self.lifetime: asyncio.TimerHandle | None = None
        super().__init__(handler, **kwargs)

    def __dir__(self) -> list[str]:
        """List only the commands and AUTH mechanisms.

        aiosmtpd finds them with dir() and inspect.getmembers() on every new
        connection; over all ~200 attributes that was a third of setting one up.
        """
        return hook_names(type(self))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split MAIL/RCPT's argument into address and parameters, plainly when the address is plain.

        aiosmtpd runs the full RFC 5322 parser (and defines a class) on every
        call, ~50 us; a plain `<local@domain>` is returned as that parser would.
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
        self.lifetime = self.loop.call_later(self.door.settings.max_session_time, self._lifetime_over)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Release the session's place under the caps."""
        if self.admitted:
            if self.lifetime is not None:
                self.lifetime.cancel()
            self.door.release(self)
            super().connection_lost(error)

    def hold_timeout(self) -> None:
        """Stop the idle/DATA timer while a received message is being stored."""
        self.storing = True
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def accepted(self) -> None:
        """Forgive the session's errors and junk commands once a message is accepted (as Postfix does)."""
        self.errors = self.junk = 0

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Restart the idle (or DATA) timer, remembering the one before so that a junk command can put it back.

        Overridden because aiosmtpd restarts the timer before running every
        command it recognises, whatever the command; see `junk_command`.
        """
        self.rearmed_from = (self.idle_deadline, self.last_progress)
        self.last_progress = self.loop.time()
        self.idle_deadline = self.last_progress + (duration or self._timeout_duration)
        super()._reset_timeout(duration)

    def junk_command(self) -> bool:
        """Count a command that carries no mail; True when that was one too many and the session is closed.

        The idle timer aiosmtpd restarted for it is put back, so NOOPs (or
        RSETs...) cannot keep a session open past the idle timeout.
        """
        self.idle_deadline, self.last_progress = self.rearmed_from
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = self.loop.call_at(self.idle_deadline, self._timeout_cb)
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
        log.info("closing session peer=%s: no mail command for %.0f s, its place given to a new connection",
                 self.peer_ip, self.loop.time() - self.last_progress)
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

    async def push(self, status: Any) -> None:
        """Send a reply, counting refusals in the metrics and errors against the session's error limits."""
        if self.ended:
            return
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        if not text.startswith("5"):
            await super().push(status)
            return
        for prefix, reason in REFUSALS.items():  # every refusal counted is a 5xx
            if text.startswith(prefix):
                self.door.runtime.metrics.on_rejected("smtp", reason)
        settings = self.door.settings
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

    async def failed_auth(self, mechanism: str, user: str) -> None:
        """Log a failed AUTH and wait the address's growing penalty before its 535 is sent."""
        self.failed_auths += 1
        delay, count = self.door.auth_penalty.failed(self.peer_ip, self.loop.time())
        log.warning("auth failed peer=%s mechanism=%s user=%s failures=%d address_failures=%d delay=%.1fs",
                    self.peer_ip, mechanism, user, self.failed_auths, count, delay)
        await asyncio.sleep(delay)  # on the event loop's clock: other sessions go on meanwhile

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

    def _timeout_cb(self) -> None:
        log.info("timeout peer=%s", self.peer_ip)
        self.door.runtime.metrics.on_rejected("smtp", "timeout")
        self.say_goodbye(b"421 4.4.2 Timeout, closing connection\r\n")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """Start a transaction, unless the server is stopping."""
        if self.door.closing:
            self.say_goodbye(SHUTTING_DOWN)
            return
        await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """Receive and store a message under the DATA timeout, then go back to the idle timeout."""
        self._reset_timeout(self.door.settings.data_timeout)
        try:
            await self._receive(arg)
        finally:
            self.storing = False
        self._reset_timeout()
        if self.door.closing:
            self.say_goodbye(SHUTTING_DOWN)
        elif self.expired:
            self._lifetime_over()


    async def _receive(self, arg: str | None) -> None:
        """aiosmtpd's DATA, with the body read by `read_body`."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, refusal = await read_body(self._reader, self.line_length_limit, self.data_size_limit or 0)
        except asyncio.CancelledError:  # the connection was lost meanwhile
            self._writer.close()
            raise
        if refusal is not None:
            await self.push(refusal)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

class SmtpDoor:
    """The running SMTP server: its listening sockets, its sessions and the stores in flight."""

    name = "smtp"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings: SmtpSettings = runtime.settings.smtp
        self.passwords = PasswordFile.load(self.settings.auth_file) if self.settings.auth_file else None
        self.tls = tls_context(self.settings.tls_cert, self.settings.tls_key)
        if self.passwords is not None and self.tls is None:
            raise ConfigError("smtp.auth_file needs smtp.tls_cert and smtp.tls_key: AUTH is offered over TLS only")
        # Only this case needs an EHLO hook; aiosmtpd inspects a hook's signature
        # on every new connection (~25 us), so the other doors go without.
        self.handler = (TlsWithoutAuthHandler if self.tls is not None and self.passwords is None else Handler)(self)
        self.sessions: set[Connection] = set()
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.storing: set[asyncio.Future[Any]] = set()
        self.closing = False
        self.server: asyncio.Server | None = None
        self.refused = RefusalSummary()
        self.refusal_report: asyncio.TimerHandle | None = None
        self.rate = ConnectionRate(self.settings.max_connection_rate)
        self.auth_penalty = AuthPenalty(self.settings.auth_failure_delay, self.settings.auth_failure_delay_max)
        self._idle = asyncio.Event()
        self._idle.set()

    async def listen(self) -> None:
        """Listen (on systemd's socket if given one), refusing to take any recipient on a public address."""
        loop = asyncio.get_running_loop()
        activated = self.runtime.sockets.get("smtp")
        try:
            if activated is not None:
                self.server = await loop.create_server(self._connection, sock=activated)
            else:
                host, port = parse_address(self.settings.listen, "smtp.listen")
                self.server = await loop.create_server(self._connection, host, port, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"smtp.listen: cannot listen on {self.settings.listen}: {exc.strerror}") from None
        try:
            refuse_open_relay(self.settings, self.addresses())
        except ConfigError:
            self.server.close()
            raise

    def _connection(self) -> Connection:
        settings = self.settings
        return Connection(
            self,
            self.handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident=IDENT,
            tls_context=self.tls,
            require_starttls=settings.require_starttls,
            timeout=settings.idle_timeout,
            auth_required=self.passwords is not None,
            auth_require_tls=True,
            auth_exclude_mechanism=() if self.passwords is not None else ("PLAIN", "LOGIN"),
            loop=asyncio.get_running_loop(),
        )

    def addresses(self) -> list[str]:
        """Return the HOST:PORT addresses actually bound (the real port when configured as 0)."""
        if self.server is None:
            return []
        result = []
        for sock in self.server.sockets:
            host, port = sock.getsockname()[:2]
            result.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return result

    def admit(self, conn: Connection) -> bytes | None:
        """Count a new session in, or return the 421 reply that refuses it.

        At a cap, a session that sent no mail command for `evict_after`
        seconds makes room (see `_idlest`): at max_per_ip one from the same
        address, at max_sessions one from an address holding more sessions
        than the newcomer's. So sessions that only idle or send junk cannot
        lock out a client that sends mail, from another address or their own.
        """
        if self.closing:
            return SHUTTING_DOWN
        if self.rate.too_fast(conn.peer_ip, asyncio.get_running_loop().time()):
            return self._refuse(conn, "too_fast", TOO_FAST)
        if self.per_ip[conn.peer_ip] >= self.settings.max_per_ip:
            idlest = self._idlest(conn, same_address=True)
            if idlest is None:
                return self._refuse(conn, "too_many_from_address", TOO_MANY_FROM_ADDRESS)
            idlest.evict()
            self.release(idlest)
        if len(self.sessions) >= self.settings.max_sessions:
            idlest = self._idlest(conn, same_address=False)
            if idlest is None:
                return self._refuse(conn, "too_many_sessions", TOO_MANY_SESSIONS)
            idlest.evict()
            self.release(idlest)
        self.sessions.add(conn)
        self.per_ip[conn.peer_ip] += 1
        self.runtime.metrics.smtp_sessions.inc()
        self._idle.clear()
        return None

    def _idlest(self, newcomer: Connection, *, same_address: bool) -> Connection | None:
        """Return the session that may make room for `newcomer`, if any.

        That is the one longest without a mail command, idle so for at least
        evict_after seconds and not storing a message; from the newcomer's own
        address (`same_address`), or else from an address that holds more
        sessions than the newcomer's would, so that sessions from a few
        addresses cannot shut out a client from another, nor evict each other.
        """
        if not self.settings.evict_after:
            return None
        latest = asyncio.get_running_loop().time() - self.settings.evict_after
        peer, share = newcomer.peer_ip, self.per_ip[newcomer.peer_ip] + 1
        candidates = (
            c for c in self.sessions
            if c.last_progress <= latest and not c.storing and not c.ended
            and (c.peer_ip == peer if same_address else self.per_ip[c.peer_ip] > share)
        )
        return min(candidates, key=lambda c: c.last_progress, default=None)

    def _refuse(self, conn: Connection, reason: str, reply: bytes) -> bytes:
        """Count a connection refused at a cap, for the metrics and the next summary line; return the reply."""
        self.runtime.metrics.on_rejected("smtp", reason)
        if self.refused.add(conn.peer_ip, reason):
            self.refusal_report = asyncio.get_running_loop().call_later(
                self.settings.refusal_log_interval, self.report_refusals)
        return reply

    def report_refusals(self) -> None:
        """Log one line summing up the connections refused at the caps since the last such line."""
        if self.refusal_report is not None:
            self.refusal_report.cancel()
            self.refusal_report = None
        summary = self.refused.take(self.settings.refusal_log_interval)
        if summary is not None:
            log.warning(summary[0], *summary[1])

    def release(self, conn: Connection) -> None:
        """Count a finished session out."""
        if conn in self.sessions:
            self.sessions.discard(conn)
            self.per_ip[conn.peer_ip] -= 1
            if self.per_ip[conn.peer_ip] <= 0:
                del self.per_ip[conn.peer_ip]
            self.runtime.metrics.smtp_sessions.dec()
        if not self.sessions:
            self._idle.set()

    def track(self, task: asyncio.Future[Any]) -> None:
        """Remember a store in flight until it completes."""
        self.storing.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Future[Any]) -> None:
        self.storing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: a client that left cannot receive it

    async def close(self) -> None:
        """Stop accepting, let transactions in flight finish (within the grace period), then wait for stores."""
        self.closing = True
        self.report_refusals()
        if self.server is not None:
            self.server.close()
        busy = [conn for conn in self.sessions if conn.in_transaction()]
        for conn in self.sessions - set(busy):
            conn.say_goodbye(SHUTTING_DOWN)
        log.info("smtp stopped accepting; waiting for %d transactions in flight", len(busy))
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace)
        except TimeoutError:
            log.warning("closing %d SMTP sessions still open after the grace period", len(self.sessions))
            for conn in list(self.sessions):
                conn.say_goodbye(SHUTTING_DOWN)
        if self.storing:
            await asyncio.wait(set(self.storing))
        if self.server is not None:
            await self.server.wait_closed()


async def start(runtime: Runtime) -> SmtpDoor:
    """Start the SMTP door on the running loop; raises `ConfigError` when it cannot or must not listen."""
    # aiosmtpd logs every command at INFO and a deprecation note per AUTH at
    # WARNING; mailhook logs its own one line per delivery instead.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    door = SmtpDoor(runtime)
    await door.listen()
    return door
