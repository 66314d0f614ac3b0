"""parse_mail finds every embedded notification in an email of any shape and survives hostile input."""

from __future__ import annotations

import base64
import contextlib
import email as stdlib_email
import html
import json
import quopri
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.errors import Unreadable
from mailhook.extract import embedded, extract
from mailhook.extract.embedded import (
    _HTML_HIDDEN,
    CACHED_CHARS,
    _drop_hidden,
    _drop_hidden_cached,
    _json_spans,
    drop_hidden,
    drop_matched,
    find_documents,
    unescape,
)
from mailhook.extract.headers import NOT_HEADER_LINE, _trim_header_lines, _trim_plain_headers, header_end
from mailhook.extract.mail import MAX_CONTAINERS, MAX_DOCUMENTS, Mail, _read, parse_mail
from mailhook.extract.quoting import _FORWARD_MARK, FORWARD_HINTS_TRIED, _has_forward_mark, has_quoted_line
from mailhook.extract.slow_mail import _SHARED_BOUNDARY, _MailParser, _with_shared_boundary, parse_message
from mailhook.models import MailLimits

XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<n:TextNotification xmlns="http://api.callfire.com/data" xmlns:n="http://api.callfire.com/notification/xsd">\n'
    "<n:SubscriptionId>7</n:SubscriptionId>\n"
    '<Text id="123"><FromNumber>67076</FromNumber><Message>a &amp; b</Message></Text>\n'
    "</n:TextNotification>"
)
JSON = '{"TextNotification": {"Text": {"@id": "9", "Message": "curly } brace { inside"}}}'
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HEAD = "From: CallFire <notifications@callfire.com>\nTo: ops@example.com\nSubject: Outbound Text Finished\n"


def email(body: str, ctype: str = "text/plain; charset=utf-8", cte: str = "7bit", head: str = HEAD) -> bytes:
    data = body.encode("utf-8")
    if cte == "base64":
        encoded = base64.encodebytes(data)
    elif cte == "quoted-printable":
        encoded = quopri.encodestring(data)
    else:
        encoded = data
    return f"{head}MIME-Version: 1.0\nContent-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n\n".encode() + encoded


def mixed(*parts: str, head: str = HEAD) -> bytes:
    body = "".join(f"--XX\n{p}\n" for p in parts)
    return f'{head}MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="XX"\n\n{body}--XX--\n'.encode()


def documents(mail: Mail) -> list[bytes]:
    return [c.data for c in mail.documents]


def test_message_id_loses_folding_whitespace_but_keeps_its_brackets() -> None:
    mail = parse_mail(email("x", head=HEAD + "Message-ID:\n  <abc.123@callfire.com>  \n"))
    assert mail.message_id == "<abc.123@callfire.com>"


def test_missing_message_id_and_subject_are_none() -> None:
    mail = parse_mail(b"\n\nhello")
    assert (mail.message_id, mail.subject) == (None, None)


def test_subject_is_decoded_from_rfc2047() -> None:
    mail = parse_mail(email("x", head="Subject: =?utf-8?q?Campaign_finished_=E2=9C=94?=\n"))
    assert mail.subject == "Campaign finished \u2714"


@pytest.mark.parametrize("cte", ["7bit", "8bit", "quoted-printable", "base64"])
def test_xml_is_cut_out_of_the_prose_around_it_in_any_transfer_encoding(cte: str) -> None:
    mail = parse_mail(email(f"Hello,\n\nhere it is:\n{XML}\n\n-- \nCallFire support\n", cte=cte))
    assert documents(mail) == [XML.replace(' encoding="UTF-8"', "").encode()]


def test_html_escaped_xml_is_unescaped_and_found() -> None:
    body = f"<html><body><p>Notification</p><pre>{html.escape(XML)}</pre></body></html>"
    mail = parse_mail(email(body, ctype="text/html; charset=utf-8", cte="quoted-printable"))
    assert len(mail.documents) == 1
    assert b"<Message>a &amp; b</Message>" in mail.documents[0].data
    assert mail.documents[0].origin.startswith("text/html")


def test_escaped_xml_split_by_br_tags_is_found() -> None:
    body = "<div>" + "<br>".join(html.escape(line) for line in XML.splitlines()) + "</div>"
    mail = parse_mail(email(body, ctype="text/html"))
    assert mail.documents[0].data.rstrip().endswith(b"</n:TextNotification>")


def test_json_ends_at_its_balanced_brace_even_with_braces_in_strings() -> None:
    mail = parse_mail(email(f"Notification: {JSON} -- thanks {{team}}"))
    assert documents(mail) == [JSON.encode()]


def test_braces_without_a_notification_key_are_not_documents() -> None:
    assert find_documents('see {"a": 1} and {"events_count": 2}') == []


