"""Read an XML (or SOAP) notification safely into the same dict shape as its JSON form.

Elements are matched by local name: namespace prefixes are stripped and
`xmlns` declarations dropped, so `<n:SubscriptionId>` becomes `SubscriptionId`
and `<Text id="1">` becomes `{"Text": {"@id": "1"}}` as in v1.1 JSON. DTDs are
refused before anything is expanded, and size and nesting depth are bounded.
"""

from __future__ import annotations

import re
from typing import Any
from xml.parsers import expat

import xmltodict

from mailhook.errors import Unreadable

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_DTD = re.compile(r"<!(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
# An end tag whose `>` is missing, followed (after optional space) by the next tag:
# the one malformation in CallFire's published inbound-SMS sample.
_UNCLOSED_END_TAG = re.compile(r"(</[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)(\s*)(?=<)")


class _Refused(Exception):
    """Raised from inside expat callbacks to stop at a DTD or at excessive depth."""


class _Declined(Exception):
    """Raised from inside the fast reader's callbacks where only the old path decides the answer."""


def parse_xml(data: bytes | str) -> tuple[dict[str, Any], list[str]]:
    """Parse an XML document into a dict keyed by local names; return it with notes.

    A document whose only fault is end tags missing their `>` is repaired and
    re-parsed, with a note carrying the parser's original complaint; any other
    malformation raises `Unreadable` with the parser's reason.
    """
    # Whitespace outside the root element carries nothing; pages that publish samples
    # (CallFire's own included) leave non-ASCII spaces such as U+00A0 there.
    text = _decode(data).strip()
    # Every declaration starts "<!": a text without one is told by a scan in C, not a pattern search.
    if "<!" in text and _DTD.search(text):
        raise Unreadable("XML with a DOCTYPE or ENTITY declaration is refused (entity expansion risk)")
    try:
        return _parse(text), []
    except expat.ExpatError as exc:
        original = str(exc)
    # Inside CDATA or a comment `</x` is text, and the repair would change it.
    opaque = "<![CDATA[" in text or "<!--" in text
    repaired = text if opaque else _UNCLOSED_END_TAG.sub(r"\1>\2", text)
    if repaired == text:
        raise Unreadable(f"malformed XML: {original}")
    try:
        document = _parse(repaired)
    except expat.ExpatError:
        raise Unreadable(f"malformed XML: {original}") from None
    return document, [f"recovered malformed XML: {original}"]


def _decode(data: bytes | str) -> str:
    """Decode bytes by BOM, then UTF-8, then the encoding the XML declaration names."""
    if isinstance(data, str):
        if len(data) > MAX_BYTES:
            raise Unreadable(f"XML document larger than {MAX_BYTES} bytes")
        return data.lstrip("\ufeff")
    if len(data) > MAX_BYTES:
        raise Unreadable(f"XML document larger than {MAX_BYTES} bytes")
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if data.startswith(bom):
            return _decode_as(data[len(bom) :], codec)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        declared = _DECLARED_ENCODING.match(data.lstrip())
        if declared is None or declared.group(1).lower() in (b"utf-8", b"utf8"):
            raise Unreadable(f"XML is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        return _decode_as(data, declared.group(1).decode("ascii"))


def _decode_as(data: bytes, codec: str) -> str:
    try:
        return data.decode(codec)
    except (LookupError, UnicodeDecodeError) as exc:
        raise Unreadable(f"XML cannot be decoded as {codec}: {exc}") from None


def _parse(text: str) -> dict[str, Any]:
    """Build the dict with the fast reader when it reads the body, else the old way."""
    # The XML declaration may name another encoding; the text is already decoded.
    body = _DECLARATION.sub("", text, count=1)
    document = _read_fast(body)
    if document is None:
        return _read_slow(body)
    return document


def _read_fast(body: str) -> dict[str, Any] | None:
    """Build xmltodict's dict, as `_local_names` leaves it, in three expat callbacks; None to leave it to xmltodict.

    The parser is configured as xmltodict configures its own (no namespace
    processing, attributes in order, text buffered), and the callbacks do what
    xmltodict's handler and `_local_names` do, in fewer steps. Anything but a
    clean read (a malformed document, nesting past MAX_DEPTH, a DTD, which
    parse_xml refuses before this) is left to the old path, which gives its
    answer exactly as before.
    """
    # Per open element: its parent's dict (None until it gets a child or an
    # attribute) and where the element's own character data starts in `pieces`.
    # The character data goes straight into one list by its C `append` (no Python
    # call per piece); an element's end takes its own pieces off the top of it.
    stack: list[tuple[dict[str, Any] | None, int]] = []
    item: dict[str, Any] | None = None
    pieces: list[str] = []

    def start(_name: str, attrs: list[str]) -> None:
        nonlocal item
        if len(stack) >= MAX_DEPTH:
            raise _Declined
        stack.append((item, len(pieces)))
        item = _attributes(attrs) if attrs else None

    def end(name: str) -> None:
        nonlocal item
        value: Any = item
        item, mark = stack.pop()
        if len(pieces) > mark:
            if len(pieces) == mark + 1:
                text = pieces.pop()
            else:
                text = "".join(pieces[mark:])
                del pieces[mark:]
            if value is None:
                value = text
            elif text and not text.isspace():
                # Indentation between child elements is dropped, as `_local_names` drops it.
                value["#text"] = text
        if ":" in name:
            name = name.rsplit(":", 1)[1]
        if item is None:
            item = {name: value}
        elif name in item:
            present = item[name]
            if type(present) is list:
                present.append(value)
            else:
                item[name] = [present, value]
        else:
            item[name] = value

    def decline(*_args: Any) -> None:
        raise _Declined

    # No interning: pyexpat would hash every tag name twice (start and end) to look it up in a dict of its
    # own, where the names only need to be equal strings; ~20 k instructions per bench XML notification.
    parser = expat.ParserCreate(intern=None)
    parser.buffer_text = True
    parser.ordered_attributes = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = pieces.append
    parser.StartDoctypeDeclHandler = decline
    parser.EntityDeclHandler = decline
    try:
        parser.Parse(body, True)
    except (expat.ExpatError, UnicodeError, _Declined):
        return None
    return item


def _attributes(attrs: list[str]) -> dict[str, Any] | None:
    """Return an element's attributes as `@local` keys, xmlns dropped, as xmltodict and `_local_names` give them."""
    item: dict[str, Any] = {}
    pairs = iter(attrs)
    for key, value in zip(pairs, pairs, strict=False):  # name, value, name, value, ...
        if ":" in key or key.startswith("xmlns"):
            if key == "xmlns" or key.startswith("xmlns:"):
                continue
            if ":" in key:
                key = key.rsplit(":", 1)[1]
        # A later name that strips to the same local name overwrites the value in
        # the first one's place, as the dict xmltodict builds from the pairs does.
        item["@" + key] = value
    return item or None


def _read_slow(body: str) -> dict[str, Any]:
    """Check safety with a streaming pass, then build the dict with xmltodict."""
    # Every start tag is a "<" not followed by "/", so a body with at most MAX_DEPTH of
    # those cannot nest deeper (DTDs, whose entities could add elements, were refused
    # by parse_xml already): the safety pass is needed only above that count.
    if body.count("<") - body.count("</") > MAX_DEPTH:
        _check_structure(body)
    result = xmltodict.parse(body, postprocessor=_local_names, disable_entities=True, strip_whitespace=False)
    if not isinstance(result, dict):
        raise Unreadable("XML document has no root element")
    return result


def _check_structure(body: str) -> None:
    """Refuse DTDs and over-deep nesting before xmltodict builds anything (`body`: without its declaration)."""
    parser = expat.ParserCreate()
    depth = 0

    def start(_name: str, _attrs: Any) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"XML nested deeper than {MAX_DEPTH} elements")

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    def refuse_dtd(*_args: Any) -> None:
        raise _Refused("XML with a DOCTYPE or ENTITY declaration is refused (entity expansion risk)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(body, True)
    except _Refused as exc:
        raise Unreadable(str(exc)) from None


def _local_names(_path: Any, key: str, value: Any) -> tuple[str, Any] | None:
    """Strip namespace prefixes from element and attribute names; drop xmlns declarations."""
    # Called for every element and attribute: plain names and leaf text take the fewest steps.
    if ":" in key or key.startswith("@xmlns"):
        if key == "@xmlns" or key.startswith("@xmlns:"):
            return None
        if ":" in key:
            prefix = "@" if key.startswith("@") else ""
            key = prefix + key.rsplit(":", 1)[1]
    if type(value) is dict:  # xmltodict builds plain dicts
        text = value.get("#text")
        if type(text) is str and not text.strip():
            # Indentation between child elements, not text: element text itself is kept verbatim.
            del value["#text"]
            if not value:
                value = None
    return key, value
