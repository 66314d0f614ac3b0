"""Read one bare CallFire notification document (v1.1 XML, SOAP, v1.1 JSON, v2 JSON) into Events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailhook.errors import Unreadable
from mailhook.extract.charset import decode_document
from mailhook.extract.json import parse_json
from mailhook.extract.v1 import ROOTS, read_v1
from mailhook.extract.v2 import is_v2, read_v2
from mailhook.extract.values import is_mapping
from mailhook.extract.xml import parse_xml
from mailhook.models import Event

# What may come before a document's first character: a byte-order mark and blanks.
_BLANK = "\ufeff \t\r\n"
_BLANK_BYTES = b" \t\r\n\xef\xbb\xbf"


def sniff(text: str) -> str:
    """Name a decoded document's format from its first non-blank character: "xml", "json", "" (empty), else that char.

    The one format sniff: extraction reads by it, the HTTP door's signature
    check (`is_v1`) decides by it.
    """
    head = text.lstrip(_BLANK)[:1]
    if head == "<":
        return "xml"
    return "json" if head and head in "{[" else head


def is_v1(body: bytes, charset: str | None) -> bool:
    """Say whether a body is a v1.1 notification: XML/SOAP, or JSON under a v1.1 root key (in any charset).

    v2 webhooks are JSON only; `charset` is the one declared beside the body (Content-Type), if any.
    """
    try:
        text, _ = decode_document(body, charset)
    except Unreadable:
        return body.lstrip(_BLANK_BYTES)[:1] == b"<"  # XML that cannot be decoded is still no v2 body
    shape = sniff(text)
    if shape != "json":
        return shape == "xml"
    try:
        document = parse_json(text)
    except Unreadable:
        return False
    items = document if isinstance(document, list) else [document]
    return bool(items) and all(isinstance(item, dict) and any(k in ROOTS for k in item) for item in items)


def read_document(data: bytes | str, subscriptions: Mapping[int, str]) -> tuple[list[Event], list[str]]:
    """Decode bytes (mailhook.extract.charset), sniff (first non-blank char: '<' XML/SOAP, '{' or '[' JSON), read.

    Bytes are decoded with no charset declared beside them; a caller that has
    one (extract(), for an HTTP body) decodes first and passes the text.
    Returns the events and notes on anything done to read it (such as a
    repaired malformed XML, or a charset chosen against a declaration);
    raises `Unreadable` with a precise reason when the document cannot be
    decoded, is not a CallFire notification or holds no event.
    """
    notes: list[str] = []
    if isinstance(data, bytes):
        data, notes = decode_document(data)
    shape = sniff(data)
    if not shape:
        raise Unreadable("empty document")
    if shape == "xml":
        events, found = _read_xml(data, subscriptions)
        notes += found
    elif shape == "json":
        events = _read_json(data, subscriptions)
    else:
        raise Unreadable(f"not XML or JSON: document starts with {shape!r}")
    if not events:
        raise Unreadable("document holds no notification event")
    return events, notes


def _read_xml(data: str, subscriptions: Mapping[int, str]) -> tuple[list[Event], list[str]]:
    document, notes = parse_xml(data)
    fmt = "xml"
    root, body = next(iter(document.items()))
    if root == "Envelope":
        root, body = _soap_body(body)
        fmt = "soap"
    if root not in ROOTS:
        raise Unreadable(f"unknown XML root element <{root}>: not a CallFire v1.1 notification")
    return [read_v1(root, body, fmt, subscriptions)], notes


def _soap_body(envelope: Any) -> tuple[str, Any]:
    """Return the notification element inside a SOAP Envelope/Body."""
    body = envelope.get("Body") if is_mapping(envelope) else None
    if not is_mapping(body):
        raise Unreadable("SOAP envelope without a Body")
    if "Fault" in body:
        raise Unreadable(f"SOAP Fault instead of a notification: {body['Fault']!r:.200}")
    children = [(k, v) for k, v in body.items() if not k.startswith(("@", "#"))]
    if len(children) != 1:
        names = ", ".join(k for k, _ in children) or "nothing"
        raise Unreadable(f"SOAP Body must hold exactly one notification element, found {names}")
    return children[0]


def _read_json(data: str, subscriptions: Mapping[int, str]) -> list[Event]:
    document = parse_json(data)
    items = document if isinstance(document, list) else [document]
    events: list[Event] = []
    for item in items:
        events.extend(_read_json_object(item, subscriptions))
    return events


def _read_json_object(document: Any, subscriptions: Mapping[int, str]) -> list[Event]:
    if not is_mapping(document):
        raise Unreadable(f"JSON notification must be an object, got {type(document).__name__}")
    roots = [k for k in document if k in ROOTS]
    if roots:
        return [read_v1(root, document[root], "json", subscriptions) for root in roots]
    if is_v2(document):
        return read_v2(document)
    keys = ", ".join(list(document)[:8]) or "none"
    raise Unreadable(f"JSON is not a CallFire notification (top-level keys: {keys})")
