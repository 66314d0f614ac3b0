"""XML is read safely, by local names, into the same shape as v1.1 JSON."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhook.errors import Unreadable
from mailhook.extract.xml import _DTD, MAX_BYTES, MAX_DEPTH, _decode, _read_fast, _read_slow, parse_xml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))

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


# --- the fast reader against xmltodict's ------------------------------------


def _slow(body: str) -> str:
    """Return what the xmltodict path gives for `body`: its dict's repr (key order included) or its error."""
    try:
        return repr(_read_slow(body))
    except Exception as exc:  # noqa: BLE001 - whatever it raises is what the fast path must leave to it
        return f"raised {type(exc).__name__}: {exc}"


def _assert_fast_reads_as_xmltodict(body: str) -> None:
    """The fast reader gives the xmltodict path's dict, key order included, and declines exactly where that raises."""
    fast = _read_fast(body)
    slow = _slow(body)
    if fast is None:
        assert slow.startswith("raised "), f"declined a document xmltodict reads: {slow}"
    else:
        assert repr(fast) == slow


ELEMENT_NAMES = ["a", "b", "Text", "n:a", "m:a", "n:b", "x:y:z", "é", "_u.v-w", "xmlns:q"]
ATTRIBUTE_NAMES = ["id", "n:id", "m:id", "p:id", "xmlns", "xmlns:n", "xmlns:m", "xmlnsx", "xml:lang", "a:b:c", "ID"]
TEXT_PIECES = [
    "x", "AT&amp;T", "&lt;tag&gt;", "&quot;q&apos;", "&#233;", "&#x1F600;", "&#10;", "&#160;", "&#x20;",
    "\u00a0", "\u2003", "caf\u00e9", "\u6f22", " ", "\n  ", "\t", "\r\n", "  two  ",
    "<![CDATA[ <b>&amp; ]]>", "<![CDATA[]]>", "<![CDATA[ ]]>", "<!-- c -->", "<?pi data?>", "&undefined;", "&",
]
ATTRIBUTE_VALUES = st.sampled_from(["1", "", " ", "a&amp;b", "&#233;&lt;", "\u00a0", "x\ny", "http://u", "&#9;"])


NAMES = st.sampled_from(ELEMENT_NAMES)
PLAIN_NAMES = st.sampled_from(ELEMENT_NAMES[:3])
ATTRIBUTES = st.lists(st.tuples(st.sampled_from(ATTRIBUTE_NAMES), ATTRIBUTE_VALUES), max_size=3)
TEXTS = st.lists(st.sampled_from(TEXT_PIECES), max_size=2).map("".join)


@st.composite
def xml_elements(draw: st.DrawFn, depth: int = 0) -> str:
    """Draw an element: prefixed or plain names, attributes (namespace declarations too), text and children mixed."""
    # Plain names half the time, so that siblings repeat.
    name = draw(PLAIN_NAMES if draw(st.booleans()) else NAMES)
    start = name + "".join(f' {key}="{value}"' for key, value in draw(ATTRIBUTES))
    children = 0 if depth >= 3 else draw(st.integers(0, 3))
    if children == 0 and draw(st.booleans()):
        return f"<{start}/>"
    content = [draw(TEXTS)]
    for _ in range(children):
        content += [draw(xml_elements(depth + 1)), draw(TEXTS)]
    return f"<{start}>{''.join(content)}</{name}>"


@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=xml_elements(), spaces=st.sampled_from(["", "\n", "<!-- head -->", "<?pi?>\n"]))
def test_every_generated_document_the_fast_reader_reads_reads_as_xmltodict_reads_it(body: str, spaces: str) -> None:
    _assert_fast_reads_as_xmltodict(spaces + body + spaces)


