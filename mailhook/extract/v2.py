"""Turn a v2 webhook envelope (`events` list of resource events) into Events.

Resource types and event names are matched case-insensitively and stored in
their documented spelling. Campaign resources (CallBroadcast, TextBroadcast,
CccCampaign) map onto the v1.1 `CAMPAIGN_*` event types so one query finds
every campaign event; every other event becomes `RESOURCE_EVENT` in upper
snake case, e.g. `ContactList` + `ValidationFinished` ->
`CONTACT_LIST_VALIDATION_FINISHED`. Unknown names are kept as sent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from mailhook.errors import Unreadable
from mailhook.extract.times import to_time
from mailhook.extract.v1 import call_seconds, sum_amounts
from mailhook.extract.values import (
    as_list,
    is_mapping,
    to_bool,
    to_decimal,
    to_int,
    to_labels,
    to_text,
)
from mailhook.models import Attempt, Event

RESOURCE_TYPES = (
    "OutboundCall",
    "InboundCall",
    "OutboundText",
    "InboundText",
    "CallBroadcast",
    "TextBroadcast",
    "CccCampaign",
    "ContactList",
    "OutboundTextDeliveryReport",
    "MonthlyRenewal",
    "LowBalance",
)
EVENT_NAMES = (
    "Finished",
    "Started",
    "Stopped",
    "ValidationFinished",
    "ValidationFailed",
    "Received",
    "Failed",
)
CAMPAIGNS = frozenset({"CallBroadcast", "TextBroadcast", "CccCampaign"})
_CANONICAL_RESOURCE = {name.lower(): name for name in RESOURCE_TYPES}
_CANONICAL_EVENT = {name.lower(): name for name in EVENT_NAMES} | {"start": "Started", "stop": "Stopped"}
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_WORD = re.compile(r"[^A-Za-z0-9]+")


def is_v2(document: Mapping[str, Any]) -> bool:
    """Say whether a JSON object is a v2 envelope or a single v2 event."""
    return isinstance(document.get("events"), list) or ("eventType" in document and "resource" in document)


def read_v2(document: Mapping[str, Any]) -> list[Event]:
    """Read every event of a v2 envelope (or of one bare v2 event)."""
    if "events" in document:
        envelope = {k: v for k, v in document.items() if k != "events"}
        events = document["events"]
        if not isinstance(events, list):
            raise Unreadable("v2 envelope: `events` is not a list")
    else:
        envelope, events = {}, [document]
    return [_event(i, item, envelope) for i, item in enumerate(events)]


def event_type_for(resource_type: str, event_name: str) -> str:
    """Return the stored event type for a (canonical) v2 resource type and event name."""
    if resource_type in CAMPAIGNS and event_name in ("Started", "Stopped", "Finished"):
        return f"CAMPAIGN_{event_name.upper()}"
    return f"{upper_snake(resource_type)}_{upper_snake(event_name)}"


def upper_snake(name: str) -> str:
    """Turn `OutboundTextDeliveryReport` into `OUTBOUND_TEXT_DELIVERY_REPORT`."""
    words = _NOT_WORD.sub("_", _CAMEL_BOUNDARY.sub("_", name.strip())).strip("_")
    return words.upper() or "UNKNOWN"


def _event(index: int, item: Any, envelope: Mapping[str, Any]) -> Event:
    where = f"v2 events[{index}]"
    if not is_mapping(item):
        raise Unreadable(f"{where}: expected an object")
    names = _names(where)
    raw_type = to_text(item.get("resourceType", envelope.get("resourceType")), names["resourceType"])
    raw_event = to_text(item.get("eventType"), names["eventType"])
    if raw_type is None or raw_event is None:
        raise Unreadable(f"{where}: no resourceType or eventType")
    resource_type = _CANONICAL_RESOURCE.get(raw_type.strip().lower(), raw_type)
    event_name = _CANONICAL_EVENT.get(raw_event.strip().lower(), raw_event)
    resource = item.get("resource") or {}
    if not is_mapping(resource):
        raise Unreadable(f"{where}.resource: expected an object")
    fields = _resource_fields(resource, resource_type, names["resource"])
    if fields["modified"] is None:
        fields["modified"] = to_time(item.get("timestamp", envelope.get("timestamp")), names["timestamp"])
    # The event's own keywords added to the fields' dict (no name is in both), not merged into a third by the call.
    fields["event_type"] = event_type_for(resource_type, event_name)
    fields["event_type_source"] = "payload"
    fields["api_version"] = "2"
    fields["format"] = "json"
    fields["resource_type"] = resource_type
    fields["resource_id"] = to_int(resource.get("id"), names["resource.id"])
    fields["webhook_id"] = to_int(item.get("webhookId", envelope.get("webhookId")), names["webhookId"])
    fields["payload"] = {**envelope, "events": [item]}
    return Event(**fields)


def _resource_fields(resource: Mapping[str, Any], resource_type: str, where: str) -> dict[str, Any]:
    """Read the columns a resource carries; a webhook `fields` filter may have removed any of them."""
    names = _names(where)
    attempts = tuple(
        _attempt(r, f"{where}.records[{i}]") for i, r in enumerate(as_list(resource.get("records")))
    )
    contact = resource.get("contact")
    contact_id = contact.get("id") if is_mapping(contact) else resource.get("contactId")
    message = to_text(resource.get("message"), names["message"])
    if message is None and "Text" in resource_type:
        message = next((a.message for a in reversed(attempts) if a.message is not None), None)
    billed = to_decimal(resource.get("billedAmount"), names["billedAmount"])
    duration = to_int(resource.get("duration"), names["duration"])
    campaign = resource_type in CAMPAIGNS
    return {
        "account_id": to_int(resource.get("accountId"), names["accountId"]),
        "from_number": to_text(resource.get("fromNumber"), names["fromNumber"]),
        "to_number": to_text(resource.get("toNumber"), names["toNumber"]),
        "inbound": to_bool(resource.get("inbound"), names["inbound"]),
        "state": to_text(
            _first(resource, "state", "deliveryState", *(() if campaign else ("status",))), names["state"]
        ),
        "final_result": to_text(
            _first(resource, "finalCallResult", "finalTextResult", "finalResult", "deliveryCategory"),
            names["finalResult"],
        ),
        "message": message,
        "billed_amount": billed if billed is not None else sum_amounts(a.billed_amount for a in attempts),
        "duration": duration if duration is not None else call_seconds(attempts),
        "batch_id": to_int(resource.get("batchId"), names["batchId"]),
        "broadcast_id": to_int(
            resource.get("id") if campaign else resource.get("campaignId"), names["campaignId"]
        ),
        "contact_id": to_int(contact_id, names["contact.id"]),
        "broadcast_name": to_text(resource.get("name"), names["name"]) if campaign else None,
        "broadcast_status": to_text(resource.get("status"), names["status"]) if campaign else None,
        "broadcast_type": to_text(resource.get("type"), names["type"]) if campaign else None,
        "labels": to_labels(resource.get("labels"), names["labels"]),
        "created": to_time(resource.get("created"), names["created"]),
        "modified": to_time(_first(resource, "modified", "lastModified", "timestamp"), names["modified"]),
        "attempts": attempts,
    }


def _attempt(record: Any, where: str) -> Attempt:
    if not is_mapping(record):
        raise Unreadable(f"{where}: expected an object")
    names = _names(where)
    return Attempt(
        record_id=to_int(record.get("id"), names["id"]),
        result=to_text(_first(record, "result", "callResult", "textResult"), names["result"]),
        finish_time=to_time(record.get("finishTime"), names["finishTime"]),
        billed_amount=to_decimal(record.get("billedAmount"), names["billedAmount"]),
        duration=to_int(record.get("duration"), names["duration"]),
        originate_time=to_time(record.get("originateTime"), names["originateTime"]),
        answer_time=to_time(record.get("answerTime"), names["answerTime"]),
        message=to_text(record.get("message"), names["message"]),
        payload=dict(record),
    )


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    """Return the first present value among alternative field names."""
    return next((mapping[k] for k in keys if mapping.get(k) is not None), None)


# Every name a field of an event, its resource or a record is reported by, as `_names` writes them.
_FIELDS = (
    "resourceType", "eventType", "resource", "timestamp", "resource.id", "webhookId",
    "message", "billedAmount", "duration", "accountId", "fromNumber", "toNumber", "inbound", "state", "finalResult",
    "batchId", "campaignId", "contact.id", "name", "status", "type", "labels", "created", "modified",
    "id", "result", "finishTime", "originateTime", "answerTime",
)  # fmt: skip


@functools.lru_cache(maxsize=64)  # events[0], its resource and its first records, for nearly every envelope
def _names(where: str) -> dict[str, str]:
    """Return the names the fields under `where` are reported by, made once instead of an f-string per field."""
    return {field: f"{where}.{field}" for field in _FIELDS}
