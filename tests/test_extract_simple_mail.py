"""read_simple_mail reads every email it accepts into the Mail mail-parser's path reads, and accepts the common ones."""

from __future__ import annotations

import base64
import email.generator
import email.message
import email.policy
import io
import os
import quopri
import re
import sys
from collections.abc import Callable, Iterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailparser.exceptions import MailParserError

from mailhook.errors import Unreadable
from mailhook.extract.headers import trim_headers
from mailhook.extract.mail import Mail, _read, check_structure, parse_mail
from mailhook.extract.simple_mail import read_simple_mail
from mailhook.extract.slow_mail import parse_message
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
        return _read(parse_message(trim_headers(raw), limits))
    except Unreadable as exc:
        return f"Unreadable: {exc}"
    except (MailParserError, RecursionError) as exc:
        return f"Unreadable: MIME structure nested too deeply to parse: {exc}"
    except Exception as exc:  # noqa: BLE001 - parse_mail's own mapping, compared as text
        return f"Unreadable: email could not be parsed: {type(exc).__name__}: {exc}"


def _fast(raw: bytes, limits: MailLimits = LIMITS) -> Mail | str | None:
    """Read `raw` through parse_mail when the fast path accepts it, else None."""
    if read_simple_mail(trim_headers(raw), limits) is None:
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


def test_the_fast_path_reads_every_bench_email_alike_and_accepts_every_one() -> None:
    accepted = total = forwarded = 0
    for raw in _bench_emails(3000):
        total += 1
        forwarded += b"message/rfc822" in raw
        for variant in (raw, raw.replace(b"\n", b"\r\n")):
            # Every shape of the mix (plain, attachment, HTML alternative, quoted-printable, Field: value,
            # HTML table, inline forward, forward as message/rfc822, quoted reply).
            accepted += _assert_same_when_accepted(variant)
    assert accepted == 2 * total
    assert forwarded > 100


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
        b"Content-Type: text/plain;\n charset=utf-8;\r\n\tformat=flowed\n\nab \ncd\n",
    ],
    ids=["8bit", "qp-latin1-crlf", "base64", "no-content-type", "flowed", "folded-8bit", "folded-after-semicolon"],
)
def test_the_fast_path_accepts_common_simple_emails_and_reads_them_as_mail_parser_does(raw: bytes) -> None:
    assert _assert_same_when_accepted(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: =?utf-8?q?caf=C3=A9?=\n\nx\n",
        b"Subject: a\nSubject: b\n\nx\n",
        b"Content-Type: text/plain\nContent-Type: text/html\n\nx\n",
        b"Content-Type: text/plain\n ;charset=utf-8\n\nx\n",  # folded, but not right after a `;`
        b"Content-Type: text/\n plain\n\nx\n",
        b"Content-Transfer-Encoding:\n base64\n\neA==\n",
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
    assert read_simple_mail(trim_headers(raw), LIMITS) is None


MULTIPART = (
    b"Subject: hi\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\npreamble\n--b1\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\nSee the attached file.\n\n--b1\n"
    b"Content-Type: application/xml; name=\"n.xml\"\nContent-Transfer-Encoding: base64\n"
    b"Content-Disposition: attachment; filename=\"n.xml\"\n\n"
    + base64.encodebytes(
        b"<TextNotification><Text><TextRecord><Message>hi</Message></TextRecord></Text></TextNotification>"
    )
    + b"\n--b1--\n"
)


def test_the_fast_path_reads_a_text_part_and_a_base64_document_attachment_as_mail_parser_does() -> None:
    assert _assert_same_when_accepted(MULTIPART)
    assert _assert_same_when_accepted(MULTIPART.replace(b"\n", b"\r\n"))
    mail = parse_mail(MULTIPART)
    assert [d.origin for d in mail.documents] == ["attachment 'n.xml'"]
    assert [t.text for t in mail.texts] == ["See the attached file.\n"]


@pytest.mark.parametrize("boundary", [b"===============0517013466234163903==", b"----=_Part_0_1234567.1700000000000"])
def test_the_fast_path_reads_a_quoted_boundary_holding_equals_signs_as_mail_parser_does(boundary: bytes) -> None:
    raw = MULTIPART.replace(b"b1", boundary)
    assert _assert_same_when_accepted(raw)
    assert _assert_same_when_accepted(raw.replace(b"\n", b"\r\n"))
    assert read_simple_mail(trim_headers(raw.replace(b'"' + boundary + b'"', boundary, 1)), LIMITS) is None


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_the_fast_path_reads_8bit_text_parts_in_a_multipart_as_mail_parser_does(newline: bytes) -> None:
    raw = MULTIPART.replace(b"7bit\n\nSee the attached file.", b"8bit\n\nSee the caf\xc3\xa9 file. e\xcc\x81 \xff")
    raw = raw.replace(b"preamble", b"pr\xc3\xa9amble").replace(b"\n", newline)
    assert _assert_same_when_accepted(raw)
    assert [t.text for t in parse_mail(raw).texts] == [
        "See the caf\u00e9 file. \u00e9 \ufffd" + newline.decode()
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"\n--b1--\n", b"\n"),  # no closing delimiter
        (b"\n--b1--\n", b"\n--b1-- \n"),  # a closing delimiter with a space
        (b"\n--b1\nContent-Type: application", b"\n--b1\n--b1\nContent-Type: application"),  # two in a row
        (b"preamble", b"preamble --b1"),  # the boundary in content
        (b"\nContent-Transfer-Encoding: 7bit", b"\nContent-ID: <a@b>"),  # a field read elsewhere
        (b"filename=\"n.xml\"", b"filename=\"=?utf-8?q?n?=.xml\""),  # an encoded file name
        (b"multipart/mixed", b"multipart/digest"),
        (b"\n\npreamble", b"\nContent-Transfer-Encoding: base64\n\npreamble"),
        (b"PFRleHROb3R", b"PFRleHR\xc3\xa9Ob3R"),  # 8-bit bytes in a base64 attachment
        (b"Content-Type: text/plain; charset=utf-8\n", b"Content-Type: text/plain; charset=\xc3\xa9\n"),
    ],
)
def test_the_fast_path_declines_a_multipart_it_cannot_prove_it_reads_alike(old: bytes, new: bytes) -> None:
    raw = MULTIPART.replace(old, new, 1)
    assert raw != MULTIPART
    assert read_simple_mail(trim_headers(raw), LIMITS) is None


