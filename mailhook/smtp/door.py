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

from aiosmtpd.smtp import Envelope, Session

from mailhook.config.addresses import parse_address, refuse_open_relay
from mailhook.config.settings import SmtpSettings
from mailhook.errors import ConfigError, RetryLater
from mailhook.logs import logfmt
from mailhook.models import Delivery, utcnow
from mailhook.smtp.auth import AuthChecks, PasswordAuth, PasswordFile, tls_context
from mailhook.smtp.connection import RCPT_OVERSHOOT, SHUTTING_DOWN, SessionBase
from mailhook.smtp.fastpath import hook_names
from mailhook.smtp.limits import UNFIT_TEXT, AuthPenalty, ConnectionRate, RefusalSummary
from mailhook.smtp.session import Connection

if TYPE_CHECKING:
    from mailhook.server import Runtime

log = logging.getLogger("mailhook.smtp")

IDENT = "ESMTP mailhook"
RETRY_LATER = "451 4.3.0 Storage temporarily unavailable, please try again later"
# Why MAIL or RCPT is refused (`Handler.sender_refusal`, `Handler.recipient_refusal`): one rule for the
# hook's answer and for the session's answer at once, which asks first.
UNFIT = "unfit"  # not UTF-8, or a control character
NOT_LISTED = "not listed"  # outside the sender allow-list, or the accepted recipients
OVERSHOOT = "overshoot"  # one recipient past max_recipients
TOO_MANY_SESSIONS = b"421 4.3.2 Too many connections, please try again later\r\n"
TOO_MANY_FROM_ADDRESS = b"421 4.7.0 Too many connections from your address, please try again later\r\n"
TOO_FAST = b"421 4.7.0 Too many connections from your address in the last minute, please slow down\r\n"


