"""An extraction as the rows the store inserts, bounded by the payload ratio; built in worker processes too."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from mailhook.models import Delivery, Extraction
from mailhook.store.schema import ATTEMPT_COLUMNS, EVENT_COLUMNS

log = logging.getLogger("mailhook.store")

log = logging.getLogger("mailhook.store")


# What a delivery's events may store as payloads (events.payload and attempts.payload together),
# at most, per byte received: a notification's payloads take about its size once (measured on
# the fixtures: 0.4-1.4x), so more means the input was built to be amplified; it is quarantined.
PAYLOAD_RATIO = 2


_PAYLOAD = EVENT_COLUMNS.index("payload")


_ATTEMPT_PAYLOAD = ATTEMPT_COLUMNS.index("payload")


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


# What `Store.write` takes: a delivery with its extraction (None: store it pending), or a completion.
Work = tuple[Delivery, Extraction | Rows | None] | Completion


def rows(extraction: Extraction | Rows, size: int | None = None) -> Rows:
    """Turn an extraction into the rows stored for it (pure: extraction workers call it too).

    Given the `size` of the raw delivery, payloads of more than PAYLOAD_RATIO
    times that many bytes turn the rows into a quarantine with the reason.
    """
    if isinstance(extraction, Rows):
        return extraction if size is None else _bounded(extraction, size)
    events = []
    for event in extraction.events:
        row = event.row()
        attempts = []
        for attempt in event.attempts:
            values = attempt.row()
            attempts.append(tuple([values[c] for c in ATTEMPT_COLUMNS]))
        events.append((event.event_type, tuple([row[c] for c in EVENT_COLUMNS]), tuple(attempts)))
    found = Rows(
        extraction.reason, "\n".join(extraction.notes) or None, extraction.message_id, extraction.subject,
        tuple(events),
    )
    return found if size is None else _bounded(found, size)


def _bounded(found: Rows, size: int) -> Rows:
    """Return `found`, or a quarantine without events when its payloads exceed PAYLOAD_RATIO x `size` bytes."""
    stored = 0
    for _, values, attempts in found.events:
        stored += len(values[_PAYLOAD].encode())
        for attempt in attempts:
            stored += len(attempt[_ATTEMPT_PAYLOAD].encode())
    if stored <= PAYLOAD_RATIO * size:
        return found
    reason = (
        f"payloads of {stored} bytes would exceed {PAYLOAD_RATIO}x the {size} bytes received; events not stored"
    )
    return found._replace(reason=reason, events=())


def worker_rows(extraction: Extraction, size: int | None = None) -> Extraction | Rows:
    """Return an extraction as rows for the parent process, or as itself when its values cannot be rows.

    The writer then meets the same error and fails (or quarantines) that delivery alone.
    """
    try:
        return rows(extraction, size)
    except (ValueError, OverflowError, TypeError):
        return extraction