FORWARD = (
    b"Subject: Fwd: hi\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"f1\"\n\npreamble\n--f1\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\nFYI, forwarding it.\n\n--f1\n"
    b"Content-Type: message/rfc822\nContent-Disposition: attachment; filename=\"n.eml\"\n\n"
    b"From: CallFire <n@callfire.com>\nTo: sms@example.com\nSubject: Text finished\n"
    b"Date: Sun, 01 Nov 2026 00:00:07 +0000\nMessage-ID: <inner-1@callfire.com>\nMIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    b"<TextNotification><Text><TextRecord><Message>hi</Message></TextRecord></Text></TextNotification>\n"
    b"\n--f1--\n"
)
# Its header fields as the standard library reads them: 3 at the top (trimmed), 2 + 2 in the parts, 8 forwarded.
FORWARD_FIELDS = 15
FORWARD_LINES = FORWARD.count(b"\n")


def test_the_fast_path_reads_a_forwarded_message_as_mail_parser_does() -> None:
    assert _assert_same_when_accepted(FORWARD)
    assert _assert_same_when_accepted(FORWARD.replace(b"\n", b"\r\n"))
    mail = parse_mail(FORWARD)
    assert [d.origin for d in mail.documents] == ["text/plain part 2"]
    assert mail.documents[0].data.endswith(b"</TextNotification>")
    assert [t.text for t in mail.texts] == ["FYI, forwarding it.\n"]
    bare = FORWARD.replace(b'Content-Disposition: attachment; filename="n.eml"\n', b"")
    assert _assert_same_when_accepted(bare)
    assert parse_mail(bare) == mail


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"message/rfc822\n", b"message/rfc822; name=n.eml\n"),  # a parameter
        (b"message/rfc822\n", b"message/rfc822\nContent-Transfer-Encoding: base64\n"),
        (b"attachment; filename", b"inline; filename"),
        (b"attachment; filename", b"attachment; size=1; filename"),
        (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n<Text",
         b"Content-Type: multipart/mixed; boundary=x\n\n<Text"),  # a multipart forwarded
        (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n<Text",
         b"Content-Type: application/xml\nContent-Transfer-Encoding: base64\n"
         b"Content-Disposition: attachment; filename=a.xml\n\nPFRleHQ="),  # a document forwarded
        (b"Content-Transfer-Encoding: 8bit\n\n<Text", b"Content-Transfer-Encoding: 8bit\n"
         b"Content-Disposition: inline\n\n<Text"),
        (b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n",
         b"MIME-Version: 1.0\nContent-Type: text/plain; charset=\n utf-8\n"),  # a MIME field folded mid-parameter
        (b"\nTo: sms@example.com\n", b"\nFrom someone\n"),  # not a header line
        (b"\nTo: sms@example.com\n", b"\nTo: s\xc3\xa9@example.com\n"),  # 8-bit bytes
        (b"MIME-Version: 1.0\nContent-Type: text/plain", b"Content-Type: text/html\nContent-Type: text/plain"),
        (b"Content-Transfer-Encoding: 8bit\n\n<TextNotification>", b"Content-Transfer-Encoding: 8bit\n"
         b"<TextNotification>"),  # no blank line after the forwarded header (a defect)
    ],
)
def test_the_fast_path_declines_a_forward_it_cannot_prove_it_reads_alike(old: bytes, new: bytes) -> None:
    raw = FORWARD.replace(old, new, 1)
    assert raw != FORWARD
    assert read_simple_mail(trim_headers(raw), LIMITS) is None
    assert parse_mail(raw) == _slow(raw)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_forward_at_and_past_max_header_fields_reads_as_the_slow_path_reads_it(newline: bytes) -> None:
    raw = FORWARD.replace(b"\n", newline)
    at, past = MailLimits(max_header_fields=FORWARD_FIELDS), MailLimits(max_header_fields=FORWARD_FIELDS - 1)
    assert _assert_same_when_accepted(raw, at)
    assert read_simple_mail(trim_headers(raw), past) is None
    with pytest.raises(Unreadable, match=rf"more than {FORWARD_FIELDS - 1} MIME header fields"):
        parse_mail(raw, past)
    assert _slow(raw, past) == (
        f"Unreadable: more than {FORWARD_FIELDS - 1} MIME header fields (limit max_header_fields); not parsed"
    )


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_forward_at_and_past_header_size_limit_reads_as_the_slow_path_reads_it(newline: bytes) -> None:
    # The longest field value read, the forwarded Content-Type (longer than the top one under
    # slow_mail.parse_message's shared boundary, which the slow path cuts at header_size_limit).
    ctype = b'text/plain; charset="iso-8859-15"; format=fixed; delsp=no'
    assert len(ctype) > len(b'multipart/mixed; boundary="mailhook.shared.boundary.0"')
    raw = FORWARD.replace(b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit",
                          b"Content-Type: " + ctype + b"\nContent-Transfer-Encoding: 8bit").replace(b"\n", newline)
    size = len(ctype)
    assert _assert_same_when_accepted(raw, MailLimits(header_size_limit=size))
    # Past it the slow path cuts that Content-Type (to ...delsp=n), which only it reads alike.
    past = MailLimits(header_size_limit=size - 1)
    assert parse_mail(raw, past) == _slow(raw, past)
    # A longer field the forward carries but nothing reads is cut by compat32 and read no further: the same Mail.
    long_to = raw.replace(b"To: sms@example.com", b"To: " + b"x" * 500 + b"@example.com")
    assert _assert_same_when_accepted(long_to, MailLimits(header_size_limit=100))
    assert parse_mail(long_to, MailLimits(header_size_limit=100)) == parse_mail(raw)


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (MailLimits(max_containers=2), None),
        (MailLimits(max_containers=1), "2 multipart/message containers (limit 1)"),
        (MailLimits(max_parts=3), None),
        (MailLimits(max_parts=2), "3 part delimiters (limit max_parts 2)"),
        (MailLimits(max_lines=FORWARD_LINES), None),
        (MailLimits(max_lines=FORWARD_LINES - 1), f"email of {FORWARD_LINES} lines"),
    ],
    ids=["containers-at", "containers-past", "parts-at", "parts-past", "lines-at", "lines-past"],
)
def test_a_forward_at_and_past_the_structure_limits_gets_the_slow_path_s_answer(
    limits: MailLimits, reason: str | None
) -> None:
    assert _fast(FORWARD, limits) == _slow(FORWARD, limits)
    if reason is None:
        assert _assert_same_when_accepted(FORWARD, limits)
    else:
        with pytest.raises(Unreadable, match=re.escape(reason)):
            parse_mail(FORWARD, limits)