def test_several_documents_in_one_text_are_separate_candidates_in_order() -> None:
    other = XML.replace('id="123"', 'id="456"')
    mail = parse_mail(email(f"one:\n{XML}\ntwo:\n{other}\nthree:\n{JSON}\n"))
    assert [b'id="123"' in d for d in documents(mail)] == [True, False, False]
    assert b'id="456"' in documents(mail)[1]
    assert documents(mail)[2] == JSON.encode()


def test_soap_envelope_is_one_candidate_not_also_its_inner_root() -> None:
    inner = XML.split("?>", 1)[1]
    soap = f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>{inner}</s:Body></s:Envelope>'
    assert [d[:11] for d in find_documents(f"x {soap} y")] == [b"<s:Envelope"]


def test_truncated_xml_runs_to_the_end_so_the_reader_can_say_why() -> None:
    cut = XML[:150]
    assert find_documents(f"prose\n{cut}") == [cut.replace(' encoding="UTF-8"', "").encode()]


def test_attachments_and_whole_document_parts_come_before_documents_in_prose() -> None:
    other = XML.replace('id="123"', 'id="456"')
    raw = mixed(
        f"Content-Type: text/plain\n\nprose then {XML}",
        f"Content-Type: application/json\n\n{JSON}",
        "Content-Type: application/xml\nContent-Disposition: attachment; filename=n.xml\n"
        f"Content-Transfer-Encoding: base64\n\n{base64.b64encode(other.encode()).decode()}",
    )
    origins = [c.origin for c in parse_mail(raw).documents]
    assert origins[0] == "attachment 'n.xml'"
    assert origins[1].startswith("other part")
    assert origins[2].startswith("text/plain part")


def test_unnamed_octet_stream_part_is_searched() -> None:
    raw = mixed(
        "Content-Type: text/plain\n\nsee part two",
        f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        f"{base64.b64encode(JSON.encode()).decode()}",
    )
    assert documents(parse_mail(raw)) == [JSON.encode()]


def test_forwarded_rfc822_part_is_searched() -> None:
    inner = f"From: CallFire <n@callfire.com>\nSubject: Inbound Text Finished\n\n{XML}\n"
    raw = mixed("Content-Type: text/plain\n\nFYI", f"Content-Type: message/rfc822\n\n{inner}")
    assert len(parse_mail(raw).documents) == 1


def test_quote_prefixes_are_removed_before_looking() -> None:
    quoted = "\n".join("> > " + line for line in JSON.replace(", ", ",\n").splitlines())
    mail = parse_mail(email(f"Is this it?\n\nOn Monday someone wrote:\n{quoted}\n"))
    assert documents(mail) == [JSON.replace(", ", ",\n").encode()]
    assert ">" not in mail.texts[0].text


def test_inline_forward_header_block_is_removed_from_readable_text() -> None:
    body = (
        "FYI\n\n---------- Forwarded message ---------\nFrom: CallFire <n@callfire.com>\n"
        "Date: Fri, Nov 27, 2026\nSubject: Outbound Text Finished\nTo: ops@example.com\n\nText ID: 5\n"
    )
    text = parse_mail(email(body)).texts[0].text
    assert "From:" not in text
    assert "Subject:" not in text
    assert "Text ID: 5" in text


def test_same_document_in_both_alternatives_is_one_candidate() -> None:
    raw = (
        HEAD + 'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="A"\n\n'
        f"--A\nContent-Type: text/plain\n\n{XML}\n--A\nContent-Type: text/html\n\n"
        f"<pre>{html.escape(XML)}</pre>\n--A--\n"
    ).encode()
    assert len(parse_mail(raw).documents) == 1


def test_latin1_part_is_reencoded_as_utf8_without_its_old_encoding_declaration() -> None:
    doc = XML.replace("UTF-8", "ISO-8859-1").replace("a &amp; b", "caf\xe9")
    raw = HEAD.encode() + b"Content-Type: text/plain; charset=iso-8859-1\n\n" + doc.encode("latin-1")
    data = parse_mail(raw).documents[0].data
    assert "caf\xe9".encode() in data
    assert b"ISO-8859-1" not in data


def test_wrong_declared_charset_is_decoded_best_effort() -> None:
    raw = HEAD.encode() + b"Content-Type: text/plain; charset=utf-8\n\nCaf\xe9 \x93menu\x94\n" + XML.encode()
    assert len(parse_mail(raw).documents) == 1


def test_unknown_charset_and_transfer_encoding_do_not_raise() -> None:
    raw = HEAD.encode() + b"Content-Type: text/plain; charset=x-nope\nContent-Transfer-Encoding: x-odd\n\n\xff hi"
    assert parse_mail(raw).texts


