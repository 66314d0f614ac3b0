"""Check that every text value an extraction stores appears whole in the decoded source it came from.

"Whole" means: the value, with its whitespace runs matched by any whitespace (a
wrap is a space that became a line end) and `>` quote prefixes skipped, occurs
in the decoded source (for a plain-text field, ending where a line ends), and
where its occurrence ends at a line end the next
line starts no continuation: it is blank, a `Field:` line, a signature
separator, or the end of the source. Documents (XML, JSON) are decoded and
parsed by the standard library's readers, and each value must equal one of
their text leaves in full.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Iterator
from typing import Any

import xmltodict

from mailhook.extract.charset import charset_of, decode_document
from mailhook.extract.embedded import unescape
from mailhook.extract.flowed import unflow
from mailhook.extract.mail import parse_mail
from mailhook.models import Event, Extraction

_TAG = re.compile(r"<[^<>]*>")
_BREAK = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d|/td|/th)\b[^<>]*>(?:[ \t]*\r?\n)?", re.IGNORECASE)
_NEXT_IS_NO_CONTINUATION = re.compile(r"[ \t>]*(?:$|--|[A-Za-z][A-Za-z0-9 _./#()-]{0,40}?[ \t*]*(?:[:=]|\s-\s))")


def text_values(event: Event) -> Iterator[tuple[str, str]]:
    """Yield (where, value) for every free-text value an event stores."""
    for column in ("message", "broadcast_name", "from_number", "to_number"):
        value = getattr(event, column)
        if value:
            yield column, value
    for attempt in event.attempts:
        if attempt.message:
            yield "attempt message", attempt.message
    fields = event.payload.get("fields") if event.format in ("text", "html") else None
    for label, value in (fields or {}).items():
        if value.strip():
            yield f"field {label!r}", value


def email_sources(raw: bytes) -> list[str]:
    """Return every text/* part of an email decoded as its MIME headers say (flowed text unflowed), as lines."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    sources: list[str] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            text = data.decode("utf-8", "replace")
        if part.get_content_type() == "text/plain" and str(part.get_param("format", "")).lower() == "flowed":
            text = unflow(text, delsp=str(part.get_param("delsp", "")).lower() == "yes")
        if part.get_content_type() == "text/html" or "<br" in text.lower() or "</p>" in text.lower():
            sources.append(unescape(_TAG.sub(" ", _BREAK.sub("\n", text))))
        sources.append(unescape(text) if "&" in text else text)
    return [source.replace("\r\n", "\n") for source in sources]


def document_leaves(data: bytes, charset: str | None = None) -> set[str]:
    """Return every text leaf (values and attributes) of an XML or JSON document.

    A malformed XML document (which mailhook repairs) has no leaves to give:
    its decoded, unescaped text is returned instead, to be searched.
    """
    text, _ = decode_document(data, charset)
    body = text.strip().lstrip("\ufeff")
    try:
        if body.startswith("<"):
            tree: Any = xmltodict.parse(re.sub(r"^<\?xml[^>]*\?>", "", body), strip_whitespace=False)
        else:
            tree = json.loads(body)
    except Exception:  # noqa: BLE001 - malformed: search its text
        return {unescape(body)}
    return set(_leaves(tree))


def _leaves(tree: Any) -> Iterator[str]:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _leaves(value)
    elif tree is not None and not isinstance(tree, bool):
        yield str(tree)


def appears_whole(value: str, source: str, *, ends_a_line: bool = False) -> bool:
    """Say whether `value` occurs in `source` (whitespace and quote prefixes aside) and is not cut at a line end.

    With `ends_a_line` (a `Field: value` line's value runs to its line's end) an
    occurrence that ends inside a line does not count.
    """
    words = value.split()
    if not words:
        return True
    pattern = re.compile(r"(?:[ \t]*\n[ \t>]*|[ \t\u00a0]+)".join(re.escape(w) for w in words))
    for match in pattern.finditer(source):
        rest = source[match.end():]
        line_rest, newline, after = rest.partition("\n")
        if line_rest.strip():
            if ends_a_line:
                continue
            return True  # the value ends inside a line (an HTML cell): the reader stopped at a separator
        if not newline:
            return True  # the source ends there
        if _NEXT_IS_NO_CONTINUATION.match(after.split("\n", 1)[0]):
            return True
    return False


def assert_values_whole(result: Extraction, raw: bytes, kind: str, content_type: str | None = None) -> None:
    """Assert every text value of every event in `result` appears whole in `raw`, decoded."""
    if not result.events:
        return
    if kind == "document":
        leaves = document_leaves(raw, charset_of(content_type))
        sources: list[str] = []
    else:
        sources = email_sources(raw)
        leaves = set()
        for candidate in parse_mail(raw).documents:
            try:
                leaves |= document_leaves(candidate.data)
            except Exception:  # noqa: BLE001 - a candidate mailhook itself could not read holds no value
                continue
    for event in result.events:
        for where, value in text_values(event):
            if event.format in ("text", "html"):
                ends_a_line = event.format == "text" and where.startswith(("message", "field"))
                assert any(appears_whole(value, s, ends_a_line=ends_a_line) for s in sources), (where, value)
            else:
                assert any(value == leaf or value == leaf.strip() or (len(leaves) == 1 and value in leaf)
                           for leaf in leaves), (where, value)


