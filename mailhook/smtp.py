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
from mailhook.smtpwire import PLAIN_ANGLE_ADDR, hook_names, read_body
from mailhook.store import utcnow
from mailhook.systemd import backlog

if TYPE_CHECKING:
    from mailhook.server import Runtime

log = logging.getLogger("mailhook.smtp")

IDENT = "ESMTP mailhook"
RETRY_LATER = "451 4.3.0 Storage temporarily unavailable, please try again later"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down, please try again later\r\n"
# Replies that refuse something, by prefix (all 5xx), and the reason `mailhook_rejected_total` counts them under.
REFUSALS = {"550 5.1.1": "recipient", "550 5.7.1": "sender", "552": "too_large", "535": "unauthorized",
            "530": "unauthenticated"}
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
        """Refuse senders outside the sender allow-list (when there is one)."""
        if self.settings.senders and not matches(address, self.settings.senders):
            log.info("refused sender peer=%s from=%s", server.peer_ip, address)
            return "550 5.7.1 Sender not allowed"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Connection, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse recipients outside the recipient allow-list (an empty list is allowed on loopback only)."""
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
    """One SMTP session: admitted under the session caps, closable when the server stops."""

    def __init__(self, door: SmtpDoor, handler: Handler, **kwargs: Any) -> None:
        # RFC 5321 allows 1000 octets per line, but a notification email that
        # breaks it must still be stored rather than bounced, so accept long lines.
        self.line_length_limit = max(SMTP.line_length_limit, min(door.settings.max_message_size, 1 << 20))
        self.door = door
        self.peer_ip = "-"
        self.admitted = False
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
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Release the session's place under the caps."""
        if self.admitted:
            self.door.release(self)
            super().connection_lost(error)

    def hold_timeout(self) -> None:
        """Stop the idle/DATA timer while a received message is being stored."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def in_transaction(self) -> bool:
        """Say whether the client has started a mail transaction (MAIL accepted)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def say_goodbye(self, reply: bytes) -> None:
        """Send a final reply and close the connection."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply)
            transport.close()

    async def push(self, status: Any) -> None:
        """Send a reply, counting refusals in the metrics."""
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        if text.startswith("5"):  # every refusal counted is a 5xx
            for prefix, reason in REFUSALS.items():
                if text.startswith(prefix):
                    self.door.runtime.metrics.on_rejected("smtp", reason)
        await super().push(status)

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
        await self._receive(arg)
        self._reset_timeout()
        if self.door.closing:
            self.say_goodbye(SHUTTING_DOWN)


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
        self._idle = asyncio.Event()
        self._idle.set()

    async def listen(self) -> None:
        """Listen (on systemd's socket if given one), refusing to take any recipient on a public address."""
        loop = asyncio.get_running_loop()
        activated = self.runtime.sockets.get("smtp")
        try:
            if activated is not None:
                self.server = await loop.create_server(self._connection, sock=activated, backlog=backlog(activated))
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
        """Count a new session in, or return the 421 reply that refuses it."""
        if self.closing:
            return SHUTTING_DOWN
        if len(self.sessions) >= self.settings.max_sessions:
            log.warning("refused connection peer=%s: %d sessions open", conn.peer_ip, len(self.sessions))
            self.runtime.metrics.on_rejected("smtp", "too_many_sessions")
            return b"421 4.3.2 Too many connections, please try again later\r\n"
        if self.per_ip[conn.peer_ip] >= self.settings.max_per_ip:
            log.warning("refused connection peer=%s: too many sessions from it", conn.peer_ip)
            self.runtime.metrics.on_rejected("smtp", "too_many_from_address")
            return b"421 4.7.0 Too many connections from your address, please try again later\r\n"
        self.sessions.add(conn)
        self.per_ip[conn.peer_ip] += 1
        self.runtime.metrics.smtp_sessions.inc()
        self._idle.clear()
        return None

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