def test_readable_parts_are_offered_as_texts_with_their_kind() -> None:
    raw = (
        HEAD + 'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="A"\n\n'
        "--A\nContent-Type: text/plain\n\nText ID: 1\n--A\nContent-Type: text/html\n\n<b>Text ID</b>: 1\n--A--\n"
    ).encode()
    assert [(t.html, t.origin.split()[0]) for t in parse_mail(raw).texts] == [
        (False, "text/plain"),
        (True, "text/html"),
    ]


def _nested(levels: int) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(levels))
    closing = b"".join(b"--b%d--\n" % i for i in reversed(range(levels)))
    return b"Subject: bomb\n" + opening + b"Content-Type: text/plain\n\nhi\n" + closing


def test_mime_nested_thousands_deep_is_refused_with_the_limit_named() -> None:
    with pytest.raises(Unreadable, match=f"limit {MAX_CONTAINERS}"):
        parse_mail(_nested(5000))


def test_mime_nested_within_the_limit_is_read() -> None:
    assert parse_mail(_nested(50)).texts[0].text.strip() == "hi"


def test_rfc822_nested_thousands_deep_raises_only_unreadable() -> None:
    raw = b"Subject: x\n" + b"Content-Type: message/rfc822\n\n" * 3000 + b"hi"
    with pytest.raises(Unreadable):
        parse_mail(raw)


def test_hundred_thousand_line_header_keeps_subject_and_body() -> None:
    to = b",\n ".join(b"user%d@example.com" % i for i in range(100_000))
    raw = b"To: " + to + b"\nSubject: Outbound Text Finished\n\n" + XML.encode()
    mail = parse_mail(raw)
    assert mail.subject == "Outbound Text Finished"
    assert len(mail.documents) == 1


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00" * 64, b"\n\n", b"\xff\xfe\xfd\n\n\xff", b"Subject: \xff\n\n<n:TextNotification", b"{" * 10_000],
    ids=["empty", "nul", "blank", "invalid-utf8", "bad-subject-cut-xml", "braces"],
)
def test_hostile_inputs_parse_without_raising(raw: bytes) -> None:
    assert isinstance(parse_mail(raw), Mail)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_nothing_but_unreadable(raw: bytes) -> None:
    with contextlib.suppress(Unreadable):
        parse_mail(raw)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "body",
    [
        "<tr><td>" * 50_000,
        "<script>" * 50_000,
        "<?xml " * 100_000,
        '<?xml version="1.0"?><!--' * 20_000,
        '"events"' + "{" * 100_000,
        '{"events": 1} ' * 20_000,
        '{"events" ' + '"\\' * 100_000,
        "> " * 500_000,
    ],
    ids=["rows", "scripts", "decls", "comments", "braces", "many-json", "escapes", "quotes"],
)
def test_pathological_bodies_are_read_in_linear_time(body: str) -> None:
    assert isinstance(parse_mail(b"Content-Type: text/html\n\n" + body.encode()), Mail)


def test_more_embedded_documents_than_the_cap_is_unreadable() -> None:
    body = "".join(f'{{"events": [{i}]}}\n' for i in range(MAX_DOCUMENTS + 1))
    with pytest.raises(Unreadable, match=f"more than {MAX_DOCUMENTS}"):
        parse_mail(email(body))


def test_html_attachment_with_escaped_xml_is_searched_unescaped() -> None:
    page = base64.b64encode(f"<html><pre>{html.escape(XML)}</pre></html>".encode()).decode()
    raw = mixed(
        "Content-Type: text/plain\n\nreport attached",
        "Content-Type: text/html\nContent-Disposition: attachment; filename=report.html\n"
        f"Content-Transfer-Encoding: base64\n\n{page}",
    )
    assert [c.origin for c in parse_mail(raw).documents] == ["attachment 'report.html'"]


def test_headers_mailhook_does_not_read_are_skipped_but_subject_id_and_mime_headers_are_kept() -> None:
    head = (
        "Received: from a (a [192.0.2.1])\n\tby b; Fri, 27 Nov 2026 10:00:00 +0000\n"
        "DKIM-Signature: v=1; a=rsa-sha256;\n\tb=abc\n"
        + "To: " + ", ".join(f"u{i}@example.com" for i in range(300)) + "\n"
        "Subject: =?utf-8?q?Caf=C3=A9?=\nMessage-ID: <kept@callfire.test>\n"
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n'
    )
    body = f"--b\nContent-Type: application/json\nContent-Transfer-Encoding: base64\n\n" \
           f"{base64.b64encode(JSON.encode()).decode()}\n--b--\n"
    mail = parse_mail(head.encode() + b"\n" + body.encode())
    assert (mail.subject, mail.message_id) == ("Café", "<kept@callfire.test>")
    assert [d.data for d in mail.documents] == [JSON.encode()]


