"""Read a JSON notification exactly: integers stay ints, fractions become Decimals.

Input must be UTF-8 (a BOM is allowed); size and nesting depth are bounded
and checked before parsing, so a deeply nested document is refused without
recursing.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from mailhook.errors import Unreadable

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_EXPONENT = 1000
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def parse_json(data: bytes | str) -> Any:
    """Parse one JSON document, or raise `Unreadable` saying why it cannot be read."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise Unreadable(f"JSON document larger than {MAX_BYTES} bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise Unreadable(f"JSON is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    else:
        if len(data) > MAX_BYTES:
            raise Unreadable(f"JSON document larger than {MAX_BYTES} bytes")
        text = data.lstrip("\ufeff")
    # Depth counts opening brackets outside strings: with at most MAX_DEPTH of them
    # in all, nothing can be nested deeper, and the string-aware scan is skipped.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        _check_depth(text)
    try:
        if text.startswith("\ufeff"):  # json.loads refuses it with its own message; keep that
            return json.loads(text, parse_int=int, parse_float=_decimal, parse_constant=_refuse_constant)
        return _DECODER.decode(text)  # what json.loads does with these arguments, minus building a decoder
    except json.JSONDecodeError as exc:
        raise Unreadable(f"malformed JSON: {exc}") from None
    except ValueError as exc:
        # e.g. an integer literal longer than Python's digit limit.
        raise Unreadable(f"unreadable JSON value: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise Unreadable(f"JSON constant {name} is not a number CallFire sends")


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, counting brackets outside strings."""
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise Unreadable(f"JSON nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _decimal(literal: str) -> Decimal:
    """Read a fraction exactly; refuse exponents whose integer form no JSON encoder can write back."""
    try:
        value = Decimal(literal)
    except InvalidOperation:  # an exponent beyond what Decimal itself can hold
        raise Unreadable(f"JSON number out of range: {literal[:40]}") from None
    if value and abs(value.adjusted()) > MAX_EXPONENT:
        raise Unreadable(f"JSON number out of range: {literal[:40]}")
    return value


_DECODER = json.JSONDecoder(parse_int=int, parse_float=_decimal, parse_constant=_refuse_constant)
