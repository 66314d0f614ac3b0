"""Whatever bytes arrive, the document reader answers with events or `Unreadable`, nothing else.

The number of examples per property comes from FUZZ_EXAMPLES
(default 200) so CI stays quick and a long fuzzing run needs no code change.
"""

from __future__ import annotations

import html
import json
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fulltext_support import assert_values_whole
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailhook.errors import Unreadable
from mailhook.extract import extract
from mailhook.extract.document import read_document

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SAMPLES = sorted(
    p.read_bytes()
    for folder in ("seed", "documents")
    for p in (FIXTURES / folder).iterdir()
    if not p.name.endswith(".expected.json")
)
V1_NAMES = [
    "TextNotification", "CallFinished", "BroadcastNotification", "SubscriptionId", "AccountId", "Text",
    "Call", "Broadcast", "FromNumber", "ToNumber", "State", "Inbound", "Created", "Modified", "LastModified",
    "BilledAmount", "Duration", "TextRecord", "CallRecord", "Label", "Name", "Status", "Message", "@id",
    "Envelope", "Body", "events", "resourceType", "eventType", "resource", "records", "id", "timestamp",
]  # fmt: skip


def _read(data: bytes | str) -> None:
    """Read a document, allowing only events or Unreadable as the outcome."""
    try:
        events, notes = read_document(data, {1: "CAMPAIGN_STARTED"})
    except Unreadable as exc:
        reason = str(exc)
        assert reason, "Unreadable must say why"
        return
    assert events
    assert all(isinstance(n, str) for n in notes)
    for event in events:
        event.row()
        for attempt in event.attempts:
            attempt.row()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["2016-04-08T14:30:07Z", "true", "12", "0.03", "RUNNING"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(V1_NAMES) | st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_are_read_or_refused(data: bytes) -> None:
    _read(data)


@FUZZ
@given(st.sampled_from(["<", "{", "[", " <", "\ufeff{"]), st.text(max_size=300))
def test_random_text_after_a_sniffed_first_char_is_read_or_refused(head: str, rest: str) -> None:
    _read(head + rest)
    _read((head + rest).encode("utf-8", "surrogatepass"))


@FUZZ
@given(json_values)
def test_random_json_shapes_are_read_or_refused(value: Any) -> None:
    _read(json.dumps(value))


@FUZZ
@given(st.sampled_from(V1_NAMES[:3]), st.sampled_from(V1_NAMES[5:8]), json_values)
def test_v1_notifications_with_random_resources_are_read_or_refused(
    root: str, child: str, value: Any
) -> None:
    _read(json.dumps({root: {"SubscriptionId": 1, child: value}}))


@FUZZ
@given(json_values)
def test_v2_envelopes_with_random_resources_are_read_or_refused(resource: Any) -> None:
    event = {"resourceType": "OutboundCall", "eventType": "Finished", "timestamp": 1, "resource": resource}
    _read(json.dumps({"events": [event]}))


xml_names = st.sampled_from([n for n in V1_NAMES if not n.startswith("@")] + ["n:Text", "soap:Body", "x"])


def _xml(tree: Any) -> str:
    if isinstance(tree, str):
        return tree.replace("&", "&amp;").replace("<", "&lt;")
    name, attr, children = tree
    inner = "".join(_xml(c) for c in children)
    return f'<{name} id="{attr}">{inner}</{name}>'


xml_trees = st.recursive(
    st.text(alphabet="0123456789abcXYZ:-.T &<", max_size=12),
    lambda inner: st.tuples(xml_names, st.integers(0, 2**64), st.lists(inner, max_size=4)),
    max_leaves=25,
)


@FUZZ
@given(xml_names, xml_trees)
def test_random_xml_trees_are_read_or_refused(root: str, tree: Any) -> None:
    _read(f'<{root} xmlns:n="n" xmlns:soap="s">{_xml(tree)}</{root}>')


@FUZZ
@given(
    st.sampled_from(SAMPLES),
    st.lists(
        st.tuples(st.integers(0, 4000), st.integers(0, 40), st.binary(max_size=6)), min_size=1, max_size=4
    ),
)
def test_mutated_samples_are_read_or_refused(sample: bytes, edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(sample)
    for position, length, replacement in edits:
        start = position % (len(data) + 1)
        data[start : start + length] = replacement
    _read(bytes(data))
    result = extract(bytes(data), "document", {})
    assert bool(result.events) != (result.reason is not None)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["document", "email"]))