def test_a_body_that_begins_without_a_blank_line_keeps_every_line() -> None:
    # The first line that is not a header starts the body, exactly as for email.parser.
    raw = b"Subject: no separator\nText ID: 44400000001\nFrom Number: 67076\nState: FINISHED\n"
    (text,) = parse_mail(raw).texts
    assert text.text.splitlines() == ["Text ID: 44400000001", "From Number: 67076", "State: FINISHED"]


# Pieces that make line starts, quotes, forward marks and JSON strings meet in every way.
_PIECES = st.sampled_from(
    ["\n", "\r\n", " ", "\t", ">", "-", "---", "B", "b", "x", ":", "{", "}", '"', "\\", '"events"',
     '"CallFinished"', "Begin forwarded message:", "---------- Forwarded message ---------",
     "-----Original Message-----", "\u017f", "\u0130",
     # the same marks in other cases, and the characters IGNORECASE takes for "s", "i" and "k"
     "bEGIN FoRwArDeD MESSAGE:", "--- FORWARDED MESSAGE", "--- original message", "forwarded", "FORWARDED",
     "Begin forwarded me\u017f\u017fage:", "----- Or\u0131g\u0131nal Message -----", "\u0131", "\u212a"]
)
_TEXTS = st.lists(_PIECES, max_size=40).map("".join)


@settings(max_examples=3000, deadline=None)
@given(_TEXTS)
def test_line_start_checks_find_exactly_the_lines_their_multiline_patterns_find(text: str) -> None:
    assert has_quoted_line(text) == (re.search(r"^[ \t]*>", text, re.MULTILINE) is not None)
    assert _has_forward_mark(text) == (_FORWARD_MARK.search(text) is not None)


def test_ignorecase_takes_only_the_two_ascii_cases_of_the_letters_of_forwarded() -> None:
    # _has_forward_mark skips texts without "---" and without "forwarded" in their lower() on this ground.
    every_character = "".join(chr(code) for code in range(sys.maxunicode + 1))
    assert "".join(sorted(set(re.findall("(?i)[forwarded]", every_character)))) == "ADEFORWadeforw"
    assert all(letter.lower() in "forwarded" for letter in "ADEFORWadeforw")


@pytest.mark.parametrize(
    ("text", "marked"),
    [
        ("Hello\nBEGIN FORWARDED MESSAGE:\nText ID: 5", True),
        ("Hello\n  -------- fOrWaRdEd MeSsAgE --------\nText ID: 5", True),
        ("Hello\n-----ORIGINAL MESSAGE-----\nText ID: 5", True),
        ("Hello\nBegin forwarded me\u017f\u017fage:\nText ID: 5", True),
        ("Hello\nforwarded to you:\nBilled Amount: 1\nBroadcast ID: 2", False),
        ("Hello\n-- \nsignature\nBilled Amount: 1", False),
    ],
)
def test_a_forward_mark_in_any_case_is_found_and_no_mark_is_not(text: str, marked: bool) -> None:
    assert _has_forward_mark(text) == (_FORWARD_MARK.search(text) is not None) == marked


def _json_spans_char_by_char(text: str) -> list[tuple[int, int]]:
    """The JSON span scanner written one character at a time: the specification _json_spans must meet."""
    keys = [i for i in range(len(text)) for k in ('"TextNotification"', '"CallFinished"',
            '"BroadcastNotification"', '"events"') if text.startswith(k, i)]
    closed: list[tuple[int, int]] = []
    opened: list[int] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = bool(opened)
        elif ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            begin = opened.pop()
            if any(begin <= k < i + 1 for k in keys):
                closed.append((begin, i + 1))
    spans: list[tuple[int, int]] = []
    for begin, finish in sorted(closed, key=lambda span: (span[0], -span[1])):
        if not spans or begin >= spans[-1][1]:
            spans.append((begin, finish))
    after = spans[-1][1] if spans else 0
    for begin in opened:
        if begin >= after and text[begin + 1 : begin + 40].lstrip().startswith('"') and any(k >= begin for k in keys):
            spans.append((begin, len(text)))
            break
    return spans


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_json_spans_track_strings_escapes_and_stray_quotes_as_a_character_scan_does(text: str) -> None:
    assert _json_spans(text) == _json_spans_char_by_char(text)


