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
from datetime import UTC

import phonenumbers

_SHORT_CODE = re.compile(r"\d{3,8}")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
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
    end = _HEAD_END.search(raw, 0, 1 << 20)
    found = _DATE.search(raw, 0, end.start() if end else min(len(raw), 1 << 16))
    if found is None:
        return None
    text = found.group(1).decode("ascii", "replace")
    try:
        moment = email.utils.parsedate_to_datetime(re.sub(r"\s+", " ", text).strip())
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 5322's -0000: UTC, origin unknown
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError):
        return None