def test_extract_returns_events_or_a_reason_never_both(data: bytes, kind: str) -> None:
    result = extract(data, kind, {})  # type: ignore[arg-type]
    assert bool(result.events) != (result.reason is not None)


@pytest.mark.parametrize(
    "bomb",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b"<a>" * 10_000 + b"</a>" * 10_000,
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + b"x" * 1000 + b'">'
        + b"".join(b'<!ENTITY a%d "%s">' % (i, b"&a;" * 50) for i in range(8)) + b"]><r>&a7;</r>",
    ],
    ids=["json-list-depth", "json-object-depth", "xml-depth", "xml-entity-bomb"],
)  # fmt: skip
def test_bombs_are_refused_as_unreadable(bomb: bytes) -> None:
    result = extract(bomb, "document", {})
    assert result.events == ()
    assert result.reason is not None
    assert "internal error" not in result.reason
    assert "nested too deeply" not in result.reason


# Words a notification's message may hold: plain, accented, CJK, emoji, URLs, times, colons, markup characters.
_WORDS = st.sampled_from([
    "the", "reply", "appointment", "is", "at", "10:30", "Note:", "café", "Grüße", "東京で", "😀", "—", "-", "&", "<b>",
    "a", "I", "ok.", "https://example.com/reservations/confirm/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "C'est",
    "$5.00", "50%", "(see)", ">>", "From", "x=y", "Reply", "STOP", "«ok»", "¿Qué?", "tomorrow,", "late;",
]) | st.text(alphabet="abcdefghijklmnopqrstuvwxyzéñ0123456789", min_size=1, max_size=12)


def _shape_email(message: str, shape: str, width: int, cte: str, charset: str) -> bytes:
    """Build a notification email whose Message: field is wrapped as `shape` says, then transfer-encoded."""
    import base64
    import quopri
    import textwrap

    head = ["Text ID: 44400000999", "From Number: +1 213 555 0100", "To Number: 67076", "State: FINISHED"]
    tail = ["Billed Amount: 0.03", "Created: 2026-12-04T09:00:00Z"]
    line = f"Message: {message}"
    params = ""
    if shape.startswith("flowed"):
        delsp = shape.endswith("delsp")
        params = "; format=flowed" + ("; delsp=yes" if delsp else "")
        # Each line keeps the space it was broken after (a word longer than `width` gets a line of its own).
        wrapped = [""]
        for piece in re.findall(r"\S+ ?", line):
            if wrapped[-1] and len(wrapped[-1]) + len(piece.rstrip()) > width:
                wrapped.append("")
            wrapped[-1] += piece
        # RFC 3676: every line but the last ends in the soft-break space (one added when DelSp=yes).
        lines = [w + " " if delsp and i < len(wrapped) - 1 else w for i, w in enumerate(wrapped)]
        if shape.startswith("flowed-quoted"):
            lines = ["> " + w for w in [*head, *lines, *tail]]  # the space after ">" stuffs every line
            head, tail = [], []
        else:
            lines = [" " + w if w.startswith((" ", ">", "From ")) else w for w in lines]  # space-stuffing
        body = "\n".join([*head, *lines, *tail]) + "\n"
    elif shape == "hard":
        body = "\n".join([*head, *textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False),
                          *tail]) + "\n"
    else:  # html: <br> runs or one paragraph per line (Outlook's plain-to-HTML)
        esc = [html.escape(w, quote=False) for w in textwrap.wrap(line, width, break_long_words=False,
                                                                  break_on_hyphens=False)]
        rows = [*head, *esc, *tail]
        body = ("<html><body><p>" + "<br>\n".join(rows) + "</p></body></html>\n" if shape == "html-br"
                else "<html><body>\n" + "".join(f'<p class="MsoNormal">{r}</p>\n' for r in rows) + "</body></html>\n")
    data = body.encode(charset)
    payload = (base64.encodebytes(data) if cte == "base64" else quopri.encodestring(data) if cte == "quoted-printable"
               else data)
    subtype = "html" if shape.startswith("html") else "plain"
    return (b"From: CallFire <notifications@callfire.com>\nTo: ops@example.com\nSubject: Inbound Text Finished\n"
            b"MIME-Version: 1.0\n"
            + f"Content-Type: text/{subtype}; charset={charset}{params}\nContent-Transfer-Encoding: {cte}\n\n".encode()
            + payload)