_JSON_STRINGS = st.text(st.sampled_from(['a', ' ', '"', "\\", "{", "}", "\n", "\u00e9", "/"]), max_size=6)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _JSON_STRINGS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["TextNotification", "events", "a", 'b"{', "c\\"]), inner, max_size=3),
    max_leaves=12,
)
_JSON_PIECES = st.one_of(
    st.sampled_from(["x ", "{", "}", '"', "\\", "\n", '{"events": ', "NaN", "[", "]"]),
    _JSON_VALUES.map(lambda value: json.dumps({"TextNotification": value})),
    _JSON_VALUES.map(json.dumps),
    # A valid object cut short, or with one character dropped: the C scanner declines, the brace scan goes on.
    st.tuples(_JSON_VALUES.map(lambda value: json.dumps({"events": value})), st.integers(0, 60)).map(
        lambda pair: pair[0][: pair[1]] + pair[0][pair[1] + 1 :]
    ),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_JSON_PIECES, max_size=8).map("".join))
def test_json_spans_of_valid_broken_and_nested_objects_are_those_of_a_character_scan(text: str) -> None:
    # _json_spans takes a valid object whole by json's scanner; a broken one is scanned brace by brace.
    assert _json_spans(text) == _json_spans_char_by_char(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"events": ' + "[" * 5000 + "]" * 5000 + "}",  # past the recursion limit of json's scanner
        '{"events": ' + "1" * 5000 + "}",  # past int's digit limit: json raises ValueError
        '{"events": NaN, "x": -Infinity} {"TextNotification": {}}',
        '{"events": "\x01"}',  # a control character in a string: invalid JSON, a string to the brace scan
    ],
)
def test_json_spans_where_json_declines_an_object_the_brace_scan_reads_it(text: str) -> None:
    assert _json_spans(text) == _json_spans_char_by_char(text)


def test_json_scanner_is_not_tried_again_after_it_declines_a_broken_object(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its error counts the lines before where it stopped: tried at each of many broken objects, a pass each.
    tried: list[int] = []
    scanner = embedded._valid_object_end

    def counted(text: str, start: int) -> int | None:
        tried.append(start)
        return scanner(text, start)

    monkeypatch.setattr(embedded, "_valid_object_end", counted)
    text = JSON + "\n" + '{"events": x}\n' * 1000 + JSON
    assert _json_spans(text) == _json_spans_char_by_char(text)
    assert tried == [0, len(JSON) + 1]  # the valid one, then the first broken one; the rest brace by brace


def test_a_quote_in_prose_before_a_notification_does_not_hide_it() -> None:
    assert find_documents(f'he said "hi. {JSON}') == [JSON.encode()]


def test_an_escaped_quote_and_brace_inside_a_json_string_do_not_end_it() -> None:
    doc = '{"events": [{"text": "a \\" } { \\\\"}]}'
    assert find_documents(f"x {doc} y") == [doc.encode()]


_HEADER_PIECES = st.sampled_from(
    [b"Subject: hi", b"subject:x", b"Message-ID: <a@b>", b"Content-Type: text/plain", b"X-Subject: a", b"Subject : x",
     b"From a@b Fri", b"From: x", b"\n", b"\r\n", b"\r", b" more", b"\tmore", b"body line", b":", b"\n\n", b"\xff"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_HEADER_PIECES, max_size=16).map(b"".join))
def test_plain_header_blocks_are_trimmed_exactly_as_line_by_line(raw: bytes) -> None:
    fast = _trim_plain_headers(raw, header_end(raw))
    assert fast is None or fast == _trim_header_lines(raw, header_end(raw))


_HEADER_LINES = st.sampled_from(
    [b"Subject: hi", b"SUBJECT:x", b"message-ID: <a@b>", b"Mime-Version: 1.0", b"CONTENT-TYPE: text/plain",
     b"content-transfer-encoding:7bit", b"Content-Disposition: inline", b"Content-Typo: x", b"X-Subject: a",
     b"Subject : x", b"From a@b Fri", b"FROM a@b", b"from a@b", b"From: x", b" more", b"\tmore", b"body line",
     b":", b"", b"Received: a\r", b"a\rb: c"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_HEADER_LINES, st.sampled_from([b"\n", b"\r\n"])), max_size=12))
def test_kept_fields_and_lines_that_are_no_header_are_found_in_one_scan_as_line_by_line(
    lines: list[tuple[bytes, bytes]],
) -> None:
    # Field names in any case are kept, "From " lines only as written; the plain path declines exactly where
    # a line is neither a header nor a continuation line (or a CR is not before an LF).
    raw = b"".join(line + end for line, end in lines) + b"\n" + b"body\n"
    end = header_end(raw)
    block = raw[:end]
    fast = _trim_plain_headers(raw, end)
    plain = NOT_HEADER_LINE.search(b"\n" + block) is None and block.count(b"\r") == block.count(b"\r\n")
    assert (fast is not None) == plain
    assert fast is None or fast == _trim_header_lines(raw, end)


