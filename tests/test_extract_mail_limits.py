"""The email reader's structure limits: at each limit an email is read, one past it is refused unparsed, quickly."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from typing import Any

import pytest

from mailhook.errors import Unreadable
from mailhook.extract import extract
from mailhook.extract.mail import parse_mail
from mailhook.models import MailLimits

JSON = b'{"TextNotification": {"SubscriptionId": 1, "Text": {"@id": "9", "Message": "hi"}}}'
HEAD = b"Subject: limits\r\nMIME-Version: 1.0\r\n"


def _parts(count: int) -> bytes:
    """An email of `count` MIME parts, the last one a notification."""
    empty = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * (count - 1)
    last = b"--b\r\nContent-Type: application/json\r\n\r\n" + JSON + b"\r\n--b--\r\n"
    return HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + empty + last


def _nested(levels: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    return HEAD + opening + b"Content-Type: application/json\r\n\r\n" + JSON + closing


def _documents(raw: bytes, limits: MailLimits) -> list[bytes]:
    return [d.data for d in parse_mail(raw, limits).documents]


def test_an_email_with_max_parts_parts_is_read_and_one_more_is_refused() -> None:
    limits = MailLimits(max_parts=50)
    assert _documents(_parts(49), limits) == [JSON]  # 49 delimiters and the closing one
    with pytest.raises(Unreadable, match=r"51 part delimiters \(limit max_parts 50\)"):
        parse_mail(_parts(50), limits)


def test_lines_starting_with_two_dashes_that_are_not_delimiters_are_not_parts() -> None:
    raw = _parts(3).replace(b"x\r\n", b"x\r\n" + b"-- signature\r\n" * 100)
    assert _documents(raw, MailLimits(max_parts=10)) == [JSON]


def test_an_email_with_270000_parts_is_refused_in_milliseconds() -> None:
    raw = _parts(270_000)
    assert len(raw) > 9_500_000
    started = time.perf_counter()
    result = extract(raw, "email")
    assert time.perf_counter() - started < 1.0  # parsing it took 30 s and 360 MB
    assert result.reason is not None and "(limit max_parts 1000)" in result.reason


def test_containers_at_the_limit_are_read_and_one_more_is_refused() -> None:
    limits = MailLimits(max_containers=20)
    assert _documents(_nested(20), limits) == [JSON]
    with pytest.raises(Unreadable, match=r"21 multipart/message containers \(limit 20\)"):
        parse_mail(_nested(21), limits)


def test_the_default_container_limit_is_postfix_s_mime_nesting_limit() -> None:
    assert MailLimits().max_containers == 100
    assert _documents(_nested(100), MailLimits()) == [JSON]
    with pytest.raises(Unreadable, match=r"\(limit 100\)"):
        parse_mail(_nested(101), MailLimits())


def test_an_email_of_max_lines_lines_is_read_and_one_more_line_is_refused() -> None:
    raw = HEAD + b"Content-Type: application/json\r\n\r\n" + JSON
    lines = raw.count(b"\n")
    assert _documents(raw, MailLimits(max_lines=lines)) == [JSON]
    with pytest.raises(Unreadable, match=rf"email of {lines + 1} lines \(limit max_lines {lines}\)"):
        parse_mail(raw + b"\n", MailLimits(max_lines=lines))


def test_lines_are_counted_only_past_max_lines_bytes_and_an_email_of_nothing_but_line_ends_is_bounded_exactly() -> None:
    # The line count is skipped where the bytes alone are no more than max_lines: an email of only line ends
    # is the case where the two are equal.
    blank = b"\n" * 40
    check = parse_mail(blank, MailLimits(max_lines=40))
    assert check.documents == ()
    with pytest.raises(Unreadable, match=r"email of 41 lines \(limit max_lines 40\)"):
        parse_mail(blank + b"\n", MailLimits(max_lines=40))


def test_three_million_short_lines_are_refused_in_milliseconds() -> None:
    raw = HEAD + b"\r\n" + b"x\r\n" * 3_333_333
    started = time.perf_counter()
    result = extract(raw, "email")
    assert time.perf_counter() - started < 1.0  # parsing them took 1.5 s and 350 MB
    assert result.reason is not None and "(limit max_lines 250000)" in result.reason


def _part_headers(count: int) -> bytes:
    fields = b"".join(b"X-Field-%d: %d\r\n" % (i, i) for i in range(count - 1))
    return (
        HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n' + fields
        + b"Content-Type: application/json\r\n\r\n" + JSON + b"\r\n--b--\r\n"
    )


def test_header_fields_up_to_the_limit_are_read_and_one_more_is_refused_as_they_are_parsed() -> None:
    # The top-level header is trimmed to the fields mailhook reads first: Subject, MIME-Version, Content-Type.
    limits = MailLimits(max_header_fields=3 + 200)
    assert _documents(_part_headers(200), limits) == [JSON]
    with pytest.raises(Unreadable, match=r"more than 203 MIME header fields \(limit max_header_fields\)"):
        parse_mail(_part_headers(201), limits)


def test_a_header_field_keeps_header_size_limit_bytes_and_the_excess_is_discarded() -> None:
    subject = b"s" * 5000
    raw = b"Subject: " + subject + b"\r\n" + b"Content-Type: application/json\r\n\r\n" + JSON
    mail = parse_mail(raw, MailLimits(header_size_limit=1000))
    assert mail.subject == "s" * 1000
    assert [d.data for d in mail.documents] == [JSON]
    assert parse_mail(raw, MailLimits(header_size_limit=5000)).subject == "s" * 5000


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "large"])
def test_serve_reads_email_with_the_configured_limits(start_server: Any, size: str) -> None:
    from smtp_support import client

    runtime = start_server(parsing={"max_parts": 5})
    raw = _parts(10) if size == "small" else _parts(10).replace(b"x\r\n", (b"x" * 900 + b"\r\n") * 10)
    assert (len(raw) > 64 * 1024) == (size == "large")
    with client(runtime) as smtp:
        smtp.sendmail("notifications@callfire.com", ["ops@example.com"], raw)
    with closing(sqlite3.connect(runtime.settings.database({}))) as conn:
        ((status, error),) = conn.execute("SELECT status, error FROM deliveries").fetchall()
    assert status == "quarantined" and "(limit max_parts 5)" in error
