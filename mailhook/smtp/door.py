"""The SMTP door: an aiosmtpd server on mailhook's own event loop that answers 250 only once stored.

Every accepted message becomes a `Delivery` handed to the pipeline; the reply
to DATA waits until the group-commit writer has made it durable. Policy
(recipient and sender allow-lists, size, session caps, timeouts, STARTTLS and
AUTH) is enforced here and in the hooks (smtp/handler.py), before anything
reaches the pipeline.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from mailhook.config.addresses import parse_address, refuse_open_relay
from mailhook.config.settings import SmtpSettings
from mailhook.errors import ConfigError
from mailhook.smtp.auth import AuthChecks, PasswordFile, tls_context
from mailhook.smtp.connection import SHUTTING_DOWN, SessionBase
from mailhook.smtp.handler import Handler, StoreOutcome, TlsWithoutAuthHandler
from mailhook.smtp.limits import AuthPenalty, ConnectionRate, RefusalSummary
from mailhook.smtp.session import Connection

if TYPE_CHECKING:
    from mailhook.server import Runtime

log = logging.getLogger("mailhook.smtp")

IDENT = "ESMTP mailhook"
TOO_MANY_SESSIONS = b"421 4.3.2 Too many connections, please try again later\r\n"
TOO_MANY_FROM_ADDRESS = b"421 4.7.0 Too many connections from your address, please try again later\r\n"
TOO_FAST = b"421 4.7.0 Too many connections from your address in the last minute, please slow down\r\n"


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
        # on every new connection (docs/performance.md, "Where the code is shaped for speed"),
        # so the other doors go without.
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