def test_ordinary_lf_and_crlf_header_blocks_take_the_plain_path() -> None:
    raw = email("x", head=HEAD + "Received: from a\n\tby b\nMessage-ID: <m@x>\n")
    for variant in (raw, raw.replace(b"\n", b"\r\n")):
        assert _trim_plain_headers(variant, header_end(variant)) == _trim_header_lines(variant, header_end(variant))


def _multipart(boundary: str, lines: list[str], crlf: bool) -> bytes:
    head = f'Subject: s\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'
    raw = (head + "\n".join(lines) + "\n").encode()
    return raw.replace(b"\n", b"\r\n") if crlf else raw


def _parsed_both_ways(raw: bytes) -> tuple[object, object]:
    """Read `raw` through parse_message and straight through mail-parser; a failure is a result too."""
    results: list[object] = []
    for parse in (parse_message, _MailParser.from_bytes):
        try:
            results.append(_read(parse(raw)))
        except Exception as exc:  # noqa: BLE001 - mail-parser's own errors must be the same both ways
            results.append((type(exc), str(exc)))
    return results[0], results[1]


def test_an_ordinary_multipart_is_parsed_under_the_shared_boundary_with_the_same_result() -> None:
    for crlf in (False, True):
        raw = _multipart("mix-12", ["--mix-12", "Content-Type: application/json", "", JSON, "--mix-12--", ""], crlf)
        assert _with_shared_boundary(raw) is not None
        shared, direct = _parsed_both_ways(raw)
        assert shared == direct
        assert documents(shared) == [JSON.encode()]


_BODY_LINES = st.lists(
    st.sampled_from(["--B", "--B--", "--B  ", "--B---", "--B x", "text B here", "B", "", "Content-Type: text/plain",
                     "Content-Type: multipart/mixed; boundary=B", JSON, "--mailhook.shared.boundary.0", "--C",
                     "--C--"]),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["B", "B-1", "----=_Part_0.1"]), _BODY_LINES, st.booleans())
def test_a_boundary_also_found_in_content_or_after_the_end_parses_as_it_always_did(
    boundary: str, lines: list[str], crlf: bool
) -> None:
    raw = _multipart(boundary, [line.replace("B", boundary) for line in lines], crlf)
    shared, direct = _parsed_both_ways(raw)
    assert shared == direct


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["&lt;", "&gt;", "&quot;", "&#x27;", "&amp;", "&", "amp;", "lt;", "&lt", "&#39;",
                                 "&nbsp;", "x", ";", "#", "<"]), max_size=12).map("".join))
def test_unescape_reads_every_text_as_html_unescape_does(text: str) -> None:
    assert unescape(text) == html.unescape(text)


@pytest.mark.parametrize(
    "content_type",
    ['multipart/mixed; boundary="b-1"', "multipart/alternative; boundary=b-1", 'MULTIPART/Mixed;\n\tboundary="b-1"'],
)
@pytest.mark.parametrize("crlf", [False, True])
def test_a_plain_multipart_header_is_known_to_be_read_with_the_shared_boundary(content_type: str, crlf: bool) -> None:
    raw = f"Subject: s\nContent-Type: {content_type}\n\n--b-1\nContent-Type: text/plain\n\nx\n--b-1--\n".encode()
    raw = raw.replace(b"\n", b"\r\n") if crlf else raw
    renamed = _with_shared_boundary(raw)
    assert renamed is not None and renamed[1]
    message = stdlib_email.message_from_bytes(renamed[0])
    assert (message.get_content_maintype(), message.get_boundary()) == ("multipart", _SHARED_BOUNDARY.decode())


def test_the_shared_boundary_never_cuts_a_content_type_field_that_fits_header_size_limit() -> None:
    # Found by the fast path's property test: renamed to the longer shared boundary, a 42-character field
    # grew past a header_size_limit of 60 and was cut inside its boundary, so mail-parser saw no parts.
    raw = (b'Subject: \nMIME-Version: 1.0\nContent-Type: multipart/alternative;\n boundary="mix-1-2"\n\n'
           b'--mix-1-2\nContent-Type: application/xml; name="n.xml"\nContent-Transfer-Encoding: base64\n\n'
           + base64.encodebytes(b"<TextNotification><Text id='1'/></TextNotification>") + b"--mix-1-2--\n")
    head = header_end(raw)
    growth = len(_SHARED_BOUNDARY) - len(b"mix-1-2")
    assert _with_shared_boundary(raw, head + growth) is not None  # at the limit: the rename fits
    assert _with_shared_boundary(raw, head + growth - 1) is None  # past it: the email's own boundary
    for limit in (60, 61, head + growth - 1, head + growth):
        parsed = parse_message(raw, MailLimits(header_size_limit=limit))
        assert [part.get("filename") for part in parsed.attachments] == ["n.xml"], limit


