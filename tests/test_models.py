"""Payloads serialize to compact JSON that keeps every number's exact value and never outgrows its text."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from mailhook.models import to_json


@pytest.mark.parametrize(
    ("literal", "written"),
    [
        ("2", "2"), ("1E+2", "100"), ("1e3", "1000"), ("1.6667", "1.6667"), ("1.50", "1.5"), ("-0.0", "-0.0"),
        ("1e300", "1e+300"), ("1e-6", "1e-06"),
    ],
)  # fmt: skip
def test_ordinary_numbers_are_written_as_before(literal: str, written: str) -> None:
    assert to_json({"n": Decimal(literal)}) == '{"n":' + written + "}"


@pytest.mark.parametrize(
    ("literal", "written"),
    [("1e999", "1E+999"), ("1e-999", "1E-999"), ("0.1000000000000000000001", "0.1000000000000000000001"),
     ("123456789.123456789123", "123456789.123456789123")],
)  # fmt: skip
def test_a_number_no_int_or_float_writes_exactly_keeps_its_own_digits_and_exponent(literal: str, written: str) -> None:
    payload = to_json({"n": [Decimal(literal)], "s": 'a"\u00e9', "t": (1, None, True)})
    assert payload == '{"n":[' + written + '],"s":"a\\"\u00e9","t":[1,null,true]}'
    assert json.loads(payload, parse_float=Decimal)["n"] == [Decimal(literal)]


def test_a_list_of_huge_exponents_is_as_long_as_it_was_sent() -> None:
    payload = to_json({"x": [Decimal("1e999")] * 2000})
    assert len(payload) < 2 * len("1e999,") * 2000
