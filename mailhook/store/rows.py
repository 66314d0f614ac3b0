"""An extraction as the rows the store inserts, bounded by the payload ratio; built in worker processes too."""

from __future__ import annotations

import logging
import operator
import re
from typing import Any, NamedTuple

from mailhook.models import Delivery, Extraction, Status
from mailhook.store.schema import ATTEMPT_COLUMNS, EVENT_COLUMNS

log = logging.getLogger("mailhook.store")


# What a delivery's events may store as payloads (events.payload and attempts.payload together),
# at most, per byte received: a notification's payloads take about its size once (measured on
# the fixtures: 0.4-1.4x), so more means the input was built to be amplified; it is quarantined.
PAYLOAD_RATIO = 2


_PAYLOAD = EVENT_COLUMNS.index("payload")


_ATTEMPT_PAYLOAD = ATTEMPT_COLUMNS.index("payload")

# A row's values in column order, taken from its dict in C rather than by a comprehension.
_EVENT_VALUES = operator.itemgetter(*EVENT_COLUMNS)
_ATTEMPT_VALUES = operator.itemgetter(*ATTEMPT_COLUMNS)

# A lone surrogate: an undecodable byte kept by `surrogateescape`, or a JSON "\udc80" escape once decoded.
# Neither SQLite nor PostgreSQL can encode one to UTF-8; both stores hold U+FFFD instead (the raw bytes keep it).
_SURROGATE = re.compile("[\ud800-\udfff]")
# An escaped lone surrogate in JSON text (a pair of escapes is one character and stays).
_LONE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u(?:[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                          r"|[dD][c-fC-F][0-9a-fA-F]{2})")
_AFTER_HIGH = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}$")


class Rows(NamedTuple):
    """An extraction as the values `Store.write` inserts; a tuple, so it pickles cheaply between processes.

    `events` holds, per event, its type, its `events` columns (EVENT_COLUMNS
    order) and its attempts' `attempts` columns (ATTEMPT_COLUMNS order).
    """

    reason: str | None
    notes: str | None
    message_id: str | None
    subject: str | None
    events: tuple[tuple[str, tuple[Any, ...], tuple[tuple[Any, ...], ...]], ...]


class Completion(NamedTuple):
    """The extraction of a delivery stored `pending`, to be stored as its events."""

    delivery_id: int
    sha256: str
    extraction: Extraction | Rows


# A delivery with its extraction (None: store it pending), as a writer's `submit` and `submit_many` take it.
Submission = tuple[Delivery, Extraction | Rows | None]
# What `Store.write` takes: a submission, or a completion.
Work = Submission | Completion


def rows(extraction: Extraction | Rows, size: int | None = None) -> Rows:
    """Turn an extraction into the rows stored for it (pure: extraction workers call it too).

    Given the `size` of the raw delivery, payloads of more than PAYLOAD_RATIO
    times that many bytes turn the rows into a quarantine with the reason.
    """
    if isinstance(extraction, Rows):
        return extraction if size is None else _bounded(extraction, size)
    events = [(event.event_type, _EVENT_VALUES(event.row()),
               tuple([_ATTEMPT_VALUES(attempt.row()) for attempt in event.attempts]))
              for event in extraction.events]
    found = Rows(
        extraction.reason, "\n".join(extraction.notes) or None, extraction.message_id, extraction.subject,
        tuple(events),
    )
    return found if size is None else _bounded(found, size)


def mend(value: Any) -> Any:
    """Return a value with each lone surrogate (which no store can encode) replaced by U+FFFD; others unchanged."""
    if isinstance(value, str) and _SURROGATE.search(value):
        return _SURROGATE.sub("\ufffd", value)
    return value


def mend_json(text: str) -> str:
    """Return JSON text with each lone surrogate, raw or escaped (`"\\udc80"`), as U+FFFD; an escaped pair stays."""
    if "\\ud" in text or "\\uD" in text:
        text = _LONE_ESCAPE.sub(_lone, text)
    return mend(text)  # type: ignore[no-any-return]


def _lone(match: re.Match[str]) -> str:
    """Replace an escaped surrogate unless it is the low half following a high one."""
    start = match.start() + len(match.group(1))  # the escape's backslash; a high escape before it is 6 characters
    if match.group(0)[len(match.group(1)) + 2] in "cCdDeEfF" and _AFTER_HIGH.search(match.string, start - 6, start):
        return match.group(0)
    return match.group(1) + "\\ufffd"


def mend_values(values: tuple[Any, ...], payload: int) -> tuple[Any, ...]:
    """Return a row's values mended (`mend`; `mend_json` for the one at index `payload`)."""
    return tuple(mend_json(v) if i == payload and isinstance(v, str) else mend(v) for i, v in enumerate(values))


def mended(found: Rows) -> Rows:
    """Return rows with every text value as both stores hold it: each lone surrogate as U+FFFD."""
    return Rows(mend(found.reason), mend(found.notes), mend(found.message_id), mend(found.subject), tuple(
        (mend(event_type), mend_values(values, _PAYLOAD), tuple(mend_values(a, _ATTEMPT_PAYLOAD) for a in attempts))
        for event_type, values, attempts in found.events))


def _bounded(found: Rows, size: int) -> Rows:
    """Return `found`, or a quarantine without events when its payloads exceed PAYLOAD_RATIO x `size` bytes.

    Rows holding a lone surrogate (which cannot be measured in UTF-8) are
    measured, and returned, `mended`: as every store holds them.
    """
    try:
        return _within(found, size)
    except UnicodeEncodeError:
        return _within(mended(found), size)


def _within(found: Rows, size: int) -> Rows:
    stored = 0
    for _, values, attempts in found.events:
        stored += _utf8_size(values[_PAYLOAD])
        for attempt in attempts:
            stored += _utf8_size(attempt[_ATTEMPT_PAYLOAD])
    if stored <= PAYLOAD_RATIO * size:
        return found
    reason = (
        f"payloads of {stored} bytes would exceed {PAYLOAD_RATIO}x the {size} bytes received; events not stored"
    )
    return found._replace(reason=reason, events=())


def _utf8_size(text: str) -> int:
    """Return how many bytes `text` takes in UTF-8; raises UnicodeEncodeError on a lone surrogate."""
    # An ASCII string (nearly every payload; CPython knows it without a scan) is as long in UTF-8: no copy.
    return len(text) if text.isascii() else len(text.encode())


def worker_rows(extraction: Extraction, size: int | None = None) -> Extraction | Rows:
    """Return an extraction as rows for the parent process, or as itself when its values cannot be rows.

    The writer then meets the same error and fails (or quarantines) that delivery alone.
    """
    try:
        return rows(extraction, size)
    except (ValueError, OverflowError, TypeError):
        return extraction


def delivery_status(extraction: Rows, *, seen: bool, new: int, duplicates: int) -> Status:
    """Return a written delivery's status: quarantined, duplicate (nothing new, or its Message-ID seen) or stored."""
    if extraction.reason:
        return "duplicate" if seen else "quarantined"
    if new == 0 and (seen or duplicates):
        return "duplicate"
    return "stored"
