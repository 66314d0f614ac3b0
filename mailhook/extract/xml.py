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


def parse_xml(data: bytes | str) -> tuple[dict[str, Any], list[str]]:
    """Parse an XML document into a dict keyed by local names; return it with notes.

    A document whose only fault is end tags missing their `>` is repaired and
    re-parsed, with a note carrying the parser's original complaint; any other
    malformation raises `Unreadable` with the parser's reason.
    """
    # Whitespace outside the root element carries nothing; pages that publish samples
    # (CallFire's own included) leave non-ASCII spaces such as U+00A0 there.
    text = _decode(data).strip()
    if _DTD.search(text):
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
    """Check safety with a streaming pass, then build the dict with xmltodict."""
    # The XML declaration may name another encoding; the text is already decoded.
    body = _DECLARATION.sub("", text, count=1)
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