@pytest.mark.parametrize("cte", ["7bit", "8bit", "quoted-printable", "base64"])
@pytest.mark.parametrize("ctype", ["text/plain; charset=utf-8", "text/html"])
def test_the_fast_path_normalises_decoded_text_to_nfc_as_mail_parser_does(cte: str, ctype: str) -> None:
    text = "Cafe\u0301 \u0340 ok\n".encode()  # decomposed: e + combining acute, and a mark NFC replaces
    encoded = {"quoted-printable": quopri.encodestring(text), "base64": base64.encodebytes(text)}
    body = encoded.get(cte, text)
    raw = f"Subject: x\nContent-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n\n".encode() + body
    assert _assert_same_when_accepted(raw)
    assert _assert_same_when_accepted(raw.replace(b"\n", b"\r\n"))
    assert "Caf\u00e9 \u0300 ok" in parse_mail(raw).texts[0].text


def test_an_email_over_a_header_limit_gets_the_slow_path_s_answer() -> None:
    raw = b"Subject: " + b"s" * 500 + b"\nMessage-ID: <a@b>\nContent-Type: text/plain\n\nhello\n"
    cut = MailLimits(header_size_limit=100)
    assert read_simple_mail(trim_headers(raw), cut) is None
    assert parse_mail(raw, cut).subject == "s" * 100 == _slow(raw, cut).subject  # type: ignore[union-attr]
    few = MailLimits(max_header_fields=2)
    assert read_simple_mail(trim_headers(raw), few) is None
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


