"""Normalize the loosely typed values CallFire sends into exact column values.

Every function accepts what either XML (always text) or JSON (parsed with
`parse_int=int, parse_float=Decimal`) produces, returns None for an absent or
empty value, and raises `Unreadable` naming the field when a value has the
wrong kind. Ids never pass through a float.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from mailhook.errors import Unreadable

# An integer written as text (what XML gives for every number).
INT_TEXT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
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
            raise Unreadable(f"{name}: integer out of the 64-bit range: {shown(value)}")
        return value
    if value is None:
        return None
    value = text_of(value)
    if type(value) is str:  # what XML always gives: the checks below, in their order, for a string
        digits = value.strip()
        if not digits:
            return None
        # isdigit() and isascii() together say what INT_TEXT says of unsigned digits, without a regex.
        if not ((digits.isdigit() and digits.isascii()) or INT_TEXT.fullmatch(digits)) or len(value) >= 40:
            raise Unreadable(f"{name}: expected an integer, got {shown(value)}")
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
    elif isinstance(value, str) and INT_TEXT.fullmatch(value.strip()) and len(value) < 40:
        number = int(value.strip())
    else:
        raise Unreadable(f"{name}: expected an integer, got {shown(value)}")
    if not _MIN_INT64 <= number <= _MAX_INT64:
        raise Unreadable(f"{name}: integer out of the 64-bit range: {shown(value)}")
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
    raise Unreadable(f"{name}: expected text, got {shown(value)}")


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
        raise Unreadable(f"{name}: expected a boolean, got {shown(value)}")
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
    raise Unreadable(f"{name}: expected a boolean, got {shown(value)}")


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
            raise Unreadable(f"{name}: expected a number, got {shown(value)}")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise Unreadable(f"{name}: expected a number, got {shown(value)}") from None
        if not amount.is_finite() or (amount and amount.adjusted() >= _MAX_AMOUNT_DIGITS):
            raise Unreadable(f"{name}: expected a finite amount, got {shown(value)}")
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
            raise Unreadable(f"{name}: expected a number, got {shown(value)}") from None
    else:
        raise Unreadable(f"{name}: expected a number, got {shown(value)}")
    if not amount.is_finite() or (amount and amount.adjusted() >= _MAX_AMOUNT_DIGITS):
        raise Unreadable(f"{name}: expected a finite amount, got {shown(value)}")
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


def shown(value: Any) -> str:
    """Return `value` as an error message shows it: its repr, cut to 60 characters."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
