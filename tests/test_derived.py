"""Derived columns: phone numbers in E.164 with libphonenumber, and an email's Date as UTC."""

from __future__ import annotations

import pytest

from mailhook.derived import e164, sent_at, valid_region


@pytest.mark.parametrize(
    ("number", "region", "expected"),
    [
        ("+1 (310) 555-0003", "US", "+13105550003"),
        ("13105550003", "US", "+13105550003"),
        ("(310) 555-0003", "US", "+13105550003"),
        ("310.555.0003", "us", "+13105550003"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("67076", "US", "67076"),  # a short code has no E.164 form: its digits
        ("not a number", "US", None),
        ("1", "US", None),
        ("", "US", None),
        (None, "US", None),
    ],
)
def test_numbers_written_any_way_become_one_e164_form(number: str | None, region: str, expected: str | None) -> None:
    assert e164(number, region) == expected


def test_regions_are_checked_against_libphonenumbers_list() -> None:
    assert valid_region("US") and valid_region("gb")
    assert not valid_region("XX") and not valid_region("USA")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"From: a\r\nDate: Tue, 1 Mar 2016 10:00:00 +0200\r\n\r\nbody", "2016-03-01T08:00:00Z"),
        (b"Date: Tue, 1 Mar 2016\r\n 10:00:00 -0500\r\nSubject: folded\r\n\r\n", "2016-03-01T15:00:00Z"),
        (b"date: 1 Mar 2016 10:00 GMT\n\n", "2016-03-01T10:00:00Z"),
        (b"Date: Tue, 1 Mar 2016 10:00:00 -0000\n\n", "2016-03-01T10:00:00Z"),
        (b"Subject: none\n\nDate: Tue, 1 Mar 2016 10:00:00 +0000\n", None),  # in the body, not a header
        (b"Date: yesterday\n\n", None),
        (b"", None),
    ],
)
def test_the_date_header_is_read_as_utc(raw: bytes, expected: str | None) -> None:
    assert sent_at(raw) == expected