ATTACHMENT_FIELDS = st.sampled_from(
    [
        ['Content-Type: application/xml; name="notification.xml"', "Content-Transfer-Encoding: base64",
         'Content-Disposition: attachment; filename="notification.xml"'],
        ["Content-Type: application/json", "Content-Transfer-Encoding: base64",
         "Content-Disposition: attachment; filename=n.json"],
        ["Content-Type: application/json", "Content-Transfer-Encoding: base64", "Content-Disposition: attachment"],
        ["Content-Type: application/xml; charset=utf-8", "Content-Transfer-Encoding: base64",
         "Content-Disposition: attachment; filename=a.xml"],
        ["Content-Type: application/xml", "Content-Transfer-Encoding: 7bit",
         "Content-Disposition: attachment; filename=a.xml"],
        ["Content-Type: application/xml", "Content-Transfer-Encoding: base64",
         "Content-Disposition: inline; filename=a.xml"],
        ["Content-Type: application/xml", "Content-Transfer-Encoding: base64",
         "Content-Disposition: attachment; filename==?utf-8?q?a?=.xml"],
        ["Content-Type: text/plain", "Content-Transfer-Encoding: base64",
         "Content-Disposition: attachment; filename=a.txt"],
        ["Content-Type: application/xml", "Content-Transfer-Encoding: base64", "Content-ID: <x@y>",
         "Content-Disposition: attachment; filename=a.xml"],
        ["Content-Type: message/rfc822"],
        ["Content-Type: multipart/alternative; boundary=inner"],
    ]
)


USUAL_CONTENT_TYPES = st.sampled_from([None, "text/plain; charset=utf-8", "text/html; charset=utf-8", "text/plain"])
USUAL_ENCODINGS = st.sampled_from([None, "7bit", "8bit", "quoted-printable", "base64"])
USUAL_ATTACHMENT_FIELDS = st.sampled_from([
    ['Content-Type: application/xml; name="notification.xml"', "Content-Transfer-Encoding: base64",
     'Content-Disposition: attachment; filename="notification.xml"'],
    ["Content-Type: application/json", "Content-Transfer-Encoding: base64",
     "Content-Disposition: attachment; filename=n.json"],
])


FORWARD_FIELDS_OUTSIDE = st.sampled_from([
    ["Content-Type: message/rfc822", 'Content-Disposition: attachment; filename="notification.eml"'],
    ["Content-Type: message/rfc822"],
    ["Content-Type: Message/RFC822", "Content-Transfer-Encoding: 8bit", "Content-Disposition: attachment"],
    ["Content-Type: message/rfc822; name=a.eml", "Content-Disposition: attachment; filename=a.eml"],
    ["Content-Type: message/rfc822", "Content-Transfer-Encoding: base64"],
    ["Content-Type: message/rfc822", "Content-Disposition: inline"],
    ["Content-Type: message/rfc822", "Content-Disposition: attachment; filename=a.eml; size=3"],
])
FORWARDED_FIELDS = st.sampled_from([
    "From: CallFire <notifications@callfire.com>", "To: sms@example.com", "Subject: Text finished",
    "Subject: =?utf-8?q?caf=C3=A9?=", "Date: Sun, 01 Nov 2026 00:00:07 +0000", "Message-ID: <inner-1@callfire.com>",
    "MIME-Version: 1.0", "Received: from a\n\tby b", "X-Long: " + "x" * 70, "Subject: folded\n more",
    "Content-Type: text/plain; charset=utf-8", "Content-Type: text/html", "Content-Type: text/plain;\n format=flowed",
    "Content-Type: multipart/alternative; boundary=inner", "Content-Type: application/xml",
    "Content-Transfer-Encoding: 8bit", "Content-Transfer-Encoding: quoted-printable",
    "Content-Transfer-Encoding: base64", "Content-Disposition: inline", "no colon here", "From someone",
])


