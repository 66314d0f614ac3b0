"""The SMTP door's aiosmtpd hooks (`Handler`): who may send to whom, and each message stored before its answer.

MAIL's and RCPT's rules (`sender_refusal`, `recipient_refusal`) are asked by
the hooks and by the session's answers at once (smtp/mail_rcpt.py); DATA hands
the message to the pipeline and answers once it is durable (`StoreOutcome`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Envelope, Session

from mailhook.errors import RetryLater
from mailhook.handover import Outcome
from mailhook.logs import logfmt
from mailhook.models import Delivery, utcnow
from mailhook.smtp.auth import PasswordAuth
from mailhook.smtp.connection import RCPT_OVERSHOOT
from mailhook.smtp.fastpath import hook_names
from mailhook.smtp.limits import UNFIT_TEXT

if TYPE_CHECKING:
    from mailhook.smtp.door import SmtpDoor
    from mailhook.smtp.session import Connection

log = logging.getLogger("mailhook.smtp")

RETRY_LATER = "451 4.3.0 Storage temporarily unavailable, please try again later"
# Why MAIL or RCPT is refused (`Handler.sender_refusal`, `Handler.recipient_refusal`): one rule for the
# hook's answer and for the session's answer at once, which asks first.
UNFIT = "unfit"  # not UTF-8, or a control character
NOT_LISTED = "not listed"  # outside the sender allow-list, or the accepted recipients
OVERSHOOT = "overshoot"  # one recipient past max_recipients


class StoreOutcome(Outcome):
    """A message's store, as the session awaits it: cancelling the session (its connection lost) does not cancel it.

    asyncio's Task, cancelled while it awaits a future that refuses the
    cancel, raises `CancelledError` in its coroutine at its next step: here
    once the store is done, its outcome retrieved and dropped. So the store
    goes on, the door's `close` waits for it (`SmtpDoor.storing`), and the
    message's in-flight bytes are given back when it is done, whether the
    store runs on the loop or in a task (`Pipeline.ingest_soon` copies the
    task's outcome into this future): one way to await a store, without a
    second future, its callback and the loop's turn between them
    (docs/performance-log.md, smtp-door7, smtp8). The pipeline, which resolves
    it, cancels it by `Outcome.drop`. A reply written at once (smtp/body_at_once.py)
    is its `then`, called in the loop turn that settles it (smtp11).
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
        outcome = self.store(server, envelope)
        try:
            await outcome
        except asyncio.CancelledError:  # the session is cancelled once the store is done (see StoreOutcome)
            self.door.storing.discard(outcome)
            raise
        except Exception:  # noqa: BLE001 - answered from the outcome itself, by `stored_reply`
            pass
        return self.stored_reply(server, outcome)

    def store(self, server: Connection, envelope: Envelope) -> StoreOutcome:
        """Start storing the envelope's message; return its outcome, which `stored_reply` answers once done.

        Called by `handle_DATA`, and without a coroutine by the session that
        took a whole body as it arrived (smtp/body_at_once.py).
        """
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
        self.door.storing.add(outcome)
        try:
            self.door.runtime.pipeline.ingest_soon(delivery, outcome)
        except Exception as exc:  # noqa: BLE001 - answered as the store's own failure, by `stored_reply`
            if not outcome.done():
                outcome.set_exception(exc)
        return outcome

    def stored_reply(self, server: Connection, outcome: StoreOutcome) -> str:
        """Answer a finished store (`store`): 250 with its receipt, or 451 so the sender retries."""
        self.door.storing.discard(outcome)
        error = outcome.exception()
        if error is None:
            receipt = outcome.result()
            server.accepted()
            return f"250 2.0.0 OK delivery {receipt.delivery_id} {receipt.status}"
        if not isinstance(error, RetryLater):  # the client gets a retryable answer, never the exception text
            log.error("unexpected error while storing a message from %s", server.peer_ip, exc_info=error)
        return RETRY_LATER

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
