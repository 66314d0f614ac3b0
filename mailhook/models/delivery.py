"""What a door hands the pipeline (`Delivery`, with its IMAP `FolderPosition`) and what it gets back (`Receipt`)."""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from typing import Literal

from mailhook.models.quick_init import quick_init

Channel = Literal["smtp", "imap", "http", "file"]
Kind = Literal["email", "document"]


def kind_of(raw: bytes) -> Kind:
    """Say whether raw bytes are a bare notification document or an email, from the first non-blank byte."""
    return "document" if raw.lstrip()[:1] in (b"<", b"{", b"[") else "email"


def stored_kind(channel: str, raw: bytes) -> Kind:
    """Say how a stored delivery's raw bytes are read: emails, or bare documents (HTTP, .xml/.json)."""
    if channel in ("smtp", "imap"):
        return "email"
    if channel == "http":
        return "document"
    return kind_of(raw)


def utcnow() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds and a Z."""
    now = time.time()
    second = int(now)
    return f"{_utc_second(second)}.{int((now - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    # Called twice per delivery: each second is formatted once
    # (docs/performance.md, "Where the code is shaped for speed").
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


# `pending`: the raw bytes are stored and acknowledged, their events not yet extracted.
Status = Literal["stored", "duplicate", "quarantined", "pending"]


@dataclass(frozen=True, slots=True)
class FolderPosition:
    """How far an IMAP folder has been read; stored in the same transaction as the delivery."""

    account: str
    folder: str
    uidvalidity: int
    uid: int


@quick_init
@dataclass(frozen=True, slots=True)
class Delivery:
    """One thing received: an email, an HTTP body or a file, with its envelope.

    `kind` says how to read `raw`: `email` is an RFC 5322 message (SMTP, IMAP,
    .eml, mbox), `document` is a bare notification body (HTTP POST, .xml/.json).
    """

    channel: Channel
    raw: bytes
    received_at: str
    kind: Kind = "email"
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()
    remote_addr: str | None = None
    content_type: str | None = None
    source: str | None = None
    position: FolderPosition | None = None

    @property
    def sha256(self) -> str:
        """Return the hex SHA-256 of the raw bytes."""
        return hashlib.sha256(self.raw).hexdigest()



@quick_init
@dataclass(frozen=True, slots=True)
class Receipt:
    """The durable outcome of one delivery, handed back to the door that sent it."""

    delivery_id: int
    status: Status
    events: int = 0
    duplicates: int = 0
    error: str | None = None
    message_id: str | None = None
    # The event types of the new events, in order (for metrics by type).
    event_types: tuple[str, ...] = ()