@st.composite
def forwarded_part(draw: st.DrawFn) -> tuple[list[str], bytes]:
    """A message/rfc822 part's own fields and its body (LF line ends): a forwarded message's header block and text."""
    outside = list(draw(FORWARD_FIELDS_OUTSIDE if draw(st.integers(0, 3)) == 3 else st.just(
        ["Content-Type: message/rfc822", 'Content-Disposition: attachment; filename="notification.eml"'])))
    usual = draw(st.integers(0, 3)) < 3  # hypothesis draws small numbers first
    if not usual:
        inner = draw(st.lists(FORWARDED_FIELDS, max_size=9))
    else:  # a usual forwarded header block
        inner = ["From: CallFire <notifications@callfire.com>", "To: sms@example.com", "Subject: Text finished",
                 "Message-ID: <inner-1@callfire.com>", "MIME-Version: 1.0"][: draw(st.integers(0, 5))]
        ctype, cte = draw(USUAL_CONTENT_TYPES), draw(USUAL_ENCODINGS)
        inner += [f"Content-Type: {ctype}"] if ctype is not None else []
        inner += [f"Content-Transfer-Encoding: {cte}"] if cte is not None else []
    if usual:
        body = draw(st.sampled_from([b"", b"hello\n", SAMPLE, b"CallId: 123\nState: FINISHED\n", b"a\n\n-- \nsig"]))
    else:
        body = draw(TEXTS) + (draw(st.binary(max_size=20)) if draw(st.integers(0, 3)) == 0 else b"")
    encode = draw(st.sampled_from(["as is", "as is", "qp", "base64"]))
    body = quopri.encodestring(body) if encode == "qp" else base64.encodebytes(body) if encode == "base64" else body
    head = "\n".join(inner).encode("ascii")
    if draw(st.integers(0, 19)) == 0:
        return outside, head + b"\n"  # headers only
    return outside, head + (b"\n" if head else b"") + b"\n" + body


@st.composite
def parts(draw: st.DrawFn, newline: str) -> bytes:
    """One part of a multipart: a text part like the single-part emails' bodies, a document attachment or a forward."""
    body = draw(TEXTS) + (draw(st.binary(max_size=20)) if draw(st.integers(0, 3)) == 0 else b"")
    if draw(st.integers(0, 3)) == 0:
        fields, body = draw(forwarded_part())
    elif draw(st.booleans()):
        fields = list(draw(ATTACHMENT_FIELDS if draw(st.booleans()) else USUAL_ATTACHMENT_FIELDS))
        body = draw(st.sampled_from([base64.encodebytes(body), base64.encodebytes(body)[:-3], body]))
    else:
        fields = []
        usual = draw(st.integers(0, 3)) > 0
        ctype = draw(USUAL_CONTENT_TYPES if usual else CONTENT_TYPES)
        if ctype is not None:
            fields.append(f"Content-Type: {ctype}")
        cte = draw(USUAL_ENCODINGS if usual else ENCODINGS)
        if cte is not None:
            fields.append(f"Content-Transfer-Encoding: {cte}")
        encode = draw(st.sampled_from(["as is", "qp", "base64"]))
        body = quopri.encodestring(body) if encode == "qp" else base64.encodebytes(body) if encode == "base64" else body
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from(["Content-ID: <a@b>", "X-Other: 1", "no colon", " folded", "Subject: x"])))
    head = newline.join(fields).encode("ascii")
    if draw(st.integers(0, 19)) == 0:
        return head + newline.encode()  # headers only
    return head + (newline.encode() if head else b"") + newline.encode() + body.replace(b"\n", newline.encode())


@st.composite
def nested_part(draw: st.DrawFn, newline: str, depth: int = 1) -> bytes:
    """A part that is itself a multipart (as EmailMessage nests text and HTML beside attachments), perhaps twice."""
    nl = newline.encode()
    boundary = draw(st.sampled_from(["inner", "===============1==", "b", "inner2"]))
    subtype = draw(st.sampled_from(["alternative", "mixed", "related", "digest"]))
    fold = draw(st.sampled_from([" ", newline + " "]))
    head = f"Content-Type: multipart/{subtype};{fold}boundary=\"{boundary}\"".encode()
    if draw(st.integers(0, 4)) == 0:
        head += nl + draw(st.sampled_from([b"MIME-Version: 1.0", b"Content-Disposition: attachment", b"X-Other: 1"]))
    delimiter = b"--" + boundary.encode()
    body = draw(st.sampled_from([b"", b"", b"inner preamble" + nl]))
    inner = st.one_of(parts(newline), nested_part(newline, depth + 1)) if depth < 2 else parts(newline)
    for part in draw(st.lists(inner, min_size=int(draw(st.integers(0, 9)) > 0), max_size=3)):
        body += delimiter + nl + part + nl
    body += draw(st.sampled_from([delimiter + b"--" + nl] * 3 + [delimiter + b"--", b""]))
    return head + nl + nl + body + draw(st.sampled_from([b"", b"", nl, b"epilogue" + nl]))


