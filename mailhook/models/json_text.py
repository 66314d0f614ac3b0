"""The compact JSON text of a payload (`to_json`) and the standard library's encoder made once (`json_encoder`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any


def to_json(value: Any) -> str:
    """Serialize a payload to compact JSON, writing each Decimal as no longer than it was sent.

    A number whose plain integer or float form says the same value in about as
    many characters is written that way (what nearly every notification holds);
    any other (`1e300`'s 301 digits, `1e-999` that a float turns into 0.0) is
    written as its own exponent form, `1E+300`, so a payload never grows past
    the text it was read from.
    """
    try:
        return _ENCODE(value)
    except _ExactNumber:
        return "".join(_encode(value))


# A Decimal's integer form is written only up to this exponent: "1e3" (3 characters) is at most "1000".
_MAX_PLAIN_EXPONENT = 3


class _ExactNumber(Exception):
    """A Decimal that neither an int nor a float writes as it was sent: the payload is encoded by `_encode`."""


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _plain_number(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_encoder(
    *, default: Callable[[Any], Any], ensure_ascii: bool, separators: tuple[str, str]
) -> Callable[[Any], str]:
    """Return what `json.JSONEncoder(ensure_ascii=…, separators=…, default=…).encode` does, its encoder made once.

    The encoder object builds the standard library's C encoder anew on every
    call (a fifth of encoding a payload); this builds it once. Without
    circular-reference markers: what is encoded here is a tree (a payload a
    parser read, a log line's fields), and a shared markers dict would keep
    stale ids after an exception left a container half written.
    """
    # json.encoder.c_make_encoder is the C accelerator's undocumented constructor, touched only here;
    # tests/test_models_json_text.py compares its output with json's own encoder, and with it absent.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python): the encoder object's own encode
        return json.JSONEncoder(ensure_ascii=ensure_ascii, separators=separators, default=default).encode
    item_separator, key_separator = separators
    strings = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan)
    chunks = make(None, default, strings, None, key_separator, item_separator, False, False, True)

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_ENCODE = json_encoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _plain_number(value: Decimal) -> int | float:
    """Return the int or float json writes for `value`; raise `_ExactNumber` if neither is exact and short."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and 0 <= exponent <= _MAX_PLAIN_EXPONENT:
        return int(value)  # integral amounts stay ints
    # Others as the shortest float that round-trips (e.g. 1.6667), when that is the very value sent.
    number = float(value)
    if math.isfinite(number) and Decimal(repr(number)) == value:
        return number
    raise _ExactNumber


def _encode(value: Any) -> Iterator[str]:
    """Yield `value` as the compact JSON `to_json` writes, each Decimal in the form `_number_text` gives."""
    if isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("," if i else "") + json.dumps(key if isinstance(key, str) else str(key), ensure_ascii=False) + ":"
            yield from _encode(item)
        yield "}"
    elif isinstance(value, list | tuple | set | frozenset):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from _encode(item)
        yield "]"
    elif isinstance(value, Decimal):
        yield _number_text(value)
    else:
        yield json.dumps(value, ensure_ascii=False, default=_json_default)


def _number_text(value: Decimal) -> str:
    try:
        return json.dumps(_plain_number(value))
    except _ExactNumber:
        # Decimal's own exponent form: the digits and exponent as sent, valid JSON (NaN and
        # infinities never get here: the JSON reader refuses them).
        return str(value)
