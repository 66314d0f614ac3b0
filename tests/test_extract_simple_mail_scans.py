"""The fast path's byte and line scans find exactly what the regexes they replaced found."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.extract.header_fields import (
    _FIELD_LINE,
    _header_bytes_plain,
    cr_only_before_lf,
    first_blank_line,
    without_last_line_end,
)
from mailhook.extract.headers import header_end

# The patterns as they were before the scans (simple_mail.py until round 7).
_OLD_ODD_HEADER_BYTE = re.compile(rb"[^\t\n\r\x20-\x7e]|\r(?!\n)")
_OLD_FIELD_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*([^\r\n]*)\r?$", re.MULTILINE)
_OLD_LAST_LINE_END = re.compile(rb"(?:\r\n|\n)\Z")

# Pieces that make line ends, blank lines, field names, folds and odd bytes meet in every way.
_BYTE_PIECES = st.sampled_from(
    [b"\n", b"\r\n", b"\r", b"\n\n", b"\n\r\n", b"\r\n\r\n", b" ", b"\t", b":", b"a", b"Z", b"-", b"9",
     b"Subject: x", b"Content-Type: text/plain", b"\x00", b"\x7f", b"\x80", b"\xff", b"\x1f", b"~"]
)
_BYTES = st.lists(_BYTE_PIECES, max_size=40).map(b"".join)


def _old_first_blank_line(data: bytes) -> int:
    return min((i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0), default=-1)


def _old_header_end(raw: bytes) -> int:
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    if not ends:
        return len(raw)
    first = min(ends)
    return first - 1 if first > 0 and raw[first - 1] == 0x0D else first


@settings(max_examples=3000, deadline=None)
@given(_BYTES)
def test_the_first_blank_line_is_where_the_earlier_of_both_searches_finds_it(data: bytes) -> None:
    assert first_blank_line(data) == _old_first_blank_line(data)
    assert header_end(data) == _old_header_end(data)


def test_a_crlf_blank_line_before_an_lf_one_is_the_first() -> None:
    assert first_blank_line(b"a: b\r\n\r\nx\n\ny") == 5
    assert first_blank_line(b"a: b\n\nx\r\n\r\ny") == 4
    assert first_blank_line(b"a: b\r\n\nx") == 5  # the LF pair wins when it comes first
    assert first_blank_line(b"a\n\r\n") == 1
    assert first_blank_line(b"a\r\nb\r\n") == -1


@settings(max_examples=3000, deadline=None)
@given(_BYTES)
def test_the_last_line_end_comes_off_as_the_pattern_cut_it(data: bytes) -> None:
    assert without_last_line_end(data) == _OLD_LAST_LINE_END.sub(b"", data, count=1)


@settings(max_examples=3000, deadline=None)
@given(_BYTES)
def test_header_bytes_are_plain_exactly_where_the_pattern_found_no_odd_byte(block: bytes) -> None:
    assert _header_bytes_plain(block) == (_OLD_ODD_HEADER_BYTE.search(block.removesuffix(b"\r")) is None)


def test_every_byte_outside_printable_ascii_tab_and_line_ends_is_odd() -> None:
    for byte in range(256):
        plain = byte in (0x09, 0x0A, 0x0D) or 0x20 <= byte <= 0x7E
        assert _header_bytes_plain(b"a: b" + bytes([byte]) + b"x") == (plain and byte != 0x0D)  # a CR not before LF
    assert _header_bytes_plain(b"a: b\r")  # the block's own last CR, before the blank line's LF
    assert not _header_bytes_plain(b"a: b\r\r")


@settings(max_examples=3000, deadline=None)
@given(_BYTES)
def test_the_field_lines_are_the_ones_the_multiline_pattern_found(data: bytes) -> None:
    text = data.decode("latin-1")
    assert _FIELD_LINE.findall("\n" + text) == _OLD_FIELD_LINE.findall(text)


@settings(max_examples=3000, deadline=None)
@given(_BYTES)
def test_cr_only_before_lf_says_what_the_two_counts_said(data: bytes) -> None:
    assert cr_only_before_lf(data) == (data.count(b"\r") == data.count(b"\r\n"))


def test_a_crlf_email_s_blank_line_is_found_as_an_lf_one_s() -> None:
    lf = b"Subject: x\nTo: y\n\nbody\n\nmore\n"
    crlf = lf.replace(b"\n", b"\r\n")
    assert first_blank_line(lf) == 16
    assert first_blank_line(crlf) == 18
    assert first_blank_line(b"Subject: x\r\n\nbody") == 11  # CRLF lines, then an LF blank line
    assert first_blank_line(b"Subject: x\nTo: y\r\n\r\nbody") == 17  # LF first, then CRLF
