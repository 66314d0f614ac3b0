"""Columns derived for analysts from what was received: numbers in E.164, the email's own Date.

Pure: no sockets, database or environment. Phone numbers are read with
Google's libphonenumber (the `phonenumbers` port), which knows every
country's numbering plan; the default region says how a number written
without a country code (`(310) 555-0003`) is read.
"""

from __future__ import annotations

import email.utils
import functools
import re
from datetime import UTC, datetime, timedelta

import phonenumbers

_SHORT_CODE = re.compile(r"\d{3,8}")
# A North American number as CallFire writes it (13105550003, +13105550003, 3105550003): with the
# default region US, libphonenumber reads every one as +1 and its ten digits (checked in
# tests/test_derived.py against the library over every area code), at a twentieth of the cost.
_NANP = re.compile(r"(?:\+1|1)?([2-9][0-9]{9})")
_DATE = re.compile(rb"^Date:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


@functools.lru_cache(maxsize=65536)
def e164(number: str | None, region: str = "US") -> str | None:
    """Return `number` in E.164 (`+13105550003`); a short code (`67076`) as its digits; else None.

    Short codes have no E.164 form (they only exist inside one country), so
    they stay as sent: a reply to a short code still joins the texts sent
    from it. Cached: a campaign sends from a handful of numbers, and parsing
    one costs ~20 µs.
    """
    if not number:
        return None
    text = number.strip()
    if _SHORT_CODE.fullmatch(text):
        return text
    if region.upper() == "US" and (nanp := _NANP.fullmatch(text)):
        return "+1" + nanp.group(1)
    try:
        parsed = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def valid_region(region: str) -> bool:
    """Say whether `region` is a region libphonenumber knows (ISO 3166-1 alpha-2, e.g. US, GB, DE)."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def sent_at(raw: bytes | None) -> str | None:
    """Return an email's Date header as UTC `YYYY-MM-DDTHH:MM:SSZ`, or None when it has no valid one."""
    if not raw:
        return None
    end = _header_end(raw, 1 << 20)
    limit = end if end >= 0 else min(len(raw), 1 << 16)
    # The first line starting "Date:" in any case, found in the lowered block (bytes.lower is ASCII-only,
    # as the pattern's IGNORECASE is): the pattern is then tried there alone, not at every position.
    head = raw[:limit].lower()
    at = 0 if head.startswith(b"date:") else head.find(b"\ndate:") + 1
    found = _DATE.match(raw, at, limit) if at or head.startswith(b"date:") else None
    if found is None:
        return None
    text = " ".join(found.group(1).decode("ascii", "replace").split())
    common = _COMMON_DATE.fullmatch(text)
    if common is not None and (quick := _common_utc(common)) is not None:
        return quick
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 5322's -0000: UTC, origin unknown
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError):
        return None


# The blank line ending a header block, from its first line end; `search` looks only at each LF (memchr).
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _header_end(raw: bytes, limit: int) -> int:
    """Return where the first `\\r?\\n\\r?\\n` within raw[:limit] starts, or -1.

    One search stopping at the first blank line: two `find`s (one per line
    end) each scanned the whole email when its lines did not end that way.
    """
    found = _BLANK_LINE.search(raw, 0, limit)
    if found is None:
        return -1
    first = found.start()
    return first - 1 if first > 0 and raw[first - 1] == 0x0D else first


# The Date most mailers write (`Fri, 27 Nov 2026 10:00:00 +0000`), read without the standard library's
# lenient parser, which gives the same moment for it (checked in tests/test_derived.py).
_COMMON_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([0-9]{1,2}) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9][0-9]{3}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)
_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_MONTH_DIGITS = {name: f"{number:02}" for name, number in _MONTHS.items()}


def _common_utc(found: re.Match[str]) -> str | None:
    """Return the UTC form of a common Date match, or None to leave it to the standard library."""
    day, month, year, hour, minute, second, sign, tz_hours, tz_minutes = found.groups()
    offset = int(tz_hours) * 3600 + int(tz_minutes) * 60
    if offset >= 86400:
        return None
    try:
        moment = datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
        if not offset:
            # Its own digits, once the datetime above has found them a valid moment: what the f-string
            # below writes for it (a four-digit year, two-digit times), without six int formats.
            return f"{year}-{_MONTH_DIGITS[month]}-{day if len(day) == 2 else '0' + day}T{hour}:{minute}:{second}Z"
        moment -= timedelta(seconds=-offset if sign == "-" else offset)
    except (OverflowError, ValueError):
        return None
    if moment.year < 1000:  # strftime's %Y writes such a year without padding: left to it
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    # What strftime writes, formatted in Python (strftime goes through the C library's, at twice the cost).
    return (f"{moment.year}-{moment.month:02}-{moment.day:02}"
            f"T{moment.hour:02}:{moment.minute:02}:{moment.second:02}Z")
