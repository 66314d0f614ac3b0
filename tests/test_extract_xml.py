"""XML is read safely, by local names, into the same shape as v1.1 JSON."""

from __future__ import annotations

import pytest

from mailhook.errors import Unreadable
from mailhook.extract.xml import MAX_DEPTH, parse_xml

NOTIFICATION = (
    '<n:TextNotification xmlns="http://api.callfire.com/data" '
    'xmlns:n="http://api.callfire.com/notification/xsd">'
    "<n:SubscriptionId>41001</n:SubscriptionId>"
    '<Text id="11"><Message>{message}</Message></Text>'
    "</n:TextNotification>"
)


def test_prefixes_are_stripped_and_namespace_declarations_dropped() -> None:
    document, notes = parse_xml(NOTIFICATION.format(message="hi"))
    assert document == {
        "TextNotification": {"SubscriptionId": "41001", "Text": {"@id": "11", "Message": "hi"}}
    }
    assert notes == []


def test_any_prefix_spelling_reads_the_same() -> None:
    other = NOTIFICATION.format(message="hi").replace("n:", "ns2:").replace("xmlns:n=", "xmlns:ns2=")
    assert parse_xml(other)[0] == parse_xml(NOTIFICATION.format(message="hi"))[0]


def test_escaped_ampersand_survives_as_text() -> None:
    document, _ = parse_xml(NOTIFICATION.format(message="AT&amp;T &lt;3"))
    assert document["TextNotification"]["Text"]["Message"] == "AT&T <3"


def test_bare_ampersand_is_refused_not_dropped() -> None:
    with pytest.raises(Unreadable, match="malformed XML: not well-formed"):
        parse_xml(NOTIFICATION.format(message="AT&T"))


def test_text_keeps_its_surrounding_spaces() -> None:
    document, _ = parse_xml(NOTIFICATION.format(message="  two  spaces  "))
    assert document["TextNotification"]["Text"]["Message"] == "  two  spaces  "


def test_end_tag_missing_its_bracket_is_repaired_with_a_note() -> None:
    broken = "<R>\n  <Modified>2012-09-24T05:02:35Z</Modified\n  <FinalResult>RECEIVED</FinalResult>\n</R>"
    document, notes = parse_xml(broken)
    assert document == {"R": {"Modified": "2012-09-24T05:02:35Z", "FinalResult": "RECEIVED"}}
    assert notes == ["recovered malformed XML: not well-formed (invalid token): line 3, column 2"]


def test_other_malformations_are_refused_with_the_parsers_reason() -> None:
    with pytest.raises(Unreadable, match="mismatched tag"):
        parse_xml("<R><A>1</B></R>")


def test_repair_that_does_not_help_reports_the_original_error() -> None:
    with pytest.raises(
        Unreadable, match=r"malformed XML: not well-formed \(invalid token\): line 2, column 0$"
    ):
        parse_xml("<R><A>1</A\n<B>&x</B></R>")


def test_element_with_attributes_and_text_keeps_both() -> None:
    document, _ = parse_xml('<Call><ToNumber ClientData="order-8812">13105550142</ToNumber></Call>')
    assert document == {"Call": {"ToNumber": {"@ClientData": "order-8812", "#text": "13105550142"}}}


def test_escaped_markup_inside_text_stays_a_string() -> None:
    dialplan = "&lt;dialplan&gt;&lt;play&gt;Hi&lt;/play&gt;&lt;/dialplan&gt;"
    document, _ = parse_xml(f"<Ivr><DialplanXml>{dialplan}</DialplanXml></Ivr>")
    assert document == {"Ivr": {"DialplanXml": "<dialplan><play>Hi</play></dialplan>"}}


def test_repeated_elements_become_a_list() -> None:
    document, _ = parse_xml("<Call><CallRecord id='1'/><CallRecord id='2'/></Call>")
    assert document == {"Call": {"CallRecord": [{"@id": "1"}, {"@id": "2"}]}}


@pytest.mark.parametrize(
    "doc",
    [
        '<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><r>&b;</r>',
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        '<!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><r/>',
        '<?xml version="1.0"?>\n<!doctype r><r/>',
    ],
)
def test_dtds_are_refused_before_expansion(doc: str) -> None:
    with pytest.raises(Unreadable, match="DOCTYPE or ENTITY"):
        parse_xml(doc)


def test_billion_laughs_is_refused() -> None:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    bomb = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY l0 "lol">{entities}]><r>&l9;</r>'
    with pytest.raises(Unreadable, match="DOCTYPE"):
        parse_xml(bomb)


def test_ten_thousand_deep_nesting_is_refused() -> None:
    deep = "<a>" * 10_000 + "</a>" * 10_000
    with pytest.raises(Unreadable, match=f"deeper than {MAX_DEPTH}"):
        parse_xml(deep)


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = MAX_DEPTH
    document, _ = parse_xml("<a>" * depth + "x" + "</a>" * depth)
    for _ in range(depth - 1):
        document = document["a"]
    assert document == {"a": "x"}


def test_nesting_one_past_the_limit_is_refused_for_its_depth_before_a_later_syntax_error() -> None:
    depth = MAX_DEPTH + 1
    with pytest.raises(Unreadable, match=f"deeper than {MAX_DEPTH}"):
        parse_xml("<a>" * depth + "x" + "</a>" * depth + "<oops")


def test_a_shallow_document_with_many_end_tags_and_comments_is_read() -> None:
    # Only start tags can nest, so the depth pass may be skipped: the result must not change.
    body = "<r>" + "<!-- </x> -->" * 80 + "<b/>" * 10 + "</r>"
    assert parse_xml(body) == ({"r": {"b": [None] * 10}}, [])


def test_utf16_with_bom_is_decoded() -> None:
    data = NOTIFICATION.format(message="héllo").encode("utf-16")
    document, _ = parse_xml(data)
    assert document["TextNotification"]["Text"]["Message"] == "héllo"


def test_declared_latin1_is_decoded() -> None:
    data = ('<?xml version="1.0" encoding="ISO-8859-1"?>' + NOTIFICATION.format(message="café")).encode(
        "latin-1"
    )
    document, _ = parse_xml(data)
    assert document["TextNotification"]["Text"]["Message"] == "café"


def test_invalid_utf8_without_declared_encoding_is_refused() -> None:
    with pytest.raises(Unreadable, match="not valid UTF-8"):
        parse_xml(b"<r>caf\xe9</r>")


def test_whitespace_outside_the_root_is_ignored() -> None:
    document, notes = parse_xml("\n <r>1</r>\u00a0\n")
    assert (document, notes) == ({"r": "1"}, [])


def test_no_repair_when_cdata_could_hold_the_broken_tag() -> None:
    with pytest.raises(Unreadable, match="malformed XML"):
        parse_xml("<R><A>1</A\n<B><![CDATA[</b <i>]]></B></R>")
