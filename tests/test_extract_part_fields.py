"""A part's header block, and its parameters, read from the cache read as they read without it, counts and all."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.extract.header_fields import (
    CACHED_PARAMETER_CHARS,
    _parameter_pairs_cached,
    parameters,
    read_fields,
)
from mailhook.extract.simple_mail import _PART_FIELDS, CACHED_BLOCK_BYTES, read_part_fields
from mailhook.extract.simple_part import _TEXT_PARAMETERS
from mailhook.models import MailLimits

# Lines that make part header blocks of every kind: known and unknown fields, folds, odd bytes, repeats.
_LINES = st.sampled_from(
    [b"Content-Type: text/plain; charset=utf-8", b"Content-Type: application/xml", b"content-type: text/html",
     b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: base64", b"MIME-Version: 1.0",
     b'Content-Disposition: attachment; filename="n.xml"', b"Content-Type: text/plain;\r\n charset=utf-8",
     b"Content-Type: multipart/mixed;\n\tboundary=b1", b"Subject: x", b"X-Other: y", b" folded", b"\tfolded",
     b"no colon", b"Content-Type: caf\xc3\xa9", b"Content-Type: " + b"x" * 60, b""]
)
_BLOCKS = st.lists(_LINES, max_size=6).flatmap(
    lambda lines: st.sampled_from([b"\n", b"\r\n"]).map(lambda end: end.join(lines))
)
_LIMITS = st.sampled_from([MailLimits(), MailLimits(header_size_limit=20), MailLimits(header_size_limit=70)])


@settings(max_examples=3000, deadline=None)
@given(_BLOCKS, _LIMITS, st.integers(0, 5))
def test_a_part_block_reads_from_the_cache_as_read_fields_reads_it(
    block: bytes, limits: MailLimits, before: int
) -> None:
    expected_count = [before]
    expected = read_fields(block, _PART_FIELDS, limits, expected_count)
    for _ in range(2):  # the first call may fill the cache, the second reads from it
        count = [before]
        assert read_part_fields(block, limits, count) == expected
        assert count == expected_count


def test_a_part_block_read_from_the_cache_is_the_callers_own() -> None:
    block = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r"
    first = read_part_fields(block, MailLimits(), [0])
    assert first is not None
    first["content-type"] = "changed"
    assert read_part_fields(block, MailLimits(), [0]) == {
        "content-type": "text/plain", "content-transfer-encoding": "7bit"}


def test_blocks_at_and_past_the_cached_size_read_alike() -> None:
    for size in (CACHED_BLOCK_BYTES - 1, CACHED_BLOCK_BYTES, CACHED_BLOCK_BYTES + 1):
        head = b"Content-Type: text/plain; charset="
        block = head + b"a" * (size - len(head))
        assert len(block) == size
        for limits in (MailLimits(), MailLimits(header_size_limit=100)):
            expected_count, count = [1], [1]
            expected = read_fields(block, _PART_FIELDS, limits, expected_count)
            assert read_part_fields(block, limits, count) == expected
            assert read_part_fields(block, limits, count) == expected
            assert count[0] == 1 + 2 * (expected_count[0] - 1)


_PARAMETER_TEXTS = st.lists(
    st.sampled_from(
        ["; charset=utf-8", '; charset="UTF-8"', "; format=flowed", ";delsp=yes", "; name=x", "; CHARSET=a"]
    ),
    max_size=3,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(_PARAMETER_TEXTS, st.sampled_from([_TEXT_PARAMETERS, frozenset({"name"}), frozenset()]))
def test_parameters_read_from_the_cache_read_as_read_anew(text: str, allowed: frozenset[str]) -> None:
    first = parameters(text, allowed)
    _parameter_pairs_cached.cache_clear()
    assert parameters(text, allowed) == first  # read anew
    assert parameters(text, allowed) == first  # from the cache
    expected: dict[str, str] | None = {}
    for piece in text.split(";")[1:]:
        name, value = piece.split("=")
        name = name.strip().lower()
        if expected is None or name not in allowed or name in expected:
            expected = None
        else:
            expected[name] = value.strip().strip('"')
    assert first == expected


def test_parameters_read_from_the_cache_are_the_callers_own() -> None:
    params = parameters("; charset=utf-8", _TEXT_PARAMETERS)
    assert params == {"charset": "utf-8"}
    params["charset"] = "changed"
    assert parameters("; charset=utf-8", _TEXT_PARAMETERS) == {"charset": "utf-8"}
    assert parameters("; charset=utf-8", frozenset({"name"})) is None  # the allowed names are part of the key


def test_parameters_past_the_cached_size_read_alike_and_are_not_kept() -> None:
    long_name = "n" * (CACHED_PARAMETER_CHARS - len("; name=")) + "x"
    _parameter_pairs_cached.cache_clear()
    assert parameters(f"; name={long_name[:-1]}", frozenset({"name"})) == {"name": long_name[:-1]}
    assert parameters(f"; name={long_name}", frozenset({"name"})) == {"name": long_name}
    assert _parameter_pairs_cached.cache_info().currsize == 1  # the one at the cached size only