@st.composite
def multipart_emails(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    nl = newline.encode()
    boundary = draw(st.sampled_from(["b", "mix-1-2", "=_Part_1.2", "alt-9-9", "a b", "x:y", "inner", "FYI", "--",
                                     "===============0517013466234163903==", "a=b", "="]))
    quote = draw(st.sampled_from(['"', ""]))
    subtype = draw(st.sampled_from(["mixed", "alternative", "mixed", "alternative", "related", "digest", "MIXED"]))
    fold = draw(st.sampled_from([" ", " ", *(newline + blank for blank in (" ", "\t", "  ", "")), f" {newline} "]))
    fields = [f"Subject: {draw(HEADER_VALUES)}", "MIME-Version: 1.0",
              f"Content-Type: multipart/{subtype};{fold}boundary={quote}{boundary}{quote}"]
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from(["Content-Transfer-Encoding: base64", "Content-Transfer-Encoding: 8bit",
                                            "Content-Disposition: attachment", "Content-Type: text/plain"])))
    delimiter = b"--" + boundary.encode()
    body = draw(st.sampled_from([b"", b"This is a multi-part message in MIME format." + nl, nl]))
    part_or_nested = st.one_of(parts(newline), parts(newline), parts(newline), nested_part(newline))
    for part in draw(st.lists(part_or_nested, min_size=int(draw(st.integers(0, 9)) > 0), max_size=3)):
        body += delimiter + draw(st.sampled_from([b""] * 8 + [b" ", b"x"])) + nl + part + nl
        if draw(st.integers(0, 19)) == 0:
            body += delimiter + nl  # two delimiters in a row
    closing = draw(st.sampled_from([delimiter + b"--" + nl] * 4 + [delimiter + b"--", b"", delimiter + b"-- " + nl]))
    body += closing + draw(st.sampled_from([b""] * 4 + [b"epilogue" + nl, delimiter + nl, nl]))
    head = newline.join(fields).encode("ascii", "surrogateescape")
    return head + nl + nl + body


@FUZZ
@given(raw=multipart_emails(), limits=st.sampled_from([LIMITS, MailLimits(max_header_fields=4),
                                                        MailLimits(max_header_fields=12),
                                                        MailLimits(header_size_limit=12),
                                                        MailLimits(header_size_limit=60)]))
def test_every_generated_multipart_email_the_fast_path_accepts_reads_as_mail_parser_reads_it(
    raw: bytes, limits: MailLimits
) -> None:
    _assert_same_when_accepted(raw, limits)


@st.composite
def forward_emails(draw: st.DrawFn) -> bytes:
    """A usual forward: a note, the forwarded message (message/rfc822) and perhaps a document, in any order."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    boundary = draw(st.sampled_from(["fwd-1-2", "Part_1.2", "b.7"]))
    pieces = [b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\nFYI, forwarding it.\n"]
    for _ in range(draw(st.integers(1, 2))):
        outside, body = draw(forwarded_part())
        pieces.append("\n".join(outside).encode() + b"\n\n" + body)
    if draw(st.booleans()):
        pieces.append(b'Content-Type: application/xml; name="n.xml"\nContent-Transfer-Encoding: base64\n'
                      b'Content-Disposition: attachment; filename="n.xml"\n\n' + base64.encodebytes(SAMPLE))
    draw(st.randoms()).shuffle(pieces)
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\n" + piece + draw(st.sampled_from([b"\n"] * 5 + [b""])) for piece in pieces)
    raw = (f'Subject: Fwd: hi\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'
           "This is a multi-part message in MIME format.\n").encode() + body + delimiter + b"--\n"
    return raw.replace(b"\n", newline.encode())


@FUZZ
@given(raw=forward_emails(), limits=st.sampled_from([LIMITS, MailLimits(max_header_fields=12),
                                                      MailLimits(header_size_limit=60)]))
def test_every_generated_forward_the_fast_path_accepts_reads_as_mail_parser_reads_it(
    raw: bytes, limits: MailLimits
) -> None:
    _assert_same_when_accepted(raw, limits)


def test_the_generated_forwards_are_mostly_ones_the_fast_path_accepts() -> None:
    accepted: list[bool] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=forward_emails())
    def draw(raw: bytes) -> None:
        accepted.append(read_simple_mail(trim_headers(raw), LIMITS) is not None)

    draw()
    assert sum(accepted) > len(accepted) / 4, (sum(accepted), len(accepted))


# --- emails built by Python's own email package ---------------------------------------------------------------

PY_TEXTS = st.sampled_from(
    ["Text ID: 1\nFrom Number: 67076\nMessage: hi\n", "", "hello", "caf\u00e9 \u00e9t\u00e9\n", "e\u0301 combining\n",
     "CallId: 12\nState: FINISHED\n" * 40, "long " * 40 + "\n", "dots\n.\n..\n", "=3D not qp\n", "\u4e2d\u6587\n"]
)
PY_HTML = st.sampled_from(["<p>Text ID: 1</p>", "<table><tr><td>State</td><td>FINISHED</td></tr></table>\n",
                           "<p>caf\u00e9</p>\n", ""])
PY_DOCUMENTS = st.sampled_from(
    [("xml", b'<?xml version="1.0"?><TextNotification/>'), ("json", b'{"callId": 12, "state": "FINISHED"}'),
     ("xml", SAMPLE), ("xml", b"\xef\xbb\xbf<?xml version='1.0'?><a/>")]
)
PY_FILENAMES = st.sampled_from(["n.xml", "notification-12.json", "a b.xml", "caf\u00e9.xml", "x" * 90 + ".xml", "n"])
PY_CHARSETS = st.sampled_from([None, "utf-8", "us-ascii", "iso-8859-1", "latin-1", "cp1252"])


def _smtplib_bytes(msg: email.message.Message) -> bytes:
    """Flatten `msg` as smtplib's send_message does (the message's own policy, CRLF); the server undoes dot-stuffing."""
    out = io.BytesIO()
    email.generator.BytesGenerator(out).flatten(msg, linesep="\r\n")
    return out.getvalue()


def _aiosmtplib_bytes(msg: email.message.Message) -> bytes:
    """Flatten `msg` as aiosmtplib's flatten_message does (default or compat32 policy by class, CRLF, cte_type 8bit)."""
    base = email.policy.default if isinstance(msg, email.message.EmailMessage) else email.policy.compat32
    out = io.BytesIO()
    email.generator.BytesGenerator(out, policy=base.clone(linesep="\r\n", cte_type="8bit")).flatten(msg)
    return out.getvalue()