@pytest.mark.parametrize(
    "head",
    [
        "Subject: s\nContent-Type: multipart/mixed; boundary=b-1; charset=x\n",  # another parameter
        "Subject: s\nContent-Type: text/plain\nContent-Type: multipart/mixed; boundary=b-1\n",  # two fields
        "Subject: s\nMessage-\x1eID: x\nContent-Type: multipart/mixed; boundary=b-1\n",  # the body starts early
    ],
)
def test_an_unusual_multipart_header_is_asked_about_not_assumed(head: str) -> None:
    raw = f"{head}\n--b-1\nContent-Type: text/plain\n\nx\n--b-1--\n".encode()
    renamed = _with_shared_boundary(raw)
    assert renamed is None or not renamed[1]
    shared, direct = _parsed_both_ways(raw)
    assert shared == direct


def _xml_part(message: str, declaration: str) -> str:
    return (f'<?xml version="1.0" encoding="{declaration}"?>\n<TextNotification><SubscriptionId>7</SubscriptionId>'
            f'<Text id="123"><FromNumber>67076</FromNumber><Message>{message}</Message></Text></TextNotification>')


def _part_email(ctype: str, data: bytes, disposition: str = "attachment; filename=n.xml") -> bytes:
    return (HEAD + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="XX"\n\n--XX\n'
            "Content-Type: text/plain; charset=utf-8\n\nSee attached.\n--XX\n"
            f"Content-Type: {ctype}\nContent-Disposition: {disposition}\nContent-Transfer-Encoding: base64\n\n"
            ).encode() + base64.encodebytes(data) + b"--XX--\n"


@pytest.mark.parametrize("disposition", ["attachment; filename=n.xml", "inline"])
@pytest.mark.parametrize(
    ("ctype", "data", "message"),
    [
        # No MIME charset: the XML declaration names the encoding (RFC 7303 §3.2, XML 1.0 §4.3.3).
        ("application/xml", _xml_part("Привет", "KOI8-R").encode("koi8-r"), "Привет"),
        # The MIME charset wins over the XML declaration.
        ("application/xml; charset=koi8-r", _xml_part("Привет", "ISO-8859-1").encode("koi8-r"), "Привет"),
        # A BOM wins over the MIME charset.
        ("text/xml; charset=iso-8859-1", _xml_part("東京", "UTF-16").encode("utf-16"), "東京"),
        # UTF-16 without a BOM, declared or found from its zero bytes.
        ("application/xml; charset=utf-16", _xml_part("東京", "UTF-16").encode("utf-16-le"), "東京"),
        ("application/xml", _xml_part("東京", "UTF-16").encode("utf-16-be"), "東京"),
        ("application/json; charset=utf-32", '{"TextNotification": {"Text": {"@id": "123", "Message": "東京"}}}'
         .encode("utf-32"), "東京"),
    ],
)
def test_an_xml_or_json_part_is_decoded_bom_then_mime_charset_then_declaration(
    ctype: str, data: bytes, message: str, disposition: str
) -> None:
    result = extract(_part_email(ctype, data, disposition), "email", {})
    assert result.reason is None
    assert [e.message for e in result.events] == [message]


def test_a_flowed_body_is_unflowed_before_its_fields_are_read() -> None:
    body = "Text ID: 5\nMessage: a long \nreply that \nwraps\nFrom Number: 67076\n"
    for params, want in (
        ("format=flowed", "a long reply that wraps"),
        ("format=flowed; delsp=yes", "a longreply thatwraps"),
        ("FORMAT=Flowed", "a long reply that wraps"),
        ('Format="flowed"', "a long reply that wraps"),
        ("format=fixed", None),
        ("name=format.txt", None),
    ):
        mail = parse_mail(email(body, ctype=f"text/plain; charset=utf-8; {params}"))
        if want is None:
            assert mail.texts[0].text == body
        else:
            assert f"Message: {want}\n" in mail.texts[0].text


@pytest.mark.parametrize(
    ("name", "subject", "message_id"),
    [
        ("text-attachment-flowed-rfc2047-2231.eml", "Inbound Text Finished — réponse", "<ts0006@example.org>"),
        ("text-utf8-headers-rfc6532.eml", "Inbound Text Finished — réponse de Zoë", "<zoë.0008@example.org>"),
    ],
)
def test_encoded_words_and_utf8_header_fields_are_read_as_text(name: str, subject: str, message_id: str) -> None:
    mail = parse_mail((FIXTURES / "email" / name).read_bytes())
    assert (mail.subject, mail.message_id) == (subject, message_id)


