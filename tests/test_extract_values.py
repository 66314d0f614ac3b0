"""Normalizers turn XML text and exact JSON values into the same column values."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.errors import Unreadable
from mailhook.extract.times import to_time
from mailhook.extract.values import (
    as_list,
    is_mapping,
    to_bool,
    to_decimal,
    to_int,
    to_labels,
    to_list,
    to_text,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("826451071003", 826451071003),
        (9007199254740993, 9007199254740993),
        (" 42 ", 42),
        ("9223372036854775807", 9223372036854775807),
        (Decimal("12"), 12),
        ({"@ClientData": "x", "#text": "7"}, 7),
        (None, None),
        ("", None),
    ],
)
def test_to_int_reads_exact_integers(value: object, expected: int | None) -> None:
    assert to_int(value, "id") == expected


def test_to_int_keeps_ids_above_2_pow_53_exact_from_text() -> None:
    assert to_int("9007199254740993", "id") == 2**53 + 1


@pytest.mark.parametrize("value", ["12a", "1.5", Decimal("1.5"), True, [1], "١٢"])
def test_to_int_refuses_non_integers_naming_the_field(value: object) -> None:
    with pytest.raises(Unreadable, match="BatchId"):
        to_int(value, "BatchId")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (16505754427, "16505754427"),
        ("+16505754427", "+16505754427"),
        ({"value": "+16505754427"}, "+16505754427"),
        ({"value": 67076}, "67076"),
        ({"@ClientData": "order-1", "#text": "13105550142"}, "13105550142"),
        ("CALLFIRE", "CALLFIRE"),
        (None, None),
        ("  ", None),
    ],
)
def test_to_text_reads_phones_exactly_as_sent(value: object, expected: str | None) -> None:
    assert to_text(value, "ToNumber") == expected


def test_to_text_does_not_restore_a_plus_lost_by_a_json_number() -> None:
    assert to_text(12132212384, "FromNumber") == "12132212384"


def test_to_text_refuses_an_object_without_a_value() -> None:
    with pytest.raises(Unreadable, match="FromNumber"):
        to_text({"number": "1"}, "FromNumber")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("FALSE", False), ("1", True), (0, False), (None, None)],
)
def test_to_bool_reads_booleans_and_their_text(value: object, expected: bool | None) -> None:
    assert to_bool(value, "Inbound") is expected


@pytest.mark.parametrize("value", ["maybe", 2, "2"])
def test_to_bool_refuses_other_values(value: object) -> None:
    with pytest.raises(Unreadable, match="Inbound"):
        to_bool(value, "Inbound")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2013-03-11T20:09:58Z", "2013-03-11T20:09:58Z"),
        ("2017-01-01T05:29:59+05:30", "2016-12-31T23:59:59Z"),
        ("2016-12-31T17:00:01-07:00", "2017-01-01T00:00:01Z"),
        ("2016-12-31T23:59:59.999Z", "2016-12-31T23:59:59Z"),
        ("2016-06-29T18:52:08", "2016-06-29T18:52:08Z"),
        (1474563235000, "2016-09-22T16:53:55Z"),
        ("1474563235999", "2016-09-22T16:53:55Z"),
        (0, "1970-01-01T00:00:00Z"),
        (None, None),
    ],
)
def test_to_time_normalizes_to_utc_seconds(value: object, expected: str | None) -> None:
    assert to_time(value, "Created") == expected


@pytest.mark.parametrize("value", ["yesterday", "2016-13-01T00:00:00Z", -1, 10**20, True])
def test_to_time_refuses_what_is_not_a_time(value: object) -> None:
    with pytest.raises(Unreadable, match="Created"):
        to_time(value, "Created")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.03", Decimal("0.03")),
        (Decimal("1.6667"), Decimal("1.6667")),
        (1, Decimal(1)),
        (" 2 ", Decimal(2)),
        (None, None),
    ],
)
def test_to_decimal_keeps_amounts_exact(value: object, expected: Decimal | None) -> None:
    assert to_decimal(value, "BilledAmount") == expected


@pytest.mark.parametrize("value", ["NaN", "Infinity", "cheap", True])
def test_to_decimal_refuses_non_finite_or_non_numbers(value: object) -> None:
    with pytest.raises(Unreadable, match="BilledAmount"):
        to_decimal(value, "BilledAmount")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["label2", "test_label1"], ("label2", "test_label1")),
        ([{"Name": "vip"}, {"Name": "west coast"}], ("vip", "west coast")),
        ({"Name": "single"}, ("single",)),
        ("only", ("only",)),
        ([{"name": "v2"}], ("v2",)),
        (None, None),
    ],
)
def test_to_labels_reads_strings_and_name_objects(value: object, expected: tuple[str, ...] | None) -> None:
    assert to_labels(value, "Label") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("BUSY NO_ANS", ("BUSY", "NO_ANS")), ("", ()), (None, ()), ("  FIRST_NUMBER  ", ("FIRST_NUMBER",))],
)
def test_to_list_splits_space_separated_fields(value: object, expected: tuple[str, ...]) -> None:
    assert to_list(value, "RetryResults") == expected


def test_as_list_wraps_a_single_record_given_as_a_bare_object() -> None:
    record = {"@id": "1"}
    assert as_list(record) == [record]
    assert as_list([record, record]) == [record, record]
    assert as_list(None) == []


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, "9223372036854775808", Decimal("1e40")])
def test_to_int_refuses_integers_beyond_64_bits(value: object) -> None:
    with pytest.raises(Unreadable, match="id"):
        to_int(value, "id")


def test_to_decimal_refuses_absurd_magnitudes() -> None:
    with pytest.raises(Unreadable, match="finite amount"):
        to_decimal(Decimal("1e20"), "BilledAmount")


@pytest.mark.parametrize("value", ["   ", "\t\n", {"#text": " "}])
def test_to_int_reads_a_blank_string_as_absent(value: object) -> None:
    assert to_int(value, "id") is None


def test_to_int_refuses_a_digit_string_of_forty_characters_naming_the_field() -> None:
    with pytest.raises(Unreadable, match="BatchId: expected an integer"):
        to_int("0" * 39 + "7", "BatchId")


@settings(max_examples=200, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_to_time_writes_every_year_as_strftime_does(moment: datetime) -> None:
    assert to_time(moment.isoformat(), "Created") == moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-01T00:00:11Z", "2026-11-01T00:00:11Z"),
        ("2026-11-01T02:00:11+02:00", "2026-11-01T00:00:11Z"),
        ("1700000000000 ", "2023-11-14T22:13:20Z"),  # digits with a trailing blank are still epoch milliseconds
        ("\t1700000000000\n", "2023-11-14T22:13:20Z"),
        ("2026-11-01T00:00:11Z\n", "2026-11-01T00:00:11Z"),
        (" \t", None),
    ],
)
def test_times_read_the_same_whichever_way_their_text_ends(value: str, expected: str | None) -> None:
    assert to_time(value, "Modified") == expected


def _long_way_time(value: str) -> str | None:
    """to_time of a string the way it read every string before the `YYYY-MM-DDTHH:MM:SSZ` shortcut."""
    from mailhook.extract.times import _iso_time

    return _iso_time(value, "t")


_TIME_FORMS = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ").rjust(20, "0")
    ),
    st.text(alphabet="0123456789-:TZW. +", min_size=18, max_size=22).map(lambda s: s[:-1] + "Z"),
    st.sampled_from([
        "2026-W44-1T000020.5Z", "2026-11-01T000020.5Z", "2026-11-01 00:00:20Z", "2026-11-01T24:00:00Z",
        "2026-11-01T00:00:60Z", "2026-02-30T00:00:00Z", "0999-11-01T00:00:20Z", "2026-11-01T00:00:20z",
        "\uff12026-11-01T00:00:20Z", "2026-11-01T00:00:2 Z", "+026-11-01T00:00:20Z", "2026-1-01T00:00:020Z",
    ]),
)


@settings(max_examples=2000)
@given(_TIME_FORMS)
def test_to_time_reads_a_utc_text_as_the_long_way_does(value: str) -> None:
    """The `…Z` shortcut returns exactly what parsing and formatting return, and refuses what they refuse."""
    assert _outcome(to_time, value) == _outcome(lambda v, n: _long_way_time(v), value)


def _outcome(read: Callable[[Any, str], object], value: object, name: str = "t") -> object:
    """Return what `read` makes of a value of field `name`, or ("refused", why)."""
    try:
        return read(value, name)
    except Unreadable as exc:
        return ("refused", str(exc))


class _Int(int):
    """An int that is not exactly `int`: it takes the general checks, as every int did before the short path."""


@settings(max_examples=500)
@given(st.integers(min_value=-(2**64), max_value=2**64))
def test_int_values_read_as_the_general_checks_read_them(value: int) -> None:
    """An int takes its own short path in to_int, to_time and to_decimal: the same result or the same refusal."""
    for read in (to_int, to_time, to_decimal, to_text, to_bool):
        assert _outcome(read, value) == _outcome(read, _Int(value))


@settings(max_examples=1000)
@given(st.text(alphabet="0123456789+- \t\u0661\u00b2\uff10x", max_size=42))
def test_to_int_reads_digit_text_as_its_integer_pattern_does(value: str) -> None:
    """Digits are told by isdigit and isascii before the regex: the same integers, the same refusals."""
    import re

    digits = value.strip()
    if not digits:
        assert to_int(value, "n") is None
    elif re.fullmatch(r"[+-]?[0-9]+", digits) and len(value) < 40 and -(2**63) <= int(digits) < 2**63:
        assert to_int(value, "n") == int(digits)
    else:
        with pytest.raises(Unreadable):
            to_int(value, "n")


@settings(max_examples=2000)
@given(_TIME_FORMS.map(lambda z: z[:-1] + "+00:00"))
def test_to_time_reads_a_utc_offset_text_as_the_long_way_does(value: str) -> None:
    """The `…+00:00` shortcut (the text reader's times) returns what parsing and formatting return, or refuses alike."""
    assert _outcome(to_time, value) == _outcome(lambda v, n: _long_way_time(v), value)


class _Custom(Mapping[str, int]):
    def __getitem__(self, key: str) -> int:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize(
    "value",
    [{}, {"a": 1}, OrderedDict(a=1), defaultdict(int), MappingProxyType({"a": 1}), _Custom(), [], ["a"], (), "ab",
     b"ab", 1, None, {1, 2}],
    ids=repr,
)  # fmt: skip
def test_is_mapping_says_what_isinstance_with_the_mapping_abc_says(value: object) -> None:
    assert is_mapping(value) is isinstance(value, Mapping)


@settings(max_examples=2000)
@given(st.one_of(st.integers(min_value=0, max_value=253_402_300_799_999),
                 st.sampled_from([0, 999, 1000, 86_399_999, 86_400_000, 951_782_400_000, 253_402_300_799_999])))
def test_epoch_milliseconds_are_written_as_the_datetime_of_them_writes_them(value: int) -> None:
    """An int time is written from `gmtime`: the text a UTC datetime of its seconds gives, from 1970 to 9999."""
    moment = datetime.fromtimestamp(value // 1000, tz=UTC)
    assert to_time(value, "t") == moment.isoformat()[:19] + "Z"
    assert to_time(_Int(value), "t") == to_time(value, "t")


def test_epoch_milliseconds_past_year_9999_or_before_1970_are_still_refused() -> None:
    for value in (253_402_300_800_000, -1):
        with pytest.raises(Unreadable, match="epoch milliseconds out of range"):
            to_time(value, "t")


class _Str(str):
    """A str that is not exactly `str`: it takes the general checks, as every string did before the short paths."""


_WORDS = st.sampled_from(["true", "True", " FALSE ", "yes", "No", "1", "0", "", " ", "\u00a0", "maybe", "tru", "1.5",
                          "2", "-0", "1e3", "12.50", "0.0075", "NaN", "inf", "-Infinity", "1e15", "9" * 15,
                          "1" * 59, "1" * 60, " 1.25\t", "1,5", "\u0661", "\uff11", "0x10", "+3.", ".5"])


@settings(max_examples=2000)
@given(st.one_of(_WORDS, st.text(alphabet="01TtRrUuEeFfAaLlSsYyNnOo.+-eE \t\u00a0\u0661", max_size=62)))
def test_strings_read_as_the_general_checks_read_them(value: str) -> None:
    """A str takes its own short path in to_bool and to_decimal (as in to_int, to_text, to_time): the same answer."""
    for read in (to_int, to_time, to_decimal, to_text, to_bool):
        assert repr(_outcome(read, value)) == repr(_outcome(read, _Str(value)))