FLATTENINGS = [
    lambda msg: msg.as_bytes(),
    lambda msg: msg.as_bytes(policy=email.policy.SMTP),
    lambda msg: msg.as_bytes(policy=email.policy.compat32),
    lambda msg: msg.as_bytes(policy=email.policy.SMTPUTF8),
    _smtplib_bytes,
    _aiosmtplib_bytes,
]


def _set_text(msg: email.message.EmailMessage, text: str, subtype: str, charset: str | None, cte: str | None) -> None:
    kwargs: dict[str, str] = {"subtype": subtype}
    if charset is not None:
        kwargs["charset"] = charset
    if cte is not None:
        kwargs["cte"] = cte
    try:
        msg.set_content(text, **kwargs)  # type: ignore[arg-type]
    except (UnicodeError, ValueError):
        msg.set_content(text, subtype=subtype)


@st.composite
def email_message_emails(draw: st.DrawFn) -> email.message.Message:
    """An EmailMessage as a Python client builds one: set_content, perhaps add_alternative(html) and attachments."""
    msg = email.message.EmailMessage()
    msg["From"] = "a@b.c"
    msg["To"] = "x@y.z"
    msg["Subject"] = draw(st.sampled_from(["Inbound Text Finished", "x", "long subject " * 12, "caf\u00e9"]))
    if draw(st.booleans()):
        msg["Message-ID"] = "<1.2@b.c>"
    charset = draw(PY_CHARSETS)
    cte = draw(st.sampled_from([None, None, "7bit", "8bit", "quoted-printable", "base64"]))
    _set_text(msg, draw(PY_TEXTS), draw(st.sampled_from(["plain", "plain", "html"])), charset, cte)
    if draw(st.booleans()):
        msg.add_alternative(draw(PY_HTML), subtype="html")
    for _ in range(draw(st.integers(0, 3))):
        subtype, data = draw(PY_DOCUMENTS)
        msg.add_attachment(data, maintype="application", subtype=subtype, filename=draw(PY_FILENAMES))
    return msg


@st.composite
def mime_multipart_emails(draw: st.DrawFn) -> email.message.Message:
    """A compat32 MIMEMultipart of MIMEText parts and perhaps MIMEApplication documents, as older clients build it."""
    msg = MIMEMultipart(draw(st.sampled_from(["mixed", "alternative", "related"])))
    msg["Subject"] = draw(st.sampled_from(["x", "Inbound Call Finished", "long subject " * 12]))
    for _ in range(draw(st.integers(1, 3))):
        text = draw(PY_HTML) if draw(st.booleans()) else draw(PY_TEXTS)
        charset = draw(st.sampled_from(["us-ascii", "utf-8", "iso-8859-1"]))
        try:
            text.encode(charset)
        except UnicodeError:
            charset = "utf-8"
        msg.attach(MIMEText(text, draw(st.sampled_from(["plain", "html"])), charset))
    for _ in range(draw(st.integers(0, 2))):
        subtype, data = draw(PY_DOCUMENTS)
        document = MIMEApplication(data, subtype)
        document.add_header("Content-Disposition", "attachment", filename=draw(PY_FILENAMES))
        msg.attach(document)
    return msg


@FUZZ
@given(msg=st.one_of(email_message_emails(), mime_multipart_emails()), flatten=st.sampled_from(FLATTENINGS),
       limits=st.sampled_from([LIMITS, MailLimits(max_header_fields=6), MailLimits(header_size_limit=40),
                               MailLimits(max_parts=2), MailLimits(max_lines=12)]))
def test_every_python_built_email_the_fast_path_accepts_reads_as_mail_parser_reads_it(
    msg: email.message.Message, flatten: Callable[[email.message.Message], bytes], limits: MailLimits
) -> None:
    _assert_same_when_accepted(flatten(msg), limits)


