"""decode_document reads bytes in the charset their sender declared, in the order the standards give it."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.errors import Unreadable
from mailhook.extract import extract
from mailhook.extract.charset import _decode_by_rules, charset_of, decode_document

DOC = '{"TextNotification": {"Text": {"@id": "5", "Message": "Grüße ☃ 😀"}}}'
XML = (
    '<?xml version="1.0" encoding="{}"?>\n'
    '<TextNotification><Text id="5"><Message>{}</Message></Text></TextNotification>'
)


@pytest.mark.parametrize(
    ("data", "declared"),
    [
        (codecs.BOM_UTF8 + DOC.encode(), None),
        (DOC.encode("utf-16"), None),  # with the BOM Python writes
        (codecs.BOM_UTF16_BE + DOC.encode("utf-16-be"), None),
        (DOC.encode("utf-32"), None),
        (codecs.BOM_UTF32_BE + DOC.encode("utf-32-be"), None),
        (DOC.encode("utf-16-le"), None),  # zero bytes, RFC 4627 §3
        (DOC.encode("utf-16-be"), None),
        (DOC.encode("utf-32-le"), None),
        (DOC.encode("utf-32-be"), None),
        (DOC.encode("utf-16-le"), "utf-16"),  # declared without a byte order: the zero bytes give it
        (DOC.encode("utf-16-be"), "UTF-16"),
        (DOC.encode("utf-16-le"), "utf-16le"),
        (DOC.encode("utf-32-le"), "utf-32"),
        (DOC.encode(), "utf-8"),
        (DOC.encode(), None),
    ],
)
def test_every_unicode_encoding_is_read_with_or_without_bom_or_charset(data: bytes, declared: str | None) -> None:
    assert decode_document(data, declared) == (DOC, [])


def test_a_bom_wins_over_the_content_type_charset_and_says_so() -> None:
    text, notes = decode_document(codecs.BOM_UTF16_LE + DOC.encode("utf-16-le"), "iso-8859-1")
    assert text == DOC
    assert notes == [
        "Content-Type says charset=iso-8859-1 but the body starts with a UTF-16LE byte order mark;"
        " read as UTF-16LE (RFC 7303 §3.2: the BOM comes first)"
    ]


def test_the_content_type_charset_wins_over_the_xml_declaration() -> None:
    data = XML.format("ISO-8859-1", "Привет").encode("koi8-r")
    assert decode_document(data, "koi8-r") == (XML.format("ISO-8859-1", "Привет"), [])
    # Without the charset, the declaration is read (and these bytes are no Latin-1 text).
    assert decode_document(data, None)[0] != XML.format("ISO-8859-1", "Привет")


def test_the_xml_declaration_names_the_encoding_of_an_ascii_compatible_body() -> None:
    for name, codec, message in (("windows-1252", "cp1252", "“quoted” \u2013 €"), ("KOI8-R", "koi8-r", "Привет"),
                                 ("ISO-8859-15", "iso8859-15", "€uro"), ("Shift_JIS", "shift_jis", "東京")):
        assert decode_document(XML.format(name, message).encode(codec)) == (XML.format(name, message), [])


def test_utf16_declared_in_the_xml_declaration_of_utf16_bytes_is_read() -> None:
    doc = XML.format("UTF-16", "東京")
    assert decode_document(doc.encode("utf-16-le"))[0] == doc
    assert decode_document(doc.encode("utf-16-be"))[0] == doc


def test_a_declared_charset_the_zero_bytes_contradict_gives_way_with_a_note() -> None:
    text, notes = decode_document(DOC.encode("utf-16-le"), "utf-8")
    assert text == DOC
    assert notes == ["Content-Type says charset=utf-8 but the body's zero bytes show UTF-16LE; read as UTF-16LE"]
    text, notes = decode_document(DOC.encode(), "utf-16")
    assert text == DOC
    assert "starts with a plain ASCII character" in notes[0]


def test_a_legacy_charset_over_multibyte_utf8_is_read_as_utf8_with_a_note() -> None:
    text, notes = decode_document(DOC.encode(), "iso-8859-1")
    assert text == DOC
    assert notes == ["declared iso-8859-1 (Content-Type charset) but the bytes are valid UTF-8 with multi-byte"
                     " characters; read as UTF-8"]
    # Latin-1 bytes that are no UTF-8 are read as declared.
    assert decode_document("Café".encode("latin-1"), "iso-8859-1") == ("Café", [])


@pytest.mark.parametrize(
    ("data", "declared", "reason"),
    [
        (b"{}", "x-bogus", "unknown charset 'x-bogus' declared in the Content-Type"),
        (b"{}", "base64", "'base64' declared in the Content-Type is not a character set"),
        (b"{}", "unicode_escape", "'unicode_escape' declared in the Content-Type is not a character set"),
        (b"{}", "punycode", "'punycode' declared in the Content-Type is not a character set"),
        (XML.format("x-nope", "a").encode(), None, "unknown charset 'x-nope' declared in the XML declaration"),
        (b'{"a": "\xe9"}', None, "JSON is not valid UTF-8: invalid continuation byte at byte 7"),
        (b'{"a": "\xe9"}', "utf-8", "JSON is not valid UTF-8 (Content-Type charset): invalid continuation byte"),
        (b"<a>\xff</a>", None, "XML is not valid UTF-8: invalid start byte at byte 3"),
        (codecs.BOM_UTF16_LE + b"{\x00\x00\xd8", None, "JSON is not valid UTF-16LE (byte order mark)"),
        (b"\x00\x00{\x00", None, "UCS-4 in an unusual byte order (2143 or 3412"),
        (b"\x00\x00\x00{\xff\xff\xff\xff", None, "JSON is not valid UTF-32BE (found from its zero bytes)"),
    ],
)
def test_unknown_charsets_and_undecodable_bytes_get_a_precise_reason(data: bytes, declared: str | None,
                                                                     reason: str) -> None:
    with pytest.raises(Unreadable) as caught:
        decode_document(data, declared)
    assert reason in str(caught.value)


def test_the_http_reason_for_a_bogus_charset_is_the_quarantine_reason() -> None:
    result = extract(DOC.encode(), "document", {}, content_type="application/json; charset=no-such")
    assert result.reason == "unknown charset 'no-such' declared in the Content-Type"


@pytest.mark.parametrize(
    ("header", "charset"),
    [
        ("application/json; charset=utf-16", "utf-16"),
        ('text/xml; charset="UTF-16LE"', "utf-16le"),
        ("application/json;charset=ISO-8859-1;foo=bar", "iso-8859-1"),
        ("application/json; charset*=utf-8''utf-16", "utf-16"),  # RFC 2231
        ("application/json", None),
        (None, None),
    ],
)
def test_charset_of_reads_the_parameter_however_it_is_written(header: str | None, charset: str | None) -> None:
    assert charset_of(header) == charset


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([None, "utf-8", "utf-16", "utf-32", "latin-1", "cp1252",
                                                  "shift_jis", "utf-7", "gb18030", "koi8-r"]))
def test_decoding_never_yields_more_characters_than_bytes(data: bytes, declared: str | None) -> None:
    try:
        text, notes = decode_document(data, declared)
    except Unreadable as exc:
        reason = str(exc)
        assert reason
        return
    assert len(text) <= len(data)
    assert all(isinstance(n, str) for n in notes)


_STARTS = st.sampled_from([b"<", b"{", b"[", b"<?xml version='1.0' encoding='latin-1'?>", b"\xef\xbb\xbf", b"\xff\xfe",
                           b"\xfe\xff", b"\x00", b" ", b""])
_DECLARED = st.sampled_from([None, "utf-8", "UTF-8", "utf8", " utf-8 ", '"utf-8"', "latin-1", "utf-16", "utf-16-le",
                             "utf-32", "cp1252", "no-such-charset", "unicode-escape", "idna"])


def _decoded(read: object, data: bytes, declared: str | None) -> tuple[str, object]:
    try:
        return ("read", read(data, declared))  # type: ignore[operator]
    except Unreadable as exc:
        return ("refused", str(exc))


@settings(max_examples=3000, deadline=None)
@given(_STARTS, st.binary(max_size=40), st.text(max_size=20), _DECLARED)
def test_the_common_starts_are_decoded_as_every_rule_in_order_decodes_them(
    start: bytes, tail: bytes, text: str, declared: str | None
) -> None:
    """A body starting `<`, `{` or `[` (no zero second byte) skips the BOM and zero-byte steps: the same answer."""
    for data in (start + tail, start + text.encode("utf-8"), start + b"\x00" + tail, start + text.encode("utf-16-le")):
        assert _decoded(decode_document, data, declared) == _decoded(_decode_by_rules, data, declared)


def test_an_unknown_charset_is_refused_on_the_common_path_and_again_after_it() -> None:
    for _ in range(2):  # the charset lookup is cached only when it names a charset
        with pytest.raises(Unreadable, match="unknown charset 'no-such'"):
            decode_document(b"<a/>", "no-such")
