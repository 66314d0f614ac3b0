"""read_single_part reads every email it accepts into the Mail mail-parser's path reads, and accepts the common ones."""

from __future__ import annotations

import base64
import os
import quopri
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailparser.exceptions import MailParserError

from mailhook.errors import Unreadable
from mailhook.extract.mail import Mail, _parse, _read, _trim_headers, check_structure, parse_mail
from mailhook.extract.single_part import read_single_part
from mailhook.models import MailLimits

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES * 5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMITS = MailLimits()


def _slow(raw: bytes, limits: MailLimits = LIMITS) -> Mail | str:
    """Read `raw` the way parse_mail did before the fast path: mail-parser under the trimmed headers."""
    try:
        check_structure(raw, limits)
        return _read(_parse(_trim_headers(raw), limits))
    except Unreadable as exc:
        return f"Unreadable: {exc}"
    except (MailParserError, RecursionError) as exc:
        return f"Unreadable: MIME structure nested too deeply to parse: {exc}"
    except Exception as exc:  # noqa: BLE001 - parse_mail's own mapping, compared as text
        return f"Unreadable: email could not be parsed: {type(exc).__name__}: {exc}"


def _fast(raw: bytes, limits: MailLimits = LIMITS) -> Mail | str | None:
    """Read `raw` through parse_mail when the fast path accepts it, else None."""
    if read_single_part(_trim_headers(raw), limits) is None:
        return None
    try:
        return parse_mail(raw, limits)
    except Unreadable as exc:
        return f"Unreadable: {exc}"


def _assert_same_when_accepted(raw: bytes, limits: MailLimits = LIMITS) -> bool:
    fast = _fast(raw, limits)
    if fast is not None:
        assert fast == _slow(raw, limits), raw
    return fast is not None


def _fixture_emails() -> list[Path]:
    return sorted(
        p for p in (ROOT / "fixtures").rglob("*") if p.is_file() and (p.suffix == ".eml" or p.parent.name == "email")
        and not p.name.endswith(".json")
    )


def _bench_emails(count: int) -> Iterator[bytes]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import distinct
    finally:
        sys.path.remove(str(ROOT / "bench"))
    emails = distinct.Emails(7)
    for _ in range(count):
        yield emails.message()


@pytest.mark.parametrize("path", _fixture_emails(), ids=lambda p: p.name)
def test_every_fixture_email_the_fast_path_accepts_reads_as_mail_parser_reads_it(path: Path) -> None:
    raw = path.read_bytes()
    _assert_same_when_accepted(raw)
    _assert_same_when_accepted(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def test_the_fast_path_accepts_single_part_fixture_emails() -> None:
    accepted = [p.name for p in _fixture_emails() if _assert_same_when_accepted(p.read_bytes())]
    assert len(accepted) >= 10, accepted


def test_every_bench_email_the_fast_path_accepts_reads_as_mail_parser_reads_it_and_single_parts_are_accepted() -> None:
    accepted = total = single = 0
    for raw in _bench_emails(3000):
        total += 1
        single += b"multipart/" not in raw
        accepted += _assert_same_when_accepted(raw)
        accepted_crlf = _assert_same_when_accepted(raw.replace(b"\n", b"\r\n"))
        assert accepted_crlf == (b"multipart/" not in raw)
    # Every single-part shape of the mix (plain, quoted-printable, Field: value, HTML table, forwards, replies).
    assert accepted == single > total / 2


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: hi\nMessage-ID: <a@b>\nContent-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n\nCallId: 12\nState: FINISHED\n",
        b"Subject: hi\r\nContent-Type: text/html; charset=\"iso-8859-1\"\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>caf=E9 =\r\nx</p>\r\n",
        b"Subject: hi\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(b"<TextNotification/>\n") ,
        b"Subject: no content type\n\nhello\n",
        b"Subject: flowed\nContent-Type: text/plain; format=flowed; delsp=yes\n\nab \ncd\n",
        b"Received: from x\n\tby y\nSubject: folded\n  subject\nMIME-Version: 1.0\n\n\xc3\xa9t\xc3\xa9\n",
    ],
    ids=["8bit", "qp-latin1-crlf", "base64", "no-content-type", "flowed", "folded-8bit"],
)
def test_the_fast_path_accepts_common_simple_emails_and_reads_them_as_mail_parser_does(raw: bytes) -> None:
    assert _assert_same_when_accepted(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: =?utf-8?q?caf=C3=A9?=\n\nx\n",
        b"Subject: a\nSubject: b\n\nx\n",
        b"Content-Type: text/plain\nContent-Type: text/html\n\nx\n",
        b"Content-Type: text/plain;\n charset=utf-8\n\nx\n",
        b"Content-Type: text/plain; name=a.txt\n\nx\n",
        b"Content-Type: application/json\n\n{}\n",
        b"Content-Disposition: attachment\n\nx\n",
        b"Content-Transfer-Encoding: base64\n\nnot base64!\n",
        b"Content-Transfer-Encoding: x-uuencode\n\nx\n",
        b"Content-Type: text/plain; charset=x-unknown\n\nx\n",
        b"Subject: only headers\n",
        b"Subject: caf\xc3\xa9\n\nx\n",
    ],
)
def test_the_fast_path_declines_what_it_cannot_prove_it_reads_alike(raw: bytes) -> None:
    assert read_single_part(_trim_headers(raw), LIMITS) is None


