"""Read a human-readable part into its `Field: value` pairs: text lines, or an HTML field/value table.

The pairs are the labels and values exactly as read, in order; `mailhook.extract.text`
splits them into notifications and maps the labels it knows (`FIELDS`) onto v1.1 fields.
"""

from __future__ import annotations

import functools
import re

from mailhook.extract.embedded import drop_hidden, unescape

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


def html_to_lines(markup: str) -> str:
    """Return the visible text of HTML, one line per break, paragraph or table row."""
    # A tab between cells keeps "Duration</td><td>1:05" from reading as a field "Duration 1".
    text = _CELL_END.sub("\t", _BREAK.sub("\n", drop_hidden(markup)))
    return unescape(_TAG.sub(" ", text))


@functools.lru_cache(maxsize=1024)  # labels repeat within an email and across emails
def norm(label: str) -> str:
    """Lower-case a label and keep only its letters and digits (str.isalnum: what \\w is, less "_")."""
    return _NOT_ALNUM.sub("", label.lower())


def line_pairs(text: str, notes: list[str] | None = None, *, html: bool = False) -> list[tuple[str, str]]:
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
                norm(label) not in FIELDS
                or (previous and _is_free_text(pairs[-1][0]) and _wrapped(previous, line, html))
            ):
                # A dash only separates a field we know, and not on the next line of a wrapped message
                # ("…long link\nFrom - the"): elsewhere it is prose.
                m = None
            elif previous and norm(label) not in FIELDS and _is_free_text(pairs[-1][0]) and (
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
        if not certain and notes is not None and FIELDS.get(norm(label)) is not None:
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
    canon = FIELDS.get(norm(label))
    return canon is None or canon in _FREE_TEXT


def _snippet(line: str) -> str:
    text = " ".join(line.split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def table_pairs(markup: str) -> list[tuple[str, str]]:
    """Read two-cell rows as field/value; a header row of known fields followed by data rows too."""
    rows = [_cells(_ROW_END.split(row, 1)[0]) for row in _ROW_START.split(drop_hidden(markup))[1:]]
    pairs: list[tuple[str, str]] = []
    header: list[str] | None = None
    for cells in rows:
        if len(cells) > 2 and sum(norm(c.rstrip(":")) in FIELDS for c in cells) >= 2:
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
