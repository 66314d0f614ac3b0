"""What extraction reads from a delivery: its `Event`s, each with its `Attempt`s, in an `Extraction`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from mailhook.models.json_text import to_json
from mailhook.models.quick_init import quick_init

TypeSource = Literal["payload", "config", "inferred"]

# The event types each figure and report groups by; the store's triggers and the reports read them here.
CALL_TYPES = ("OUTBOUND_CALL_FINISHED", "INBOUND_CALL_FINISHED")
TEXT_TYPES = ("OUTBOUND_TEXT_FINISHED", "INBOUND_TEXT_FINISHED")
CAMPAIGN_TYPES = ("CAMPAIGN_STARTED", "CAMPAIGN_STOPPED", "CAMPAIGN_FINISHED")


@quick_init
@dataclass(frozen=True, slots=True)
class Attempt:
    """One dial or send attempt: a TextRecord, CallRecord or v2 record."""

    record_id: int | None = None
    result: str | None = None
    finish_time: str | None = None
    billed_amount: Decimal | None = None
    duration: int | None = None
    originate_time: str | None = None
    answer_time: str | None = None
    message: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Return the `attempts` table columns (without ids) for this attempt."""
        return {
            "record_id": self.record_id,
            "result": self.result,
            "finish_time": self.finish_time,
            "billed_amount": _number(self.billed_amount),
            "duration": self.duration,
            "originate_time": self.originate_time,
            "answer_time": self.answer_time,
            "message": self.message,
            "payload": to_json(self.payload),
        }


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@quick_init
@dataclass(frozen=True, slots=True)
class Event:
    """One CallFire notification event, with the columns of the `events` table."""

    event_type: str
    event_type_source: TypeSource
    api_version: str
    format: str
    resource_type: str | None = None
    resource_id: int | None = None
    subscription_id: int | None = None
    account_id: int | None = None
    webhook_id: int | None = None
    from_number: str | None = None
    to_number: str | None = None
    inbound: bool | None = None
    state: str | None = None
    final_result: str | None = None
    message: str | None = None
    billed_amount: Decimal | None = None
    duration: int | None = None
    batch_id: int | None = None
    broadcast_id: int | None = None
    contact_id: int | None = None
    broadcast_name: str | None = None
    broadcast_status: str | None = None
    broadcast_type: str | None = None
    labels: tuple[str, ...] | None = None
    created: str | None = None
    modified: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()

    def row(self) -> dict[str, Any]:
        """Return the `events` table columns this event fills (not ids or times of storage)."""
        return {
            "dedupe_key": self.dedupe_key,
            "event_type": self.event_type,
            "event_type_source": self.event_type_source,
            "api_version": self.api_version,
            "format": self.format,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "subscription_id": self.subscription_id,
            "account_id": self.account_id,
            "webhook_id": self.webhook_id,
            "from_number": self.from_number,
            "to_number": self.to_number,
            "inbound": None if self.inbound is None else int(self.inbound),
            "state": self.state,
            "final_result": self.final_result,
            "message": self.message,
            "billed_amount": _number(self.billed_amount),
            "duration": self.duration,
            "batch_id": self.batch_id,
            "broadcast_id": self.broadcast_id,
            "contact_id": self.contact_id,
            "broadcast_name": self.broadcast_name,
            "broadcast_status": self.broadcast_status,
            "broadcast_type": self.broadcast_type,
            "labels": None if self.labels is None else to_json(list(self.labels)),
            "created": self.created,
            "modified": self.modified,
            "payload": to_json(self.payload),
            "transfer_duration": self.transfer_duration,
        }

    @property
    def transfer_duration(self) -> int | None:
        """Return the seconds of the transferred legs (XFER_LEG attempts), None for a call never transferred."""
        legs = [a.duration for a in self.attempts if a.result == "XFER_LEG" and a.duration is not None]
        return sum(legs) if legs else None

    @property
    def dedupe_key(self) -> str:
        """Return what makes two notifications the same event (docs/schema.md).

        Texts and calls finish once: event type + resource id. Campaign and
        other resource events can recur, so their last-modified time (or the
        status, or v2 timestamp) joins the key. Without a resource id the key
        is the hash of the canonical payload.
        """
        if self.resource_id is None:
            canonical = json.dumps(self.payload, sort_keys=True, default=str)
            return f"{self.event_type}:sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = f"{self.event_type}:{self.resource_type or ''}:{self.resource_id}"
        if self.event_type.startswith("CAMPAIGN_") or self.resource_type in RECURRING:
            key += f":{self.modified or self.broadcast_status or ''}"
        return key


# v2 resource types whose events can happen more than once per resource id.
RECURRING = frozenset(
    {
        "Broadcast",
        "CallBroadcast",
        "TextBroadcast",
        "CccCampaign",
        "ContactList",
        "MonthlyRenewal",
        "LowBalance",
    }
)


@quick_init
@dataclass(frozen=True, slots=True)
class Extraction:
    """What the extractor read from one delivery: events, or why there are none.

    Exactly one of `events` (non-empty) and `reason` is set. `notes` records
    anything done to read the input that an analyst should know about, such as
    a recovered malformed XML document.
    """

    events: tuple[Event, ...] = ()
    reason: str | None = None
    notes: tuple[str, ...] = ()
    message_id: str | None = None
    subject: str | None = None
