"""Turn a v1.1 notification dict (from XML, SOAP or JSON alike) into Events.

The three roots are `TextNotification` (Text), `CallFinished` (Call) and
`BroadcastNotification` (Broadcast). The payload never names its trigger
event: a configured `SubscriptionId -> TriggerEvent` map wins, otherwise it is
inferred from `Inbound` (texts, calls) or `Status` (campaigns).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from mailhook.errors import Unreadable
from mailhook.extract.times import to_time
from mailhook.extract.values import (
    as_list,
    is_mapping,
    text_of,
    to_bool,
    to_decimal,
    to_int,
    to_labels,
    to_text,
)
from mailhook.models import Attempt, Event

# root element -> (resource child, record element, event noun)
ROOTS: dict[str, tuple[str, str, str]] = {
    "TextNotification": ("Text", "TextRecord", "TEXT"),
    "CallFinished": ("Call", "CallRecord", "CALL"),
    "BroadcastNotification": ("Broadcast", "", "CAMPAIGN"),
}
_BROADCAST_CONFIGS = (
    "VoiceBroadcastConfig",
    "TextBroadcastConfig",
    "IvrBroadcastConfig",
    "CccBroadcastConfig",
)
_STARTED = frozenset({"RUNNING", "START_PENDING"})


def read_v1(
    root: str,
    notification: Any,
    fmt: str,
    subscriptions: Mapping[int, str],
    *,
    payload: dict[str, Any] | None = None,
    named: str | None = None,
) -> Event:
    """Read one v1.1 notification whose root element is `root` into an Event.

    `payload` replaces the notification as the event's payload, and `named` (an event type the sender
    named) the inferred one unless a subscription is configured: the text reader builds its event in one go.
    """
    if not is_mapping(notification):
        raise Unreadable(f"{root}: expected an element with children")
    resource_name, record_name, noun = ROOTS[root]
    resource = notification.get(resource_name)
    if not is_mapping(resource):
        raise Unreadable(f"{root}: no {resource_name} element")
    subscription_id = to_int(notification.get("SubscriptionId"), "SubscriptionId")
    common: dict[str, Any] = {
        "api_version": "1.1",
        "format": fmt,
        "resource_type": resource_name,
        "resource_id": to_int(_id(resource), f"{resource_name} id"),
        "subscription_id": subscription_id,
        "account_id": to_int(notification.get("AccountId"), "AccountId"),
        "payload": {root: notification} if payload is None else payload,
    }
    configured = subscriptions.get(subscription_id) if subscription_id is not None else None
    if noun == "CAMPAIGN":
        fields = _broadcast_fields(resource)
        inferred = _campaign_event(fields["broadcast_status"])
    else:
        fields = _action_fields(resource, record_name, noun)
        inferred = f"{'INBOUND' if fields['inbound'] else 'OUTBOUND'}_{noun}_FINISHED"
    # One dict of keywords, not two merged into a third by the call (no name is in both).
    common.update(fields)
    if configured:
        common["event_type"], common["event_type_source"] = configured, "config"
    elif named:
        common["event_type"], common["event_type_source"] = named, "payload"
    else:
        common["event_type"], common["event_type_source"] = inferred, "inferred"
    return Event(**common)


def _action_fields(resource: Mapping[str, Any], record_name: str, noun: str) -> dict[str, Any]:
    """Read a Text or Call and its attempt records."""
    attempts = tuple(_attempt(r, record_name) for r in as_list(resource.get(record_name)))
    message = to_text(resource.get("Message"), "Message")
    if message is None and noun == "TEXT":
        message = next((a.message for a in reversed(attempts) if a.message is not None), None)
    billed = to_decimal(resource.get("BilledAmount"), "BilledAmount")
    duration = to_int(resource.get("Duration"), "Duration")
    return {
        "from_number": to_text(resource.get("FromNumber"), "FromNumber"),
        "to_number": to_text(resource.get("ToNumber"), "ToNumber"),
        "inbound": to_bool(resource.get("Inbound"), "Inbound"),
        "state": to_text(resource.get("State"), "State"),
        "final_result": to_text(resource.get("FinalResult"), "FinalResult"),
        "message": message,
        "billed_amount": billed if billed is not None else sum_amounts(a.billed_amount for a in attempts),
        "duration": duration if duration is not None else call_seconds(attempts),
        "batch_id": to_int(resource.get("BatchId"), "BatchId"),
        "broadcast_id": to_int(resource.get("BroadcastId"), "BroadcastId"),
        "contact_id": to_int(resource.get("ContactId"), "ContactId"),
        "labels": to_labels(resource.get("Label"), "Label"),
        "created": to_time(resource.get("Created"), "Created"),
        "modified": to_time(resource.get("Modified"), "Modified"),
        "attempts": attempts,
    }


def _attempt(record: Any, name: str) -> Attempt:
    if not is_mapping(record):
        raise Unreadable(f"{name}: expected an element with children")
    names = _field_names(name)
    return Attempt(
        record_id=to_int(_id(record), names["id"]),
        result=to_text(record.get("Result"), names["Result"]),
        finish_time=to_time(record.get("FinishTime"), names["FinishTime"]),
        billed_amount=to_decimal(record.get("BilledAmount"), names["BilledAmount"]),
        duration=to_int(record.get("Duration"), names["Duration"]),
        originate_time=to_time(record.get("OriginateTime"), names["OriginateTime"]),
        answer_time=to_time(record.get("AnswerTime"), names["AnswerTime"]),
        message=to_text(record.get("Message"), names["Message"]),
        payload=dict(record),
    )


@functools.lru_cache(maxsize=8)  # called with the two record element names
def _field_names(record: str) -> dict[str, str]:
    """Return the names a record's fields are reported by (made once, not eight f-strings per record)."""
    return {"id": f"{record} id"} | {
        field: f"{record}/{field}"
        for field in ("Result", "FinishTime", "BilledAmount", "Duration", "OriginateTime", "AnswerTime", "Message")
    }


