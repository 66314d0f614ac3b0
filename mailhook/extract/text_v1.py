"""Build the v1.1 notification dict a text's known fields make, and read each field's value as v1.1 writes it.

Pure helpers of `mailhook.extract.text`: the dict is shaped as xmltodict would
read the same notification sent as XML, so the v1 reader builds the same events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from mailhook.extract.times import is_utc_text

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_DIGITS = re.compile(r"\d+")
_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d{2})")
_UNITS = re.compile(r"\s*(?:(\d+)\s*m(?:in(?:utes?)?)?)?\s*(?:(\d+)\s*s(?:ec(?:onds?)?)?)?\s*")
_LABEL_SEPARATOR = re.compile(r"[,;]")
_CONFIGS = {"TEXT": "TextBroadcastConfig", "IVR": "IvrBroadcastConfig", "CCC": "CccBroadcastConfig"}


def v1_notification(kind: str, known: Mapping[str, str], named: str | None) -> tuple[str, dict[str, Any]]:
    """Build the v1.1 notification dict (as xmltodict would read it) from the known fields."""
    get = known.get
    envelope: dict[str, Any] = {"SubscriptionId": id_digits(get("subscription_id"))}
    envelope["AccountId"] = id_digits(get("account_id"))
    labels = [s.strip() for s in _LABEL_SEPARATOR.split(get("labels") or "") if s.strip()] or None
    if kind == "Broadcast":
        config = _present({"FromNumber": get("from"), "Created": time_value(get("created"))})
        resource: dict[str, Any] = {
            "@id": id_digits(get("broadcast_id") or get("resource_id")),
            "Name": get("name"),
            "Status": (get("status") or "").upper() or None,
            "Type": (get("type") or "").upper() or None,
            "Label": labels,
            "LastModified": time_value(get("modified")),
            _CONFIGS.get((get("type") or "").strip().upper(), "VoiceBroadcastConfig"): config,
        }
        return "BroadcastNotification", _present({**envelope, "Broadcast": _present(resource)})
    inbound = _inbound(get("inbound"), get("direction"), named)
    record = {
        "@id": id_digits(get("record_id")),
        "Result": get("result") or get("final_result"),
        "FinishTime": time_value(get("finish_time")),
        "BilledAmount": _amount(get("billed_amount")),
        "Duration": _seconds(get("duration")) if kind == "Call" else None,
        "OriginateTime": time_value(get("originate_time")),
        "AnswerTime": time_value(get("answer_time")),
    }
    has_record = any(v is not None for k, v in record.items() if k != "@id")
    resource = {
        "@id": id_digits(get("text_id") if kind == "Text" else get("call_id")) or id_digits(get("resource_id")),
        "FromNumber": get("from"),
        "ToNumber": get("to"),
        "State": (get("state") or _status_state(get("status")) or "").upper() or None,
        "BatchId": id_digits(get("batch_id")),
        "BroadcastId": id_digits(get("broadcast_id")),
        "ContactId": id_digits(get("contact_id")),
        "Inbound": None if inbound is None else str(inbound).lower(),
        "Created": time_value(get("created")),
        "Modified": time_value(get("modified")),
        "FinalResult": get("final_result") or get("result") or _status_result(get("status")),
        "Message": get("message") if kind == "Text" else None,
        "Label": [{"Name": label} for label in labels] if labels else None,
    }
    record_name = "TextRecord" if kind == "Text" else "CallRecord"
    if has_record:
        resource[record_name] = _present(record)
    root = "TextNotification" if kind == "Text" else "CallFinished"
    return root, _present({**envelope, kind: _present(resource)})


_STATES = frozenset(
    {
        "READY", "SELECTED", "CALLBACK", "FINISHED", "DISABLED", "SKIPPED", "DNC", "DUP", "INVALID", "TIMEOUT",
        "PERIOD_LIMIT", "RESTRICTED_NUMBER",
    }
)
_PHONE = re.compile(r"\+?[\d\s().-]{3,}")
_SENDER_ID = re.compile(r"[A-Za-z0-9]{1,15}")


def phone_value(value: str) -> str | None:
    """Return the value, as sent, when it reads as a phone number, a short code or a sender id."""
    text = value.strip()
    if _PHONE.fullmatch(text) and sum(map(str.isdigit, text)) >= 3:
        return text
    return text if _SENDER_ID.fullmatch(text) else None


def _status_state(status: str | None) -> str | None:
    """A text's or call's `Status` that names a state (FINISHED …) is its State."""
    return status.strip().upper() if status and status.strip().upper() in _STATES else None


def _status_result(status: str | None) -> str | None:
    """A text's or call's `Status` that is no state (SENT, LA …) is its result."""
    if not status or status.strip().upper() in _STATES:
        return None
    return status.strip().upper().replace(" ", "_")


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _inbound(flag: str | None, direction: str | None, named: str | None) -> bool | None:
    if flag is not None and flag.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return flag.strip().lower() in ("true", "yes", "1")
    if direction:
        word = direction.strip().lower()
        if word.startswith(("in", "incoming")):
            return True
        if word.startswith(("out", "outgoing")):
            return False
    if named and not named.startswith("CAMPAIGN"):
        return named.startswith("INBOUND")
    return None


def id_digits(value: str | None) -> str | None:
    """Return an id's digits ('#1,234' -> '1234'), or None when it holds no number."""
    if value is None:
        return None
    cleaned = value.replace(",", "").replace("#", "").strip()
    return cleaned if cleaned.isascii() and cleaned.isdigit() else None


def _amount(value: str | None) -> str | None:
    m = _NUMBER.search(value or "")
    return m.group(0) if m else None


def _seconds(value: str | None) -> str | None:
    """Read a duration as seconds: '45', '45 seconds', '1:05', '0:01:05' or '1m 5s'."""
    if not value:
        return None
    clock = _CLOCK.fullmatch(value.strip())
    if clock:
        hours, minutes, secs = (int(g or 0) for g in clock.groups())
        return str(hours * 3600 + minutes * 60 + secs)
    unit = _UNITS.fullmatch(value)
    if unit and any(unit.groups()):
        return str(int(unit.group(1) or 0) * 60 + int(unit.group(2) or 0))
    m = _DIGITS.fullmatch(value.strip())
    return m.group(0) if m else None


# The zone names a US company's emails use; CallFire is in Los Angeles.
_ZONES = {
    "UTC": "+00:00", "GMT": "+00:00", "Z": "+00:00",
    "PST": "-08:00", "PDT": "-07:00", "MST": "-07:00", "MDT": "-06:00",
    "CST": "-06:00", "CDT": "-05:00", "EST": "-05:00", "EDT": "-04:00",
}


def time_value(value: str | None) -> str | None:
    """Return a time the v1 reader accepts (ISO 8601), or None when it is not recognisable.

    An unrecognised time stays in the payload exactly as sent rather than
    failing the whole notification.
    """
    if not value:
        return None
    text = value.strip()
    if is_utc_text(text):
        return text[:-1] + "+00:00"  # what fromisoformat and isoformat below make of it
    zone = text.rsplit(" ", 1)[-1].upper() if " " in text else ""
    if zone in _ZONES:
        text = text[: -len(zone)].strip() + _ZONES[zone]
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        moment = None
    if moment is not None:
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
    for pattern in (
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y %I:%M %p",
        "%m/%d/%Y %H:%M",
        "%b %d, %Y %I:%M:%S %p",
        "%b %d, %Y %I:%M %p",
        "%B %d, %Y %I:%M %p",
    ):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC).isoformat()
        except ValueError:
            continue
    return None
