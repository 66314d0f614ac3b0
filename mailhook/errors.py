"""The exception tree every door maps once onto its protocol's answers."""

from __future__ import annotations


class MailhookError(Exception):
    """Base of every error mailhook raises on purpose."""


class Rejected(MailhookError):
    """A door refused the input before anything was stored; the message says why, `reason` labels it.

    `reason` is the label `mailhook_rejected_total` counts it under. The HTTP
    door maps each class to its status once (`mailhook.http.door.STATUS`).
    """

    reason = "malformed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TooLarge(Rejected):
    """The input is over the configured size limit."""

    reason = "too_large"


class Unauthorized(Rejected):
    """The request lacks valid credentials (token, password or signature)."""

    reason = "unauthorized"


class TimedOut(Rejected):
    """The client did not send the whole input within its time limit."""

    reason = "timeout"


class Busy(Rejected):
    """The server has no room for the input right now (a budget is spent); the sender should retry soon."""

    reason = "busy"


class RetryLater(MailhookError):
    """A temporary failure (storage unavailable): the sender should retry."""


class Unreadable(MailhookError):
    """A payload could not be read as a CallFire notification.

    Raised inside the extractors only; `extract()` turns it into the
    quarantine reason of its result and never lets it escape.
    """


class ConfigError(MailhookError):
    """A configuration value or key is wrong; the message names it."""