def test_an_rfc2231_file_name_in_parts_names_the_flowed_attachment_it_unflows() -> None:
    mail = parse_mail((FIXTURES / "email" / "text-attachment-flowed-rfc2047-2231.eml").read_bytes())
    attachment = next(t for t in mail.texts if t.origin == "attachment 'notification réponse.txt'")
    assert "Message: Réponse reçue : très bien, à jeudi ! Merci beaucoup pour le rappel — c'est noté" in attachment.text


_WRAPPED_AT_QUOTE_MARKS = (
    b"From: CallFire <notifications@callfire.com>\nTo: ops@example.com\nSubject: Inbound Text Finished\n"
    b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
    b"Text ID: 44400000999\nFrom Number: +1 213 555 0100\nTo Number: 67076\nState: FINISHED\n"
    b"Message: the reply quoted what it answered\n>> see you soon\nCreated: 2026-12-04T09:00:00Z\n"
)


def test_a_wrapped_line_that_starts_with_quote_marks_in_an_unquoted_body_stays_in_the_value() -> None:
    (event,) = extract(_WRAPPED_AT_QUOTE_MARKS, "email", {}).events
    assert event.message == "the reply quoted what it answered >> see you soon"


def test_a_quoted_notification_is_still_read_unquoted() -> None:
    head, _, body = _WRAPPED_AT_QUOTE_MARKS.partition(b"\n\n")
    quoted = head + b"\n\nSee below.\n\n" + b"".join(b"> " + line + b"\n" for line in body.splitlines())
    (event,) = extract(quoted, "email", {}).events
    # Quoted as a whole, every level of quote marks is the quoting's, not the message's.
    assert event.message == "the reply quoted what it answered see you soon"
    assert event.resource_id == 44400000999


def _drop_hidden_by_regex(markup: str) -> str:
    """drop_hidden as it reads every text: `_HTML_HIDDEN`'s matches (case-blind), an opening then its own closing."""
    return drop_matched(markup, _HTML_HIDDEN)


# Tags in every case, with and without a word boundary, blanks (\s's ASCII ones) before ">", stray closings.
_HTML_PIECES = st.sampled_from(
    ["<script", "<SCRIPT", "<Script>", "</script", "</SCRIPT>", "</script >", "</script\x1c>", "<style",
     "<StYlE type=x>", "</style>", "</style\t\n>", "<head", "<HEAD>", "<header>", "</head>", "</header>",
     "<scripts", "<head_", "<head1", "</head \x0b\x0c\r>", "<", ">", "/", " ", "\t", "\n", "x", "_", "1", "-",
     "</", "<p>", "text"]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_HTML_PIECES, max_size=30).map("".join))
def test_hidden_elements_of_an_ascii_text_are_dropped_as_the_ignorecase_pattern_drops_them(markup: str) -> None:
    assert markup.isascii()
    assert _drop_hidden(markup) == _drop_hidden_by_regex(markup)


def test_hidden_elements_of_a_non_ascii_text_are_dropped_by_the_ignorecase_pattern() -> None:
    markup = "<p>caf\u00e9</p><\u017fcript>x</script><p>y</p>"  # U+017F is "s" to IGNORECASE
    # It opens an element that no "</script>" closes (its name is "\u017fcript"), so the rest is hidden.
    assert _drop_hidden(markup) == _drop_hidden_by_regex(markup) == "<p>caf\u00e9</p>"


def test_hidden_elements_are_kept_for_the_next_readings_of_a_body_up_to_the_cached_size() -> None:
    for size, kept in ((CACHED_CHARS, True), (CACHED_CHARS + 1, False)):
        markup = "<head><style>x</style></head>" + "y" * (size - 29 - 11) + "<p>z</p>" + str(size)[-3:]
        assert len(markup) == size
        before = _drop_hidden_cached.cache_info()
        first, second = drop_hidden(markup), drop_hidden(markup)
        after = _drop_hidden_cached.cache_info()
        assert first == second == _drop_hidden_by_regex(markup) == markup[29:]
        assert (after.hits - before.hits, after.misses - before.misses) == ((1, 1) if kept else (0, 0))


@pytest.mark.parametrize("hints", [0, FORWARD_HINTS_TRIED - 1, FORWARD_HINTS_TRIED, FORWARD_HINTS_TRIED + 1, 50])
@pytest.mark.parametrize("mark", ["---------- Forwarded message ---------", "Begin forwarded message:", ""])
def test_a_forward_mark_is_found_after_any_number_of_hinted_lines(hints: int, mark: str) -> None:
    text = "Hello\n" + "Billed Amount: 1\n" * hints + " ---\n" * (hints % 2) + mark + "\nText ID: 5"
    assert _has_forward_mark(text) == (_FORWARD_MARK.search(text) is not None) == bool(mark)