@pytest.mark.parametrize(
    "body",
    [
        '<r a:id="1" b:id="2"/>',
        '<r id="1" n:id="2" xmlns:n="u"><n:x/></r>',
        '<r n:id="1" id="2" xmlns="u"/>',
        '<r xmlns="u" xmlns:n="v"/>',
        '<r xmlns:n="v">  </r>',
        "<r><a/> <!-- c --> <a/>x<a/></r>",
        "<r>\u00a0<a/>\u2003</r>",
        "<r>x<a/></r>",
        "<r><a>1</a><b/><a>2</a><a/></r>",
        "<u:r><a><b>1</b></a><a><b>2</b><b>3</b></a></u:r>",
        "<r><![CDATA[ ]]><a/></r>",
        "<r><![CDATA[ x ]]></r>",
        "<r><a xmlns:q='w'>  </a></r>",
        "<r><x:y:z>1</x:y:z></r>",
        # An element's text in pieces on both sides of children that have text of their own.
        "<r>a<b>x<c>y</c>z<c/></b>w<b>q</b>v</r>",
        "<r>a<![CDATA[b]]>c<d>e<![CDATA[]]>f</d>g&amp;h<d>i</d></r>",
        "<r> <a>1</a> <a><b>2</b> <b>3</b> </a> </r>",
    ],
)
def test_the_fast_reader_reads_each_corner_as_xmltodict_reads_it(body: str) -> None:
    assert _read_fast(body) is not None
    _assert_fast_reads_as_xmltodict(body)


@pytest.mark.parametrize(
    "sample", sorted(ROOT.joinpath("fixtures").rglob("*.xml")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_xml_fixture_reads_on_the_fast_reader_as_xmltodict_reads_it(sample: Path) -> None:
    try:
        text = _decode(sample.read_bytes()).strip()
    except Unreadable:
        return
    _assert_fast_reads_as_xmltodict(text)


def test_every_bench_document_reads_on_the_fast_reader_as_xmltodict_reads_it() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from notifications import Documents
    finally:
        sys.path.remove(str(ROOT / "bench"))
    documents = Documents(seed=3)
    read = 0
    while read < 60:
        note = documents.next()
        if note.format == "xml":
            body = note.body if isinstance(note.body, str) else note.body.decode()
            assert _read_fast(body.split("?>", 1)[1]) is not None
            _assert_fast_reads_as_xmltodict(body.split("?>", 1)[1])
            read += 1


def test_the_fast_reader_reads_nesting_at_the_limit_among_more_start_tags_than_the_limit() -> None:
    # More start tags than MAX_DEPTH: the old path would have run its depth pass first.
    body = "<a>" * (MAX_DEPTH - 1) + "<b/>" * MAX_DEPTH + "</a>" * (MAX_DEPTH - 1)
    document = _read_fast(body)
    assert document is not None
    _assert_fast_reads_as_xmltodict(body)
    for _ in range(MAX_DEPTH - 1):
        document = document["a"]
    assert document == {"b": [None] * MAX_DEPTH}


def test_the_fast_reader_declines_one_past_the_depth_limit_and_the_old_path_refuses_it() -> None:
    body = "<a>" * (MAX_DEPTH + 1) + "</a>" * (MAX_DEPTH + 1)
    assert _read_fast(body) is None
    with pytest.raises(Unreadable, match=f"deeper than {MAX_DEPTH}"):
        parse_xml(body)


def test_the_fast_reader_stops_at_the_depth_limit_of_a_very_deep_document() -> None:
    assert _read_fast("<a>" * 100_000 + "</a>" * 100_000) is None


@pytest.mark.parametrize("doctype", ['<!DOCTYPE r [<!ENTITY a "x">]><r>&a;</r>', "<!DOCTYPE r><r/>"])
def test_the_fast_reader_declines_a_dtd_before_expanding_anything(doctype: str) -> None:
    # parse_xml refuses DTDs before either reader runs; the fast reader declines them too.
    assert _read_fast(doctype) is None


def test_a_document_of_exactly_max_bytes_is_read_on_the_fast_reader_and_one_more_byte_is_refused() -> None:
    body = "<r>" + "x" * (MAX_BYTES - len("<r></r>")) + "</r>"
    assert len(body.encode()) == MAX_BYTES
    document, notes = parse_xml(body.encode())
    assert (len(document["r"]), notes) == (MAX_BYTES - 7, [])
    assert _read_fast(body) == document
    with pytest.raises(Unreadable, match=f"larger than {MAX_BYTES} bytes"):
        parse_xml(body.replace("<r>", "<r> ").encode())


_DECLARATION_PIECES = st.sampled_from(
    ["<", "!", "<!", "<! ", "DOCTYPE", "doctype", "ENTITY", "Element", "attlist", "<r>", "</r>", "a", " ", "\n"]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_DECLARATION_PIECES, max_size=20).map("".join))
def test_a_text_without_a_declaration_start_holds_no_dtd(text: str) -> None:
    # parse_xml searches for a DTD only where "<!" occurs: every declaration starts with it.
    assert "<!" in text or _DTD.search(text) is None
