"""Payloads serialize to compact JSON that keeps every number's exact value and never outgrows its text."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from mailhook.models.json_text import json_encoder, to_json


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


_PAYLOADS = [
    {"a": 1, "b": [1.5, -0.0, 1e300, None, True, False], "c": {"d": "é\u2028\"\\\x00", "e": []}, "f": {}},
    {"nested": [[{"x": [1, [2, [3, {"y": "z"}]]]}]], "n": Decimal("2.50"), "t": (1, 2), "s": frozenset()},
    ["top", "level", 3],
    "a string alone",
    {"k": "ascii only", "big": 12345678901234567890, "neg": -7, "uni": "日本語 \ud83d\ude00"},
]


@pytest.mark.parametrize("payload", _PAYLOADS)
def test_a_payload_is_the_json_the_standard_encoder_writes_with_the_same_options(payload: object) -> None:
    from mailhook.models.json_text import _json_default

    expected = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    assert to_json(payload) == expected


def test_an_exact_number_met_inside_a_container_leaves_the_next_payload_unaffected() -> None:
    inner = {"deep": [{"n": Decimal("1e999")}]}
    assert to_json({"x": inner, "y": [inner]}) == '{"x":{"deep":[{"n":1E+999}]},"y":[{"deep":[{"n":1E+999}]}]}'
    # The same containers again, now without the exact number: written by the one C encoder as usual.
    inner["deep"][0]["n"] = 1
    assert to_json({"x": inner, "y": [inner]}) == '{"x":{"deep":[{"n":1}]},"y":[{"deep":[{"n":1}]}]}'


def test_a_value_no_json_can_hold_is_refused_as_before() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        to_json({"x": object()})


@pytest.mark.parametrize("accelerated", [True, False], ids=["C encoder", "without it"])
@pytest.mark.parametrize(("ensure_ascii", "separators"), [(False, (",", ":")), (True, (", ", ": "))],
                         ids=["payload", "log line"])
@pytest.mark.parametrize("payload", _PAYLOADS)
def test_json_encoder_writes_what_the_standard_encoder_writes_with_or_without_its_c_constructor(
    payload: object, ensure_ascii: bool, separators: tuple[str, str], accelerated: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not accelerated:
        monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = json_encoder(default=str, ensure_ascii=ensure_ascii, separators=separators)
    assert encode(payload) == json.dumps(payload, ensure_ascii=ensure_ascii, separators=separators, default=str)


def test_json_encoder_uses_the_c_constructor_this_python_has() -> None:
    # If an upgrade drops or renames it, every payload and JSON log line falls back to the slower encoder.
    assert callable(getattr(json.encoder, "c_make_encoder", None))