number_literals = st.builds(
    lambda sign, whole, fraction, exponent: sign + whole + fraction + exponent,
    st.sampled_from(["", "-"]),
    st.from_regex(r"0|[1-9][0-9]{0,24}", fullmatch=True),
    st.sampled_from(["", ".0", ".5", ".000001"]) | st.from_regex(r"\.[0-9]{1,24}", fullmatch=True),
    st.sampled_from(["", "e3", "E+4", "e-6", "e308", "e-324", "e999"])
    | st.from_regex(r"[eE][+-]?[0-9]{1,4}", fullmatch=True),
)


@FUZZ
@given(
    st.lists(_WORDS, min_size=1, max_size=40),
    st.sampled_from(["flowed", "flowed-delsp", "flowed-quoted", "flowed-quoted-delsp", "hard", "html-br", "html-p"]),
    st.integers(60, 78),
    st.sampled_from(["8bit", "quoted-printable", "base64"]),
    st.sampled_from(["utf-8", "iso-8859-1", "utf-16"]),
)
def test_a_wrapped_message_in_any_shape_and_encoding_is_stored_whole(
    words: list[str], shape: str, width: int, cte: str, charset: str
) -> None:
    message = " ".join(words)
    assume(message.lower() not in ("-", "--", "na", "none", "null"))  # placeholders that mean "no message"
    try:
        message.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    if charset == "utf-16" and cte == "8bit":
        cte = "base64"  # 8bit is for line-oriented text, and UTF-16 is not
    raw = _shape_email(message, shape, width, cte, charset)
    result = extract(raw, "email", {})
    assert result.reason is None, result.reason
    assert [e.message for e in result.events] == [message]
    assert_values_whole(result, raw, "email")


@FUZZ
@given(st.lists(_WORDS, min_size=1, max_size=30),
       st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "latin-1",
                        "cp1252", "shift_jis", "koi8-r"]),
       st.booleans(), st.booleans())
def test_a_document_in_any_declared_charset_is_read_whole(
    words: list[str], charset: str, as_xml: bool, declare: bool
) -> None:
    message = " ".join(words)
    try:
        message.encode(charset)
    except UnicodeEncodeError:
        message = "".join(ch for ch in message if ch.isascii())
    if not message.strip():
        message = "ok"
    message = message.strip()
    if as_xml:
        text = (f'<?xml version="1.0" encoding="{charset}"?>\n<TextNotification><Text id="5"><FromNumber>1</FromNumber>'
                f"<Message>{html.escape(message, quote=False)}</Message></Text></TextNotification>")
    else:
        text = json.dumps({"TextNotification": {"Text": {"@id": "5", "FromNumber": 1, "Message": message}}},
                          ensure_ascii=False)
    raw = text.encode(charset)
    content_type = f"application/{'xml' if as_xml else 'json'}; charset={charset}" if declare else None
    if not as_xml and not declare and not charset.startswith("utf"):
        return  # JSON carries no declaration of its own: only Unicode is found without a charset (RFC 8259 §8.1)
    result = extract(raw, "document", {}, content_type=content_type)
    assert result.reason is None, result.reason
    assert [e.message for e in result.events] == [message]
    assert_values_whole(result, raw, "document", content_type)


@FUZZ
@given(
    st.lists(number_literals, min_size=1, max_size=40),
    st.sampled_from(["BilledAmount", "Duration", "SubscriptionId", "@id", "Created"]),
    number_literals,
)
def test_numbers_in_any_form_are_stored_with_their_exact_value_and_never_expanded(
    numbers: list[str], column: str, value: str
) -> None:
    fields = f'"{column}":{value},' if column != "SubscriptionId" else ""
    raw = (
        '{"TextNotification":{"SubscriptionId":' + (value if column == "SubscriptionId" else "1")
        + ',"Text":{' + (f'"@id":{value}' if column == "@id" else '"@id":"5"') + ","
        + (fields if column != "@id" else "") + '"x":[' + ",".join(numbers) + "]}}}"
    ).encode()
    result = extract(raw, "document", {})
    if result.reason is not None:
        assert result.reason and "internal error" not in result.reason
        return
    (event,) = result.events
    payload = event.row()["payload"]
    assert len(payload.encode()) <= 2 * len(raw)
    stored = json.loads(payload, parse_float=Decimal, parse_int=Decimal)
    assert stored["TextNotification"]["Text"]["x"] == [Decimal(n) for n in numbers]
