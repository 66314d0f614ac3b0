"""Read a human-readable notification (`Field: value` lines or an HTML field/value table) into Events.

The fields are mapped onto a v1.1-shaped notification and handed to the same
v1 reader the XML/JSON path uses, so both paths build the same events; only
`format` ('text'/'html'), `event_type_source` and the payload (the fields
exactly as read) differ.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from mailhook.errors import Unreadable
from mailhook.extract.text_lines import FIELDS, html_to_lines, line_pairs, norm, table_pairs
from mailhook.extract.text_v1 import id_digits, phone_value, v1_notification
from mailhook.extract.v1 import read_v1
from mailhook.models import Event

# A text needs a resource id or this many known fields to count as a notification.
MIN_KNOWN_FIELDS = 3
_WORDS = re.compile(r"[a-z]+")
_BLANK_VALUES = frozenset({"", "-", "--", "n/a", "na", "none", "null"})
_CAMPAIGN_WORDS = {
    "started": "STARTED",
    "start": "STARTED",
    "stopped": "STOPPED",
    "stop": "STOPPED",
    "finished": "FINISHED",
    "finish": "FINISHED",
    "completed": "FINISHED",
    "complete": "FINISHED",
}


def read_text(text: str, *, subject: str | None, subscriptions: Mapping[int, str], html: bool) -> list[Event]:
    """Read the notifications in a plain-text or HTML part; [] when it holds none."""
    return read_text_noted(text, subject=subject, subscriptions=subscriptions, html=html)[0]


def read_text_noted(
    text: str, *, subject: str | None, subscriptions: Mapping[int, str], html: bool
) -> tuple[list[Event], list[str]]:
    """Read the notifications in a plain-text or HTML part, with notes on lines whose place was a guess."""
    notes: list[str] = []
    if html:
        pairs = table_pairs(text) + line_pairs(html_to_lines(text), notes, html=True)
    else:
        pairs = line_pairs(text, notes, html=False)
    events: list[Event] = []
    for block in _blocks(pairs):
        event = _read_block(block, subject, subscriptions, "html" if html else "text")
        if event is not None:
            events.append(event)
    return events, notes



def _blocks(pairs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Split the pairs into one block per notification: a repeated id field starts the next."""
    blocks: list[list[tuple[str, str]]] = [[]]
    ids: set[str] = set()
    for label, value in pairs:
        canon = FIELDS.get(norm(label))
        if canon in ("text_id", "call_id") or (canon == "resource_id"):
            if canon in ids:
                blocks.append([])
                ids = set()
            ids.add(canon)
        blocks[-1].append((label, value))
    return [b for b in blocks if b]


def _read_block(
    block: list[tuple[str, str]], subject: str | None, subscriptions: Mapping[int, str], fmt: str
) -> Event | None:
    payload: dict[str, str] = {}
    known: dict[str, str] = {}
    for label, value in block:
        payload.setdefault(label, value)
        canon = FIELDS.get(norm(label))
        if canon in ("from", "to"):
            # "From: CallFire <noreply@…>" in a body is a person or an address, not a number.
            value = phone_value(value) or ""
        if canon and canon not in known:
            stripped = value.strip()
            if stripped.lower() not in _BLANK_VALUES:
                known[canon] = stripped
    named = _event_name(known.get("event")) or _event_name(subject)
    kind = _kind(named, known)
    ids = [k for k in _ID_FIELDS if k in known and (k != "broadcast_id" or kind == "Broadcast")]
    has_id = any(_is_id(known[k]) for k in ids)
    # A field named like an id whose value is no id (junk, a placeholder) is no sign of a notification.
    relevant = [k for k in known if k not in ("event", "labels") and (k not in _ID_FIELDS or _is_id(known[k]))]
    if not has_id and len(relevant) < MIN_KNOWN_FIELDS:
        return None
    if kind is None:
        raise Unreadable(
            f"{fmt} notification fields ({', '.join(sorted(known))}) but no sign of a text, call or campaign"
        )
    root, notification = v1_notification(kind, known, named)
    return read_v1(root, notification, fmt, subscriptions, payload=_payload(payload, subject), named=named)


def _payload(fields: dict[str, str], subject: str | None) -> dict[str, Any]:
    """Return an event's payload as read from text: the fields exactly as read, and the subject."""
    return {"fields": fields, **({"subject": subject} if subject else {})}


_ID_FIELDS = ("text_id", "call_id", "resource_id", "broadcast_id")


def _is_id(value: str) -> bool:
    """Say whether a field's value reads as a CallFire id (digits, perhaps grouped: '#1,234')."""
    digits = id_digits(value)
    return digits is not None and digits.isascii()


@functools.lru_cache(maxsize=256)  # subjects and event fields repeat across emails; a pure function of the text
def _event_name(text: str | None) -> str | None:
    """Name the trigger event in phrases like "Outbound Text Finished" or "CAMPAIGN_STOPPED"."""
    if not text:
        return None
    words = _WORDS.findall(text.lower().replace("_", " "))
    if "campaign" in words or "broadcast" in words:
        for word in words:
            if word in _CAMPAIGN_WORDS:
                return f"CAMPAIGN_{_CAMPAIGN_WORDS[word]}"
        return None
    noun = "TEXT" if {"text", "sms"} & set(words) else "CALL" if "call" in words else None
    if noun is None:
        return None
    if {"inbound", "incoming"} & set(words):
        return f"INBOUND_{noun}_FINISHED"
    if {"outbound", "outgoing"} & set(words):
        return f"OUTBOUND_{noun}_FINISHED"
    return None


def _kind(named: str | None, known: Mapping[str, str]) -> str | None:
    if named:
        return "Broadcast" if named.startswith("CAMPAIGN") else "Text" if "_TEXT_" in named else "Call"
    if "text_id" in known or "message" in known:
        return "Text"
    if "call_id" in known or any(k in known for k in ("duration", "answer_time", "originate_time")):
        return "Call"
    if "name" in known or "status" in known:
        return "Broadcast"
    return None