def _python_built() -> dict[str, email.message.Message]:
    """The shapes a Python load generator sends: text plus HTML alternative, text plus XML document, MIMEText."""
    alternative = email.message.EmailMessage()
    alternative["Subject"] = "Inbound Text Finished"
    alternative.set_content("Text ID: 1\nMessage: hi\n")
    alternative.add_alternative("<p>Text ID: 1</p>", subtype="html")
    document = email.message.EmailMessage()
    document["Subject"] = "x"
    document.set_content("see attached")
    document.add_attachment(b'<?xml version="1.0"?><TextNotification/>', maintype="application", subtype="xml",
                            filename="n.xml")
    mime = MIMEMultipart()
    mime["Subject"] = "x"
    mime.attach(MIMEText("Text ID: 1\nMessage: hi\n"))
    mime.attach(MIMEText("caf\u00e9\n", "plain", "utf-8"))
    both = email.message.EmailMessage()
    both["Subject"] = "Inbound Text Finished"
    both.set_content("Text ID: 1\nMessage: caf\u00e9\n")
    both.add_alternative("<p>Text ID: 1</p><p>caf\u00e9</p>", subtype="html")
    both.add_attachment(b'{"textId": 1}', maintype="application", subtype="json", filename="n.json")
    return {"alternative": alternative, "document": document, "mimemultipart": mime, "nested-8bit": both}


FLATTENING_IDS = ["as_bytes", "SMTP", "compat32", "SMTPUTF8", "smtplib", "aiosmtplib"]


@pytest.mark.parametrize("flatten", FLATTENINGS, ids=FLATTENING_IDS)
@pytest.mark.parametrize("shape", ["alternative", "document", "mimemultipart", "nested-8bit"])
def test_the_fast_path_accepts_the_python_built_shapes(shape: str, flatten: Callable[..., bytes]) -> None:
    assert _assert_same_when_accepted(flatten(_python_built()[shape]))


def test_the_generated_python_built_emails_are_mostly_ones_the_fast_path_accepts() -> None:
    accepted = total = 0

    @settings(max_examples=200, deadline=None, database=None)
    @given(msg=st.one_of(email_message_emails(), mime_multipart_emails()), flatten=st.sampled_from(FLATTENINGS))
    def count(msg: email.message.Message, flatten: Callable[[email.message.Message], bytes]) -> None:
        nonlocal accepted, total
        total += 1
        accepted += _assert_same_when_accepted(flatten(msg))

    count()
    assert accepted * 3 > total, (accepted, total)  # the rest: RFC 2047 subjects, RFC 2231 or spaced filenames, nesting


def test_the_fast_path_declines_a_multipart_nested_twice() -> None:
    inner = email.message.EmailMessage()
    inner.set_content("Text ID: 1\n")
    inner.add_alternative("<p>Text ID: 1</p>", subtype="html")
    inner.add_attachment(b"{}", maintype="application", subtype="json", filename="n.json")
    outer = MIMEMultipart()
    outer["Subject"] = "x"
    outer.attach(inner)
    raw = _smtplib_bytes(outer)
    assert raw.count(b"Content-Type: multipart/") == 3
    assert read_simple_mail(trim_headers(raw), LIMITS) is None
    assert _fast(raw) is None and isinstance(_slow(raw), Mail)
    assert _assert_same_when_accepted(_smtplib_bytes(inner))


def _lowest_accepted(raw: bytes, limit: str) -> int:
    """The lowest value of `limit` at which the fast path reads `raw` (so reads it whole)."""
    value = 1
    while read_simple_mail(trim_headers(raw), MailLimits(**{limit: value})) is None or not isinstance(
        _slow(raw, MailLimits(**{limit: value})), Mail
    ):
        value += 1
        assert value < 10_000
    return value


LIMIT_NAMES = ["header_size_limit", "max_header_fields", "max_parts", "max_containers", "max_lines"]


@pytest.mark.parametrize("limit", LIMIT_NAMES)
@pytest.mark.parametrize("shape", ["alternative", "nested-8bit"])
def test_a_python_built_email_at_and_past_each_limit_gets_the_slow_path_s_answer(shape: str, limit: str) -> None:
    raw = _smtplib_bytes(_python_built()[shape])
    at = _lowest_accepted(raw, limit)
    assert _fast(raw, MailLimits(**{limit: at})) == _slow(raw, MailLimits(**{limit: at}))
    past = MailLimits(**{limit: at - 1})
    assert _fast(raw, past) in (None, _slow(raw, past))
    if limit == "header_size_limit":  # the slow path cuts the longest field: the fast path leaves that to it
        assert read_simple_mail(trim_headers(raw), past) is None
        assert isinstance(_slow(raw, past), Mail)
    else:  # refused before either path, or (header fields) by the slow path as it counts them
        assert isinstance(_slow(raw, past), str) and _slow(raw, past).startswith("Unreadable")
