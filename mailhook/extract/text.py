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
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from mailhook.errors import Unreadable
from mailhook.extract.embedded import drop_hidden, unescape
from mailhook.extract.v1 import read_v1
from mailhook.extract.values import is_utc_text
from mailhook.models import Event

# A text needs a resource id or this many known fields to count as a notification.
MIN_KNOWN_FIELDS = 3
_MAX_LINES = 5000

# Normalized field name (lower case, letters and digits only) -> canonical field.
_ALIASES: dict[str, tuple[str, ...]] = {
    "text_id": ("textid", "smsid", "messageid", "textmessageid"),
    "call_id": ("callid",),
    "resource_id": ("id", "resourceid", "actionid"),
    "broadcast_id": ("broadcastid", "campaignid"),
    "from": ("from", "fromnumber", "fromphone", "fromphonenumber", "callerid", "sendernumber"),
    "to": ("to", "tonumber", "tophone", "tophonenumber", "recipientnumber", "recipient", "phone", "phonenumber",
           "contactnumber"),
    "state": ("state",),
    "status": ("status", "broadcaststatus", "campaignstatus"),
    "final_result": ("finalresult", "finaltextresult", "finalcallresult"),
    "result": ("result", "textresult", "callresult"),
    "batch_id": ("batchid",),
    "contact_id": ("contactid",),
    "inbound": ("inbound",),
    "direction": ("direction",),
    "created": ("created", "createdon", "createdat", "createdate", "started", "startedat", "starttime", "sentat",
                "senttime", "receivedat", "receivedtime", "date", "time", "datetime", "timestamp"),
    "modified": ("modified", "modifiedon", "lastmodified", "updated"),
    "message": ("message", "body", "messagebody", "text", "textmessage", "messagetext", "sms"),
    "billed_amount": ("billedamount", "cost", "credits", "billed"),
    "duration": ("duration", "durationseconds", "callduration", "lengthinseconds"),
    "subscription_id": ("subscriptionid",),
    "account_id": ("accountid",),
    "labels": ("label", "labels"),
    "event": ("event", "triggerevent", "notificationtype", "eventtype", "trigger", "notification"),
    "name": ("broadcastname", "campaignname", "name", "campaign", "broadcast"),
    "type": ("broadcasttype", "campaigntype", "type"),
    "finish_time": ("finishtime", "finished", "finishedat", "completed"),
    "originate_time": ("originatetime",),
    "answer_time": ("answertime",),
    "record_id": ("recordid", "attemptid", "textrecordid", "callrecordid"),
}
FIELDS: dict[str, str] = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}

# The value is taken to the line's end and its trailing whitespace stripped after the match: a lazy
# `(.*?)\s*$` tried the end after every character of it. Every separator holds ":", "=" or "-", so a line
# with none of them is not tried at all.
_LINE = re.compile(r"[ \t*•-]*([A-Za-z][A-Za-z0-9 _./#()-]{0,40}?)[ \t*]*(?:[:=]|\s-\s)[ \t]*(.*)")
# Rows and cells are split, not matched: a lazy `<tr>(.*?)</tr>` rescans the rest
# of the text for every unclosed row, which hostile HTML turns into minutes.
_ROW_START = re.compile(r"<tr\b[^<>]*>", re.IGNORECASE)
_ROW_END = re.compile(r"</tr\s*>|</table\s*>", re.IGNORECASE)
_CELL_START = re.compile(r"<t[dh]\b[^<>]*>", re.IGNORECASE)
_CELL_END = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")
# A break tag takes the source line end after it: that is layout, and a blank line would end a value.
_BREAK = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d)\b[^<>]*>(?:[ \t]*\r?\n)?", re.IGNORECASE)
_NOT_ALNUM = re.compile(r"[\W_]+")
_WORDS = re.compile(r"[a-z]+")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_DIGITS = re.compile(r"\d+")
_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d{2})")
_UNITS = re.compile(r"\s*(?:(\d+)\s*m(?:in(?:utes?)?)?)?\s*(?:(\d+)\s*s(?:ec(?:onds?)?)?)?\s*")
_LABEL_SEPARATOR = re.compile(r"[,;]")
_CONFIGS = {"TEXT": "TextBroadcastConfig", "IVR": "IvrBroadcastConfig", "CCC": "CccBroadcastConfig"}
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
        pairs = _table_pairs(text) + _line_pairs(html_to_lines(text), notes, html=True)
    else:
        pairs = _line_pairs(text, notes, html=False)
    events: list[Event] = []
    for block in _blocks(pairs):
        event = _read_block(block, subject, subscriptions, "html" if html else "text")
        if event is not None:
            events.append(event)
    return events, notes


