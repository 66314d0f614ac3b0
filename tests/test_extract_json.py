"""JSON is read exactly (ints stay ints, fractions Decimals) and refused when unsafe or not UTF-8."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from mailhook.errors import Unreadable
from mailhook.extract.json import MAX_DEPTH, MAX_FRACTIONS, parse_json


def test_integers_stay_exact_above_2_pow_53() -> None:
    assert parse_json(b'{"id": 9007199254740993}') == {"id": 9007199254740993}


def test_fractions_become_exact_decimals() -> None:
    value = parse_json(b'{"BilledAmount": 1.6667}')["BilledAmount"]
    assert isinstance(value, Decimal)
    assert value == Decimal("1.6667")


def test_a_utf8_bom_is_allowed() -> None:
    assert parse_json("\ufeff[1]".encode()) == [1]


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(Unreadable, match="not valid UTF-8"):
        parse_json(b'{"Message": "caf\xe9"}')


def test_malformed_json_reports_the_position() -> None:
    with pytest.raises(Unreadable, match=r"malformed JSON: .*line 1 column 9"):
        parse_json(b'{"a": 1,}')


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_numbers_are_refused(constant: str) -> None:
    with pytest.raises(Unreadable, match=constant):
        parse_json(f'{{"BilledAmount": {constant}}}'.encode())


def test_ten_thousand_deep_nesting_is_refused() -> None:
    with pytest.raises(Unreadable, match=f"deeper than {MAX_DEPTH}"):
        parse_json(b"[" * 10_000 + b"]" * 10_000)


def test_nesting_to_the_limit_is_read_and_one_level_more_refused_even_when_malformed() -> None:
    document = parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        document = document[0]
    assert document == []
    with pytest.raises(Unreadable, match=f"deeper than {MAX_DEPTH}"):
        parse_json("{" * (MAX_DEPTH + 1) + "oops")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = '{"Message": "' + "[{" * 1000 + '\\"' + '"}'
    assert parse_json(text) == {"Message": "[{" * 1000 + '"'}


def test_an_integer_too_long_to_read_is_refused() -> None:
    with pytest.raises(Unreadable, match="unreadable JSON value"):
        parse_json(b'{"id": ' + b"9" * 5000 + b"}")


def test_an_integer_too_long_to_read_is_refused_in_mailhook_s_words_not_python_s() -> None:
    with pytest.raises(Unreadable) as refused:
        parse_json(b'{"id": ' + b"9" * 5000 + b"}")
    assert str(refused.value) == "unreadable JSON value: an integer of more than 4300 digits"


@pytest.mark.parametrize("number", [b"1e999999", b"1e5000999999999999999999", b"-1.5E-99999999999999999999"])
def test_a_number_with_an_absurd_exponent_is_refused(number: bytes) -> None:
    # The last two are beyond even what Decimal can hold (it raises InvalidOperation, not a reason).
    with pytest.raises(Unreadable, match="out of range"):
        parse_json(b'{"x": ' + number + b"}")


def test_a_second_byte_order_mark_is_refused_with_the_json_module_s_reason() -> None:
    with pytest.raises(Unreadable, match="Unexpected UTF-8 BOM"):
        parse_json(b"\xef\xbb\xbf\xef\xbb\xbf{}")


@pytest.mark.parametrize("number", [b"1e999", b"1e309", b"-2E+400", b"1e-325", b"0.5e-324"])
def test_a_number_beyond_a_double_s_range_is_refused_with_the_range(number: bytes) -> None:
    with pytest.raises(Unreadable, match=r"out of range: .* beyond a double's -324\.\.308"):
        parse_json(b'{"x": ' + number + b"}")


@pytest.mark.parametrize("number", [b"1e308", b"1.7976931348623157e308", b"5e-324", b"-0e999999"])
def test_a_number_at_the_edge_of_a_double_s_range_is_read_exactly(number: bytes) -> None:
    assert parse_json(b'{"x": ' + number + b"}") == {"x": Decimal(number.decode())}


def test_a_document_may_hold_max_fractions_non_integer_numbers_and_not_one_more() -> None:
    numbers = ",".join(["1.5"] * MAX_FRACTIONS)
    assert len(parse_json(f'{{"x": [{numbers}], "e": "eeeeeeeeee"}}')["x"]) == MAX_FRACTIONS
    with pytest.raises(Unreadable, match=f"more than {MAX_FRACTIONS} non-integer numbers"):
        parse_json(f'{{"x": [{numbers},1e3]}}')


def test_a_large_document_of_numbers_is_refused_at_the_first_number_past_the_limit() -> None:
    document = b'{"x": [' + b",".join([b"1.5"] * 2_000_000) + b"]}"
    started = time.perf_counter()
    with pytest.raises(Unreadable, match="non-integer numbers"):
        parse_json(document)
    assert time.perf_counter() - started < 1.0  # reading all 2 million took 2.5 s


def test_integers_and_letters_in_strings_are_not_counted_as_fractions() -> None:
    document = "[" + "15," * (MAX_FRACTIONS + 5) + '"' + "e." * MAX_FRACTIONS + '"]'
    assert len(parse_json(document)) == MAX_FRACTIONS + 6


def test_a_document_of_max_fractions_characters_is_read_whatever_it_holds_and_one_more_is_counted() -> None:
    # No more characters than MAX_FRACTIONS hold no more fractions than that: such a text is not counted.
    fractions = ",".join(["1.5"] * (MAX_FRACTIONS // 8))
    document = "[" + fractions + ',"' + "e" * (MAX_FRACTIONS - 5 - len(fractions)) + '"]'
    assert len(document) == MAX_FRACTIONS
    assert parse_json(document)[-2] == Decimal("1.5")
    assert parse_json(document.replace("[", "[0.5,", 1))[0] == Decimal("0.5")  # more characters: counted, read