class StoreOutcome(asyncio.Future[Any]):
    """A message's store, as the session awaits it: cancelling the session (its connection lost) does not cancel it.

    asyncio's Task, cancelled while it awaits a future that refuses the
    cancel, raises `CancelledError` in its coroutine at its next step: here
    once the store is done, its outcome retrieved and dropped. So the store
    goes on, the door's `close` waits for it (`SmtpDoor.storing`), and the
    message's in-flight bytes are given back when it is done, whether the
    store runs on the loop or in a task (`Pipeline.ingest_soon` copies the
    task's outcome into this future): one way to await a store, without a
    second future, its callback and the loop's turn between them
    (docs/performance.md, smtp-door7, smtp8). The pipeline, which resolves
    it, cancels it by `Future.cancel`.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        """Refuse: the session awaiting this is cancelled once the store is done."""
        return False


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
        return self.mail(server, envelope, address, options)

    def mail(self, server: Connection, envelope: Envelope, address: str, options: list[str]) -> str:
        """Answer MAIL as `handle_MAIL` does, without a coroutine: the session's own MAIL calls it directly."""
        refusal = self.sender_refusal(address)
        if refusal == UNFIT:
            # Permanent: the same bytes can never be stored; the address itself stays out of the log.
            log.info("refused sender peer=%s: not UTF-8 or holds a control character", server.peer_ip)
            return "501 5.1.7 Bad sender address syntax"
        if refusal is not None:
            log.info("refused sender peer=%s from=%s", server.peer_ip, logfmt(address))
            return "550 5.7.1 Sender not allowed"
        return self.take_sender(envelope, address, options)

    def sender_refusal(self, address: str) -> str | None:
        """Return why `mail` refuses `address` (`UNFIT` or `NOT_LISTED`), or None: asked first by an answer at once."""
        if UNFIT_TEXT.search(address):
            return UNFIT
        if self.settings.senders and not matches(address, self.settings.senders):
            return NOT_LISTED
        return None

    def take_sender(self, envelope: Envelope, address: str, options: list[str]) -> str:
        """Start the transaction with a sender `mail` accepts; return its 250."""
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Connection, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse recipients that are not text, or outside the allow-list (empty: allowed on loopback only)."""
        return self.rcpt(server, envelope, address, options)

    def rcpt(self, server: Connection, envelope: Envelope, address: str, options: list[str]) -> str:
        """Answer RCPT as `handle_RCPT` does, without a coroutine: the session's own RCPT calls it directly."""
        refusal = self.recipient_refusal(envelope, address)
        if refusal == UNFIT:
            log.info("refused recipient peer=%s: not UTF-8 or holds a control character", server.peer_ip)
            return "501 5.1.3 Bad recipient address syntax"
        if refusal == NOT_LISTED:
            log.info("refused recipient peer=%s to=%s", server.peer_ip, logfmt(address))
            return "550 5.1.1 Recipient not accepted here"
        if refusal is not None:
            # Temporary on purpose: the sender delivers the rest in another transaction.
            server.recipient_overshoot()
            return RCPT_OVERSHOOT
        return self.take_recipient(envelope, address, options)

    def recipient_refusal(self, envelope: Envelope, address: str) -> str | None:
        """Return why `rcpt` refuses `address` (`UNFIT`, `NOT_LISTED` or `OVERSHOOT`: a 452), or None."""
        if UNFIT_TEXT.search(address):
            return UNFIT
        if self.settings.accept and not matches(address, self.settings.accept):
            return NOT_LISTED
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return OVERSHOOT
        return None

    def take_recipient(self, envelope: Envelope, address: str, options: list[str]) -> str:
        """Add a recipient `rcpt` accepts; return its 250."""
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
        # The store goes on even if the client vanishes or times out meanwhile (see StoreOutcome): the door
        # waits for its outcome before the writer is closed. A store in a task (large, or acknowledged on
        # receipt) hands its outcome on to this one.
        outcome = StoreOutcome(loop=server.loop)
        storing = self.door.storing
        storing.add(outcome)
        try:
            receipt = await self.door.runtime.pipeline.ingest_soon(delivery, outcome)
        except RetryLater:
            return RETRY_LATER
        except Exception:  # the client gets a retryable answer, never the exception text
            log.exception("unexpected error while storing a message from %s", server.peer_ip)
            return RETRY_LATER
        finally:
            storing.discard(outcome)
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
        # on every new connection (docs/performance.md), so the other doors go without.
        self.handler = (TlsWithoutAuthHandler if self.tls is not None and self.passwords is None else Handler)(self)
        self.sessions: set[SessionBase] = set()
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.storing: set[StoreOutcome] = set()  # the stores in flight, as their sessions await them
        self.closing = False
        self.server: asyncio.Server | None = None
        self.refused = RefusalSummary()
        self.refusal_report: asyncio.TimerHandle | None = None
        self.rate = ConnectionRate(self.settings.max_connection_rate)
        self.auth_penalty = AuthPenalty(self.settings.auth_failure_delay, self.settings.auth_failure_delay_max)
        self.auth_checks = AuthChecks(self.settings.max_auth_checks)
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

    def admit(self, conn: SessionBase) -> bytes | None:
        """Count a new session in, or return the 421 reply that refuses it.

        At a cap, a session that had no message accepted for `evict_after`
        seconds (since it started, if none) makes room (see `_idlest`): at
        max_per_ip one from the same address, at max_sessions one from an
        address holding more sessions than the newcomer's. So sessions that
        only idle, send junk or loop on commands (RCPT...) without ever
        delivering cannot lock out a client that sends mail, from another
        address or their own.
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

    def _idlest(self, newcomer: SessionBase, *, same_address: bool) -> SessionBase | None:
        """Return the session that may make room for `newcomer`, if any.

        That is the one longest without a message accepted (or since its
        start), so for at least evict_after seconds, and not storing a
        message, whose reply is still due; from the newcomer's own
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
            if c.last_accepted <= latest and not c.storing and not c.ended
            and (c.peer_ip == peer if same_address else self.per_ip[c.peer_ip] > share)
        )
        return min(candidates, key=lambda c: c.last_accepted, default=None)

    def _refuse(self, conn: SessionBase, reason: str, reply: bytes) -> bytes:
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

    def release(self, conn: SessionBase) -> None:
        """Count a finished session out."""
        if conn in self.sessions:
            self.sessions.discard(conn)
            self.per_ip[conn.peer_ip] -= 1
            if self.per_ip[conn.peer_ip] <= 0:
                del self.per_ip[conn.peer_ip]
            self.runtime.metrics.smtp_sessions.dec()
        if not self.sessions:
            self._idle.set()

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
        self.auth_checks.close()
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
