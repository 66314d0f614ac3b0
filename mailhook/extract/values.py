"""Normalize the loosely typed values CallFire sends into exact column values.

Every function accepts what either XML (always text) or JSON (parsed with
`parse_int=int, parse_float=Decimal`) produces, returns None for an absent or
empty value, and raises `Unreadable` naming the field when a value has the
wrong kind. Ids never pass through a float.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from mailhook.errors import Unreadable

_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
# Epoch milliseconds beyond year 9999 cannot be a real CallFire timestamp.
_MAX_EPOCH_MS = 253_402_300_799_999
# Ids and counts are SQLite INTEGER columns: signed 64-bit.
_MAX_INT64 = 2**63 - 1
_MIN_INT64 = -(2**63)
# Credits are small; a magnitude beyond this is a corrupt value, not an amount.
_MAX_AMOUNT_DIGITS = 15


# Exact types that are never a Mapping: a value of one skips the (slow, ABC) Mapping check.
_SCALARS = frozenset({str, int, bool, Decimal, type(None)})


def is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """Say whether `value` is a Mapping: a dict (what every reader builds) without the ABC's slower check."""
    return type(value) is dict or isinstance(value, Mapping)


def text_of(value: Any) -> Any:
    """Return the text content of an XML element that also carries attributes (`#text`)."""
    # Most values are plain strings (XML) or numbers (JSON).
    if type(value) in _SCALARS:
        return value
    if is_mapping(value) and "#text" in value:
        return value["#text"]
    return value


def is_blank(value: Any) -> bool:
    """Say whether a value is absent: None, an empty string or an attribute-only element."""
    value = text_of(value)
    if type(value) is str:
        return not value.strip()
    if type(value) in _SCALARS:  # None, or a number: never blank
        return value is None
    return value is None or (isinstance(value, str) and not value.strip()) or (is_mapping(value) and not value)


def to_int(value: Any, name: str) -> int | None:
    """Read an exact integer from an int, a digit string or an integral Decimal."""
    if type(value) is int:  # what JSON gives: the checks below, in their order, for an int
        if not _MIN_INT64 <= value <= _MAX_INT64:
            raise Unreadable(f"{name}: integer out of the 64-bit range: {_show(value)}")
        return value
    if value is None:
        return None
    value = text_of(value)
    if type(value) is str:  # what XML always gives: the checks below, in their order, for a string
        digits = value.strip()
        if not digits:
            return None
        # isdigit() and isascii() together say what _INT says of unsigned digits, without a regex.
        if not ((digits.isdigit() and digits.isascii()) or _INT.fullmatch(digits)) or len(value) >= 40:
            raise Unreadable(f"{name}: expected an integer, got {_show(value)}")
        number = int(digits)
    elif is_blank(value):
        return None
    elif isinstance(value, bool):
        raise Unreadable(f"{name}: expected an integer, got a boolean")
    elif isinstance(value, int):
        number = value
    elif (
        isinstance(value, Decimal)
        and value.is_finite()
        and abs(value.adjusted()) < 40
        and value == value.to_integral_value()
    ):
        number = int(value)
    elif isinstance(value, str) and _INT.fullmatch(value.strip()) and len(value) < 40:
        number = int(value.strip())
    else:
        raise Unreadable(f"{name}: expected an integer, got {_show(value)}")
    if not _MIN_INT64 <= number <= _MAX_INT64:
        raise Unreadable(f"{name}: integer out of the 64-bit range: {_show(value)}")
    return number


def to_text(value: Any, name: str) -> str | None:
    """Read a string field (phone numbers included) exactly as sent; a JSON number becomes its digits.

    Accepts a plain string or number, `{"value": ...}` (some JSON serializers)
    and an XML element with attributes such as `ToNumber ClientData="..."`.
    """
    if type(value) is str:
        return value if value.strip() else None
    if value is None:
        return None
    if type(value) not in _SCALARS and is_mapping(value):
        if "value" in value:
            return to_text(value["value"], name)
        if "#text" in value:
            return to_text(value["#text"], name)
        if all(str(k).startswith("@") for k in value):
            return None
        raise Unreadable(f"{name}: expected text, got an object")
    if value is None:
        return None
    if type(value) is str:
        return value if value.strip() else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, str):
        return value if value.strip() else None
    raise Unreadable(f"{name}: expected text, got {_show(value)}")


def to_bool(value: Any, name: str) -> bool | None:
    """Read a boolean from true/false, 1/0 or their text forms."""
    if type(value) is str:  # what XML always gives: the checks below, in their order, for a string
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        if not word:
            return None
        raise Unreadable(f"{name}: expected a boolean, got {_show(value)}")
    if value is None:
        return None
    value = text_of(value)
    if is_blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise Unreadable(f"{name}: expected a boolean, got {_show(value)}")


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
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
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
        raise Unreadable(f"{name}: expected a time, got {_show(value)}")
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
        raise Unreadable(f"{name}: not an ISO 8601 time: {_show(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise Unreadable(f"{name}: time out of range: {_show(value)}") from None
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


def to_decimal(value: Any, name: str) -> Decimal | None:
    """Read an exact amount (credits) from an int, a Decimal or a numeric string."""
    if type(value) is int:
        return Decimal(value)
    if value is None:
        return None
    if type(value) is str:  # what XML always gives: the checks below, in their order, for a string
        text = value.strip()
        if not text:
            return None
        if len(value) >= 60:
            raise Unreadable(f"{name}: expected a number, got {_show(value)}")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise Unreadable(f"{name}: expected a number, got {_show(value)}") from None
        if not amount.is_finite() or (amount and amount.adjusted() >= _MAX_AMOUNT_DIGITS):
            raise Unreadable(f"{name}: expected a finite amount, got {_show(value)}")
        return amount
    value = text_of(value)
    if is_blank(value):
        return None
    if isinstance(value, bool):
        raise Unreadable(f"{name}: expected a number, got a boolean")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str) and len(value) < 60:
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise Unreadable(f"{name}: expected a number, got {_show(value)}") from None
    else:
        raise Unreadable(f"{name}: expected a number, got {_show(value)}")
    if not amount.is_finite() or (amount and amount.adjusted() >= _MAX_AMOUNT_DIGITS):
        raise Unreadable(f"{name}: expected a finite amount, got {_show(value)}")
    return amount


def to_labels(value: Any, name: str) -> tuple[str, ...] | None:
    """Read labels given as strings, as `{Name: ...}` objects, or as one of either."""
    if is_blank(value):
        return None
    items = value if isinstance(value, list) else [value]
    labels: list[str] = []
    for item in items:
        if is_mapping(item) and not ("#text" in item or "value" in item):
            item = item.get("Name", item.get("name"))
        label = to_text(item, name)
        if label is not None:
            labels.append(label)
    return tuple(labels)


def to_list(value: Any, name: str) -> tuple[str, ...]:
    """Split a space-separated list field such as `RetryResults` (empty means no items)."""
    text = to_text(value, name)
    return tuple(text.split()) if text else ()


def as_list(value: Any) -> list[Any]:
    """Return a repeated element as a list: a single record may arrive as a bare object."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
