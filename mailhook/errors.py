"""The exception tree every door maps once onto its protocol's answers."""

from __future__ import annotations


class MailhookError(Exception):
    """Base of every error mailhook raises on purpose."""


class Rejected(MailhookError):
    """A permanent refusal: the sender must not retry the same input."""


class TooLarge(Rejected):
    """The input is over the configured size limit; nothing was stored."""


class Unauthorized(Rejected):
    """The request lacks valid credentials; nothing was stored."""


class RetryLater(MailhookError):
    """A temporary failure (storage unavailable): the sender should retry."""


class Unreadable(MailhookError):
    """A payload could not be read as a CallFire notification.

    Raised inside the extractors only; `extract()` turns it into the
    quarantine reason of its result and never lets it escape.
    """


class ConfigError(MailhookError):
    """A configuration value or key is wrong; the message names it."""