def html_to_lines(markup: str) -> str:
    """Return the visible text of HTML, one line per break, paragraph or table row."""
    # A tab between cells keeps "Duration</td><td>1:05" from reading as a field "Duration 1".
    text = _CELL_END.sub("\t", _BREAK.sub("\n", drop_hidden(markup)))
    return unescape(_TAG.sub(" ", text))


@functools.lru_cache(maxsize=1024)  # labels repeat within an email and across emails
def _norm(label: str) -> str:
    """Lower-case a label and keep only its letters and digits (str.isalnum: what \\w is, less "_")."""
    return _NOT_ALNUM.sub("", label.lower())


def _line_pairs(text: str, notes: list[str] | None = None, *, html: bool = False) -> list[tuple[str, str]]:
    """Read `Field: value` lines; a line that continues a value (see _continues) is joined to it."""
    pairs: list[tuple[str, str]] = []
    previous = ""  # the last line of the open field (its own line or a continuation); "" when none is open
    for line in text.splitlines()[:_MAX_LINES]:
        m = _LINE.match(line) if ":" in line or "=" in line or "-" in line else None
        if m is not None:
            label, value = m.group(1).strip(), m.group(2).rstrip()
            if value.startswith("//"):
                m = None  # a URL, not a field
            elif " - " in line and ":" not in line and "=" not in line and (
                _norm(label) not in FIELDS
                or (previous and _is_free_text(pairs[-1][0]) and _wrapped(previous, line, html))
            ):
                # A dash only separates a field we know, and not on the next line of a wrapped message
                # ("…long link\nFrom - the"): elsewhere it is prose.
                m = None
            elif previous and _norm(label) not in FIELDS and _is_free_text(pairs[-1][0]) and (
                _wrapped(previous, line, html) or not pairs[-1][1]
            ):
                m = None  # a wrapped value's next line that holds a colon, not a field
        if m is not None:
            pairs.append((label, value))
            previous = line
            continue
        if not line.strip():
            previous = ""  # a blank line ends a value
            continue
        if not previous:
            continue  # prose outside any field
        label, value = pairs[-1]
        certain = not value or _wrapped(previous, line, html)
        if not certain and not _is_free_text(label):
            previous = ""  # prose after an id, number, time or state: no such value is wrapped
            continue
        pairs[-1] = (label, f"{value} {line.strip()}" if value else line.strip())
        previous = line
        if not certain and notes is not None and FIELDS.get(_norm(label)) is not None:
            notes.append(
                f"line {_snippet(line)} joined to field {label!r} as its continuation:"
                " nothing marks it as one or as separate text"
            )
    return pairs


# A line this long (with the next line's first word) was wrapped by the sender's mail client:
# clients wrap at 66-78 columns, so shorter pairs of lines were broken on purpose.
_WRAP_COLUMNS = 60
_FREE_TEXT = frozenset({"message", "name", "labels"})


def _wrapped(previous: str, line: str, html: bool) -> bool:
    """Say whether `line` is surely the continuation of `previous`: folded (indented) text, or a wrap."""
    if not html and line[:1] in (" ", "\t"):
        return True  # folded, as RFC 5322 folds a header field
    words = line.split()
    return bool(words) and len(previous.rstrip()) + 1 + len(words[0]) > _WRAP_COLUMNS


def _is_free_text(label: str) -> bool:
    """Say whether a field holds free text (a message, a name, or a field mailhook does not know)."""
    canon = FIELDS.get(_norm(label))
    return canon is None or canon in _FREE_TEXT


