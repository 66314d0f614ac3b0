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


def _library_e164(number: str, region: str) -> str | None:
    """What libphonenumber alone makes of `number` (e164's answer without its shortcuts)."""
    import phonenumbers

    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def test_north_american_numbers_read_without_the_library_as_the_library_reads_them() -> None:
    # Every area code (and every 0/1 first digit the shortcut must leave alone), in each way CallFire writes them.
    import random

    rng = random.Random(15)
    e164.cache_clear()
    for area in range(1000):
        rest = f"{rng.randrange(10**7):07d}"
        for number in (f"1{area:03d}{rest}", f"+1{area:03d}{rest}", f"{area:03d}{rest}", f"+{area:03d}{rest}",
                       f"11{area:03d}{rest}", f"{area:03d}{rest}1"):
            assert e164(number, "US") == _library_e164(number, "US"), number
    assert e164("\u0663105550003", "US") == _library_e164("\u0663105550003", "US")  # non-ASCII digits


def _library_sent_at(raw: bytes) -> str | None:
    """sent_at as the standard library alone reads it (the regex scan and parsedate_to_datetime, no shortcut)."""
    import email.utils
    import re
    from datetime import UTC

    end = re.search(rb"\r?\n\r?\n", raw[: 1 << 20])
    found = re.search(rb"^Date:[ \t]*(.*(?:\r?\n[ \t].*)*)", raw[: end.start() if end else min(len(raw), 1 << 16)],
                      re.IGNORECASE | re.MULTILINE)
    if found is None:
        return None
    text = re.sub(r"\s+", " ", found.group(1).decode("ascii", "replace")).strip()
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError):
        return None


def test_common_dates_read_without_the_library_as_the_library_reads_them() -> None:
    import random

    rng = random.Random(15)
    days = ("Mon, ", "Sun, ", "", "Xyz, ", "mon, ")
    months = ("Jan", "Feb", "Jun", "Dec", "dec", "Foo")
    for _ in range(20000):
        day = rng.choice(("1", "01", "28", "29", "30", "31", "00", "32", "7"))
        year = rng.choice(("2026", "2024", "2100", "1000", "9999", "0099", "1970", "26"))
        clock = rng.choice(("10:00:00", "00:00:00", "23:59:59", "24:00:00", "12:60:00", "12:00:61", "10:00"))
        zone = rng.choice(("+0000", "-0000", "+0200", "-0500", "+2359", "-2359", "+2400", "+0099", "-9999", "GMT",
                           "+0530 (IST)", "+05"))
        space = rng.choice((" ", "  ", "\r\n ", "\t", "\x1c"))
        date = f"{rng.choice(days)}{day}{space}{rng.choice(months)} {year} {clock} {zone}"
        for raw in (f"From: a\r\nDate: {date}\r\n\r\nbody".encode(), f"Date:{date}\n\n".encode()):
            assert sent_at(raw) == _library_sent_at(raw), raw
    for raw in (b"Date: Fri, 27 Nov 2026 10:00:00 +0000", b"X: 1\n\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\n\n",
                b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\r\n\r\n", b"\n\nDate: Fri, 27 Nov 2026 10:00:00 +0000",
                b"X-Date: Fri, 27 Nov 2026 10:00:00 +0000\nDATE: Sat, 28 Nov 2026 10:00:00 +0100\n\n",
                b"X-Date: Fri, 27 Nov 2026 10:00:00 +0000\n\nDate: Sat, 28 Nov 2026 10:00:00 +0100\n",
                b"date:Sat, 28 Nov 2026 10:00:00 +0100\nDate: Fri, 27 Nov 2026 10:00:00 +0000\n\n"):
        assert sent_at(raw) == _library_sent_at(raw), raw


@pytest.mark.parametrize(
    "date",
    ["Mon, 1 Jan 1000 00:00:00 +0100", "1 Jan 1000 00:59:59 +0100", "1 Jan 1000 01:00:00 +0100",
     "31 Dec 9999 23:59:59 -0001", "31 Dec 9999 23:59:59 +0000", "29 Feb 2024 23:30:00 -0100",
     "1 Mar 2026 00:00:00 +2359", "5 Dec 2026 04:05:06 -0000", "1 Jan 1000 00:00:00 +0000",
     "Sun, 7 Feb 2100 23:59:59 -0000", "29 Feb 2024 00:00:00 +0000", "29 Feb 2026 00:00:00 +0000"],
)  # fmt: skip
def test_dates_at_the_edges_of_the_years_are_written_as_the_library_writes_them(date: str) -> None:
    for raw in (f"Date: {date}\r\n\r\n".encode(), f"Date: {date}\n\nbody\n\nmore".encode()):
        assert sent_at(raw) == _library_sent_at(raw), raw


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_the_header_block_ends_at_its_first_blank_line_whichever_line_ends_the_email_uses(end: bytes) -> None:
    date = b"Date: Fri, 27 Nov 2026 10:00:00 +0000"
    body = (b"x" * 70 + end) * 2000  # longer than the header block by far; no blank line in it
    for raw in (b"From: a" + end + date + end + end + body,
                b"From: a" + end + end + date + end + body,
                b"From: a" + end + date + end + b"\r\n" + body,
                b"From: a" + end + date + end + body):
        assert sent_at(raw) == _library_sent_at(raw), raw[:80]
