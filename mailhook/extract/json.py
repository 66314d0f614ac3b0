"""Read a JSON notification exactly: integers stay ints, fractions become Decimals.

Input must be UTF-8 (a BOM is allowed); size and nesting depth are bounded
and checked before parsing, so a deeply nested document is refused without
recursing. Numbers are bounded too: none beyond a double's range (no CallFire
serializer writes one, and `1e999` is the cheapest way to ask for a thousand
digits), and at most MAX_FRACTIONS non-integer numbers per document, since each
costs a Decimal (a hundred bytes and a Python call) where it took a few bytes
to send.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

from mailhook.errors import Unreadable

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
# A double's range (1.8e308 down to 5e-324): the adjusted exponents a number may have.
MAX_EXPONENT = 308
MIN_EXPONENT = -324
MAX_FRACTIONS = 10_000
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
        # Each non-integer number holds a ".", "e" or "E": a text of no more characters than that holds no more
        # of them than allowed, told without counting them (three scans of every character).
        if len(text) <= MAX_FRACTIONS or text.count(".") + text.count("e") + text.count("E") <= MAX_FRACTIONS:
            return _DECODER.decode(text)  # what json.loads does with these arguments, minus building a decoder
        # Possibly more non-integer numbers than allowed: count them as they are read, stopping at the first too many.
        return json.JSONDecoder(
            parse_int=int, parse_float=_Counted(), parse_constant=_refuse_constant
        ).decode(text)
    except json.JSONDecodeError as exc:
        raise Unreadable(f"malformed JSON: {exc}") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's own text advises sys.set_int_max_str_digits()
            raise Unreadable(f"unreadable JSON value: an integer of more than {sys.get_int_max_str_digits()} digits") \
                from None
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
    """Read a fraction exactly; refuse a number beyond a double's range, which no CallFire serializer writes."""
    try:
        value = Decimal(literal)
    except InvalidOperation:  # an exponent beyond what Decimal itself can hold
        raise Unreadable(f"JSON number out of range: {literal[:40]}") from None
    if value and not MIN_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        raise Unreadable(
            f"JSON number out of range: {literal[:40]} (exponent beyond a double's {MIN_EXPONENT}..{MAX_EXPONENT})"
        )
    return value


class _Counted:
    """`_decimal` that refuses the document at its (MAX_FRACTIONS + 1)th non-integer number."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, literal: str) -> Decimal:
        self.count += 1
        if self.count > MAX_FRACTIONS:
            raise Unreadable(f"JSON document with more than {MAX_FRACTIONS} non-integer numbers")
        return _decimal(literal)


_DECODER = json.JSONDecoder(parse_int=int, parse_float=_decimal, parse_constant=_refuse_constant)
