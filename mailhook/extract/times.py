"""Normalize the times CallFire sends (ISO 8601 text or epoch milliseconds) to UTC `YYYY-MM-DDTHH:MM:SSZ`.

As everything in `mailhook.extract.values`: accepts what XML or JSON
produces, returns None for an absent or empty value, and raises `Unreadable`
naming the field when a value is not a time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from mailhook.errors import Unreadable
from mailhook.extract.values import INT_TEXT, is_blank, shown, text_of

# Epoch milliseconds beyond year 9999 cannot be a real CallFire timestamp.
_MAX_EPOCH_MS = 253_402_300_799_999


def to_time(value: Any, name: str) -> str | None:
    """Normalize an ISO 8601 time (Z, ±hh:mm or none = UTC) or epoch milliseconds to UTC `...Z`."""
    # XML's usual: text ending in a zone ("...Z"), neither blank nor digits alone (epoch milliseconds).
    if type(value) is str and value and not (value[-1].isdigit() or value[-1].isspace()):
        if is_utc_text(value):
            return value  # already what _iso_time makes of it
        return _iso_time(value, name)
    if type(value) is int:  # JSON's usual: epoch milliseconds; the checks below, in their order, for an int
        if not 0 <= value <= _MAX_EPOCH_MS:
            raise Unreadable(f"{name}: epoch milliseconds out of range: {value}")
        return _epoch_text(value // 1000)
    if type(value) is str and len(value) == 25 and value.endswith("+00:00") and is_utc_text(value[:19] + "Z"):
        return value[:19] + "Z"  # what _iso_time makes of it (the text reader's times come this way)
    if value is None:
        return None
    value = text_of(value)
    if is_blank(value):
        return None
    if isinstance(value, str) and INT_TEXT.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool):
        raise Unreadable(f"{name}: expected a time, got a boolean")
    if isinstance(value, int | Decimal):
        if not 0 <= value <= _MAX_EPOCH_MS:
            raise Unreadable(f"{name}: epoch milliseconds out of range: {value}")
        moment = datetime.fromtimestamp(int(value) // 1000, tz=UTC)
    elif isinstance(value, str):
        return _iso_time(value, name)
    else:
        raise Unreadable(f"{name}: expected a time, got {shown(value)}")
    return _utc_text(moment)


def is_utc_text(value: str) -> bool:
    """Say whether `value` is a valid `YYYY-MM-DDTHH:MM:SSZ` (year 1000 or later), which normalizes to itself.

    fromisoformat reads each of those fields as ASCII digits of that width, and
    `_utc_text` writes them back the same way; anything else (another width, a
    fraction, a week date, a space for the "T") goes the long way.
    """
    if len(value) != 20 or value[19] != "Z" or value[10] != "T" or value[0] == "0" or not value.isascii():
        return False
    if value[4] != "-" or value[7] != "-" or value[13] != ":" or value[16] != ":":
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _iso_time(value: str, name: str) -> str:
    """Normalize an ISO 8601 time given as text (not blank, not digits alone) to UTC `...Z`."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Unreadable(f"{name}: not an ISO 8601 time: {shown(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise Unreadable(f"{name}: time out of range: {shown(value)}") from None
    return _utc_text(moment)


def _epoch_text(seconds: int) -> str:
    """Write epoch seconds (0 to the end of year 9999) as `_utc_text` writes that moment, from C's `gmtime`.

    Years 1970 to 9999 have four digits, so `%Y` writes what `isoformat` does, without a datetime and its tzinfo.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _utc_text(moment: datetime) -> str:
    if moment.year >= 1000:  # isoformat() is faster, and the same where strftime's %Y has four digits
        return moment.isoformat()[:19] + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