def test_an_email_over_a_header_limit_gets_the_slow_path_s_answer() -> None:
    raw = b"Subject: " + b"s" * 500 + b"\nMessage-ID: <a@b>\nContent-Type: text/plain\n\nhello\n"
    cut = MailLimits(header_size_limit=100)
    assert read_single_part(_trim_headers(raw), cut) is None
    assert parse_mail(raw, cut).subject == "s" * 100 == _slow(raw, cut).subject  # type: ignore[union-attr]
    few = MailLimits(max_header_fields=2)
    assert read_single_part(_trim_headers(raw), few) is None
    with pytest.raises(Unreadable, match=r"more than 2 MIME header fields \(limit max_header_fields\)"):
        parse_mail(raw, few)
    assert _slow(raw, few) == "Unreadable: more than 2 MIME header fields (limit max_header_fields); not parsed"


# --- generated variants of single-part emails --------------------------------------------------------------------

DOCUMENT = (ROOT / "fixtures" / "seed").glob("*")
SAMPLE = next(p.read_bytes() for p in sorted(DOCUMENT) if not p.name.endswith(".json"))
TEXTS = st.sampled_from(
    [
        b"",
        b"hello\n",
        SAMPLE,
        b"CallId: 123\nState: FINISHED\nFromNumber: 12135551234\n",
        b"<table><tr><td>State</td><td>FINISHED</td></tr></table>\n",
        b"> On Monday someone wrote:\n> CallId: 5\n",
        b"caf\xc3\xa9 \xe9 \x00\x01 end",
        b"soft = break and long line " * 5,
        b"flowed line \nnext\n-- \nsig\n",
        b"\xef\xbb\xbf<?xml version='1.0'?><a/>",
    ]
)
HEADER_VALUES = st.sampled_from(
    ["", " ", "plain", "folded\n more", "folded\n\tmore ", "=?utf-8?q?x?=", "trailing  ", "<id@x>", "a\x7fb",
     "caf\udce9"]
)
CONTENT_TYPES = st.sampled_from(
    [None, "text/plain", "TEXT/HTML", "text/plain; charset=utf-8", 'text/plain; charset="UTF-8"',
     "text/html;charset=iso-8859-1", "text/plain; charset=us-ascii", "text/plain; charset=x-unknown",
     "text/plain; charset=utf-7", "text/plain; charset=\"\"", "text/plain; charset=", "text/plain; format=flowed",
     "text/plain; format=\"Flowed\"; DelSp=Yes", "text/html; format=flowed",
     "text/plain; charset=utf-8; charset=latin1",
     "text/plain ; charset = utf-8 ", "text/plain;\n charset=utf-8", "text/plain; name=x.txt", "text", "text/plain/x",
     "application/json", "text/xml", "text/plain; charset=<utf-8>", "text/plain;", "text/plain; charset*=utf-8''x",
     "multipart/mixed; boundary=b"]
)
ENCODINGS = st.sampled_from(
    [None, "7bit", "8bit", "quoted-printable", "base64", "Base64", "BASE64 ", " base64", "binary", "x-uuencode", "8Bit"]
)


@st.composite
def single_part_emails(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    fields: list[str] = []
    if draw(st.booleans()):
        fields.append("Received: from a\n\tby b")
    for name in ("Subject", "Message-ID", "MIME-Version"):
        if draw(st.booleans()):
            fields.append(f"{draw(st.sampled_from([name, name.lower(), name.upper()]))}: {draw(HEADER_VALUES)}")
    ctype = draw(CONTENT_TYPES)
    if ctype is not None:
        fields.append(f"Content-Type: {ctype}")
    if draw(st.integers(0, 9)) == 0:
        fields.append(f"Content-Type: {draw(CONTENT_TYPES) or 'text/html'}")
    cte = draw(ENCODINGS)
    if cte is not None:
        fields.append(f"Content-Transfer-Encoding: {cte}")
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from(["Content-Disposition: inline", "Content-Disposition: attachment",
                                            'Content-Disposition: inline; filename="a.txt"'])))
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from(["no colon here", "From someone", ": empty name", " leading space",
                                            "X-Odd: \udcff byte", "Bare: cr\r here"])))
    draw(st.randoms()).shuffle(fields)
    body = draw(TEXTS) + draw(st.binary(max_size=40))
    encode = draw(st.sampled_from(["as is", "qp", "base64", "bad base64"]))
    if encode == "qp":
        body = quopri.encodestring(body)
    elif encode == "base64":
        body = base64.encodebytes(body)
    elif encode == "bad base64":
        body = base64.encodebytes(body)[: draw(st.integers(0, 30))] + draw(st.sampled_from([b"", b"=", b"!", b"\n="]))
    if newline == "\r\n":
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = newline.join(fields).replace("\n", newline).encode("ascii", "surrogateescape")
    if draw(st.integers(0, 19)) == 0:
        return head + (newline.encode() if head and draw(st.booleans()) else b"")  # headers only
    return head + (newline.encode() if head else b"") + newline.encode() + body


@FUZZ
@given(raw=single_part_emails(), limits=st.sampled_from([LIMITS, MailLimits(max_header_fields=2),
                                                          MailLimits(header_size_limit=4)]))
def test_every_generated_single_part_email_the_fast_path_accepts_reads_as_mail_parser_reads_it(
    raw: bytes, limits: MailLimits
) -> None:
    _assert_same_when_accepted(raw, limits)