def _broadcast_fields(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Read a Broadcast; its config (kept whole in the payload) gives created and from number."""
    config: Mapping[str, Any] = next(
        (resource[k] for k in _BROADCAST_CONFIGS if is_mapping(resource.get(k))), {}
    )
    resource_id = to_int(_id(resource), "Broadcast id")
    return {
        "broadcast_id": resource_id,
        "broadcast_name": to_text(resource.get("Name"), "Name"),
        "broadcast_status": to_text(resource.get("Status"), "Status"),
        "broadcast_type": to_text(resource.get("Type"), "Type"),
        "labels": to_labels(resource.get("Label"), "Label"),
        "from_number": to_text(config.get("FromNumber"), "FromNumber"),
        "created": to_time(config.get("Created"), "Created"),
        "modified": to_time(resource.get("LastModified"), "LastModified"),
    }


def _campaign_event(status: str | None) -> str:
    """Infer a campaign trigger from its status; only a hint, the subscription map wins."""
    normalized = (status or "").strip().upper()
    if normalized in _STARTED:
        return "CAMPAIGN_STARTED"
    if normalized == "STOPPED":
        return "CAMPAIGN_STOPPED"
    return "CAMPAIGN_FINISHED"


def _id(element: Mapping[str, Any]) -> Any:
    """Return an element's id: XML attribute `id` (read as `@id`) or JSON `@id` / `id`."""
    value = element.get("@id", element.get("id"))
    return text_of(value)


def sum_amounts(values: Any) -> Decimal | None:
    """Sum the present amounts, or None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present, Decimal(0)) if present else None


def call_seconds(attempts: tuple[Attempt, ...]) -> int | None:
    """Sum the seconds of the attempts that dialled the contact; a transfer's XFER_LEG is not one of them."""
    return sum_ints(a.duration for a in attempts if a.result != "XFER_LEG")


def sum_ints(values: Any) -> int | None:
    """Sum the present integers, or None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None