def _snippet(line: str) -> str:
    text = " ".join(line.split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _table_pairs(markup: str) -> list[tuple[str, str]]:
    """Read two-cell rows as field/value; a header row of known fields followed by data rows too."""
    rows = [_cells(_ROW_END.split(row, 1)[0]) for row in _ROW_START.split(drop_hidden(markup))[1:]]
    pairs: list[tuple[str, str]] = []
    header: list[str] | None = None
    for cells in rows:
        if len(cells) > 2 and sum(_norm(c.rstrip(":")) in FIELDS for c in cells) >= 2:
            header = cells
        elif header is not None and len(cells) == len(header):
            pairs += [(h.rstrip(":").strip(), v) for h, v in zip(header, cells, strict=True)]
        elif len(cells) == 2 and cells[0]:
            pairs.append((cells[0].rstrip(":").strip(), cells[1]))
    return pairs


def _cells(row: str) -> list[str]:
    return [_cell_text(_CELL_END.split(cell, 1)[0]) for cell in _CELL_START.split(row)[1:]]


def _cell_text(cell: str) -> str:
    return " ".join(unescape(_TAG.sub(" ", cell) if "<" in cell else cell).split())


def _blocks(pairs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Split the pairs into one block per notification: a repeated id field starts the next."""
    blocks: list[list[tuple[str, str]]] = [[]]
    ids: set[str] = set()
    for label, value in pairs:
        canon = FIELDS.get(_norm(label))
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
        canon = FIELDS.get(_norm(label))
        if canon in ("from", "to"):
            # "From: CallFire <noreply@…>" in a body is a person or an address, not a number.
            value = _phone(value) or ""
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
    root, notification = _v1(kind, known, named)
    return read_v1(root, notification, fmt, subscriptions, payload=_payload(payload, subject), named=named)


def _payload(fields: dict[str, str], subject: str | None) -> dict[str, Any]:
    """Return an event's payload as read from text: the fields exactly as read, and the subject."""
    return {"fields": fields, **({"subject": subject} if subject else {})}


_ID_FIELDS = ("text_id", "call_id", "resource_id", "broadcast_id")


def _is_id(value: str) -> bool:
    """Say whether a field's value reads as a CallFire id (digits, perhaps grouped: '#1,234')."""
    digits = _digits(value)
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


def _v1(kind: str, known: Mapping[str, str], named: str | None) -> tuple[str, dict[str, Any]]:
    """Build the v1.1 notification dict (as xmltodict would read it) from the known fields."""
    get = known.get
    envelope: dict[str, Any] = {"SubscriptionId": _digits(get("subscription_id"))}
    envelope["AccountId"] = _digits(get("account_id"))
    labels = [s.strip() for s in _LABEL_SEPARATOR.split(get("labels") or "") if s.strip()] or None
    if kind == "Broadcast":
        config = _present({"FromNumber": get("from"), "Created": _time(get("created"))})
        resource: dict[str, Any] = {
            "@id": _digits(get("broadcast_id") or get("resource_id")),
            "Name": get("name"),
            "Status": (get("status") or "").upper() or None,
            "Type": (get("type") or "").upper() or None,
            "Label": labels,
            "LastModified": _time(get("modified")),
            _CONFIGS.get((get("type") or "").strip().upper(), "VoiceBroadcastConfig"): config,
        }
        return "BroadcastNotification", _present({**envelope, "Broadcast": _present(resource)})
    inbound = _inbound(get("inbound"), get("direction"), named)
    record = {
        "@id": _digits(get("record_id")),
        "Result": get("result") or get("final_result"),
        "FinishTime": _time(get("finish_time")),
        "BilledAmount": _amount(get("billed_amount")),
        "Duration": _seconds(get("duration")) if kind == "Call" else None,
        "OriginateTime": _time(get("originate_time")),
        "AnswerTime": _time(get("answer_time")),
    }
    has_record = any(v is not None for k, v in record.items() if k != "@id")
    resource = {
        "@id": _digits(get("text_id") if kind == "Text" else get("call_id")) or _digits(get("resource_id")),
        "FromNumber": get("from"),
        "ToNumber": get("to"),
        "State": (get("state") or _status_state(get("status")) or "").upper() or None,
        "BatchId": _digits(get("batch_id")),
        "BroadcastId": _digits(get("broadcast_id")),
        "ContactId": _digits(get("contact_id")),
        "Inbound": None if inbound is None else str(inbound).lower(),
        "Created": _time(get("created")),
        "Modified": _time(get("modified")),
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


def _phone(value: str) -> str | None:
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


def _digits(value: str | None) -> str | None:
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


def _time(value: str | None) -> str | None:
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
