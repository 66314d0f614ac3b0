"""Read one raw email into the notification texts it may carry: embedded documents and readable parts.

CallFire's EMAIL format is undocumented, so nothing here trusts the email's
shape: every body part and attachment is searched for an embedded v1.1/v2
document (XML, SOAP or JSON), after undoing HTML escaping, inline-forward
header blocks and `>` quote prefixes. The human-readable parts are handed on
as well, for the `Field: value` / HTML-table reader.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass

import mailparser
from mailparser.exceptions import MailParserError

from mailhook.errors import Unreadable
from mailhook.extract.charset import decode_part
from mailhook.extract.embedded import documents_in_body, is_whole_document
from mailhook.extract.flowed import unflow
from mailhook.extract.headers import trim_headers
from mailhook.extract.quoting import clean_text
from mailhook.extract.simple_mail import read_simple_mail
from mailhook.extract.slow_mail import DOC_TYPES, flowed_attachments, parse_message
from mailhook.models import MailLimits, quick_init

log = logging.getLogger("mailhook.mail")

# More embedded notifications than this in one email is an attack or a bug;
# the raw email is quarantined (and can be reprocessed) rather than read.
MAX_DOCUMENTS = 1000

_CONTAINER = re.compile(rb"boundary\s*=|message/rfc822", re.IGNORECASE)
# A declared boundary, as email.message's get_boundary() would read it (quoted or not).
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)


MAX_CONTAINERS = MailLimits().max_containers


@quick_init
@dataclass(frozen=True, slots=True)
class DocumentCandidate:
    """An embedded XML/JSON notification text and where in the email it was found."""

    data: bytes
    origin: str


@quick_init
@dataclass(frozen=True, slots=True)
class TextCandidate:
    """A human-readable part (plain text or HTML) with forwards and quote prefixes removed."""

    text: str
    html: bool
    origin: str


@quick_init
@dataclass(frozen=True, slots=True)
class Mail:
    """What one email offers the extractors: its ids and every candidate notification text."""

    message_id: str | None
    subject: str | None
    documents: tuple[DocumentCandidate, ...]
    texts: tuple[TextCandidate, ...]


def parse_mail(raw: bytes, limits: MailLimits | None = None) -> Mail:
    """Parse `raw` RFC 5322 bytes into candidates, raising only `Unreadable`."""
    limits = limits or MailLimits()
    check_structure(raw, limits)
    try:
        trimmed = trim_headers(raw)
        simple = read_simple_mail(trimmed, limits)
        # The same Mail, read without building a Message (docs/performance-log.md, "Where the CPU goes per message").
        if simple is not None:
            return _candidates(
                list(simple.attachments), {}, list(simple.text_plain), list(simple.text_html), [],
                simple.message_id, simple.subject,
            )
        return _read(parse_message(trimmed, limits))
    except (MailParserError, RecursionError) as exc:
        raise Unreadable(f"MIME structure nested too deeply to parse: {exc}") from exc
    except Unreadable:
        raise
    except Exception as exc:  # hostile input must quarantine, never crash the door
        raise Unreadable(f"email could not be parsed: {type(exc).__name__}: {exc}") from exc


def check_structure(raw: bytes, limits: MailLimits) -> None:
    """Refuse an email with more lines, containers or parts than `limits` allow, by counting over its bytes.

    Each count is a C scan (a few ms for 10 MB); a regex runs only where a
    cheap upper bound says the email may be over a limit.
    """
    # Every container match holds one of these words, so counting them bounds the matches.
    lowered = raw.lower()
    possible = lowered.count(b"boundary") + lowered.count(b"message/rfc822")
    containers = len(_CONTAINER.findall(raw)) if possible > limits.max_containers else possible
    if containers > limits.max_containers:
        raise Unreadable(
            f"MIME structure too deep or too large: {containers} multipart/message containers"
            f" (limit {limits.max_containers}); not parsed"
        )
    # A part starts at a delimiter line, "--" and a declared boundary: lines starting "--" bound them (counted
    # alone: a count of "\n--" skips ahead, where one of "\n" as a cheaper bound before it tested every byte).
    if raw.count(b"\n--") > limits.max_parts:
        boundaries = {quoted or bare for quoted, bare in _BOUNDARY.findall(raw)}
        parts = sum(raw.count(b"\n--" + boundary) for boundary in boundaries)
        if parts > limits.max_parts:
            raise Unreadable(
                f"MIME structure too large: {parts} part delimiters (limit max_parts {limits.max_parts}); not parsed"
            )
    lines = raw.count(b"\n") if len(raw) > limits.max_lines else 0  # no more lines than bytes
    if lines > limits.max_lines:
        raise Unreadable(f"email of {lines} lines (limit max_lines {limits.max_lines}); not parsed")


def _read(parsed: mailparser.MailParser) -> Mail:
    return _candidates(
        parsed.attachments,
        flowed_attachments(parsed),
        parsed.text_plain,
        parsed.text_html,
        parsed.text_not_managed,
        parsed.message_id,
        parsed.subject,
    )


def _candidates(
    attachments: list[dict[str, object]],
    flowed: dict[str, bool],
    text_plain: list[str],
    text_html: list[str],
    text_not_managed: list[str],
    message_id: object,
    subject: object,
) -> Mail:
    """Build the Mail from what mail-parser (or read_single_part, for a simple email) read."""
    ranked: list[tuple[int, int, DocumentCandidate]] = []
    texts: list[TextCandidate] = []
    seen: set[bytes] = set()

    def add(rank: int, data: bytes, origin: str) -> None:
        key = data.strip()
        if key and key not in seen:
            if len(seen) >= MAX_DOCUMENTS:
                raise Unreadable(f"more than {MAX_DOCUMENTS} embedded documents in one email; not read")
            seen.add(key)
            ranked.append((rank, len(ranked), DocumentCandidate(data, origin)))

    for i, att in enumerate(attachments, 1):
        ctype = str(att.get("mail_content_type") or "").lower()
        if ctype == "message/rfc822":
            continue  # its parts were walked too and appear below as parts of their own
        name = str(att.get("filename") or f"attachment {i}")
        data = _attachment_bytes(att)
        text = decode_part(data, att.get("charset"))
        origin = f"attachment {name!r}"
        # A document's own bounds are searched even in a part that is wholly one:
        # mailers append signatures, footers and stray bytes after the root.
        rank = 0 if is_whole_document(text) else 2
        for doc in documents_in_body(text, ctype == "text/html"):
            add(rank, doc, origin)
        if ctype == "text/plain" and att.get("filename") in flowed:
            text = unflow(text, delsp=flowed[str(att.get("filename"))])
        if ctype.startswith("text/") and ctype not in DOC_TYPES:
            texts.append(TextCandidate(clean_text(text), ctype == "text/html", origin))

    bodies = [("text/plain", t, False) for t in text_plain]
    bodies += [("text/html", t, True) for t in text_html]
    bodies += [("other", t, False) for t in text_not_managed]
    for i, (kind, body, is_html) in enumerate(bodies, 1):
        origin = f"{kind} part {i}"
        whole = is_whole_document(body)
        for doc in documents_in_body(body, is_html):
            add(1 if whole else 3, doc, origin)
        if whole:
            continue
        if kind != "other":
            texts.append(TextCandidate(clean_text(body) if not is_html else body, is_html, origin))

    ranked.sort(key=lambda r: (r[0], r[1]))
    return Mail(
        message_id=_message_id(message_id),
        subject=_subject(subject),
        documents=tuple(c for _, _, c in ranked),
        texts=tuple(texts),
    )


def _attachment_bytes(att: dict[str, object]) -> bytes:
    payload = att.get("payload") or ""
    text = payload if isinstance(payload, str) else str(payload)
    if att.get("binary"):
        try:
            return base64.b64decode(text)
        except (binascii.Error, ValueError):
            return text.encode("utf-8", "replace")
    return text.encode("utf-8", "surrogateescape") if text else b""



# A control character or an undecodable byte (a lone surrogate) in a header
# value never reaches a column (NUL cut text short in some tools): each becomes U+FFFD.
_UNFIT_IN_COLUMN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _message_id(value: object) -> str | None:
    if value is None:
        return None
    text = _UNFIT_IN_COLUMN.sub("\ufffd", "".join(str(value).split()))
    return text or None


def _subject(value: object) -> str | None:
    """Return the subject mail-parser decoded (RFC 2047), whitespace collapsed, control characters replaced."""
    return _UNFIT_IN_COLUMN.sub("\ufffd", " ".join(str(value).split())) or None if value else None
