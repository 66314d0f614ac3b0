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
import bisect
import codecs
import html
import logging
import re
from dataclasses import dataclass

import mailparser
from mailparser.exceptions import MailParserError

from mailhook.errors import Unreadable

log = logging.getLogger("mailhook.mail")
# mail-parser logs a WARNING for every part type it does not "handle" (xml, json,
# octet-stream): here those parts are the notifications themselves, arriving at
# thousands a second, and mailhook logs one line per delivery.
logging.getLogger("mailparser").setLevel(logging.ERROR)

# A notification email has a handful of multipart/message containers. The stdlib parser
# recurses once per nesting level, so a MIME bomb costs time and stack before it
# fails; refuse early and say why instead.
MAX_CONTAINERS = 200
# mail-parser eagerly parses every address header (a 100k-address header takes
# seconds) and every Received line: only the headers we read are handed to it.
# More embedded notifications than this in one email is an attack or a bug;
# the raw email is quarantined (and can be reprocessed) rather than read.
MAX_DOCUMENTS = 1000
_KEEP_HEADERS = frozenset(
    {
        b"subject",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"content-disposition",
    }
)
_MAX_FIELD_BYTES = 16 * 1024
_SHARED_BOUNDARY = b"mailhook.shared.boundary.0"
# A top-level multipart Content-Type field's boundary made of inert characters, quoted or not.
_CONTENT_TYPE_BOUNDARY = re.compile(
    rb'\ncontent-type:[ \t]*multipart/(?:[^\n]|\n(?=[ \t]))*?[;\s]boundary="?([0-9A-Za-z._=+-]{1,70})(?:"|;|\s|$)',
    re.IGNORECASE,
)
_CONTENT_TYPE_NAME = re.compile(rb"\ncontent-type:", re.IGNORECASE)
_PLAIN_CONTENT_TYPE = re.compile(
    rb'\ncontent-type:[ \t]*multipart/[0-9A-Za-z.+-]+[ \t]*;(?:[ \t]*|\r?\n[ \t]+)'
    rb'boundary=("?)([0-9A-Za-z._=+-]{1,70})\1[ \t]*\r?(?=\n[^ \t]|\Z)',
    re.IGNORECASE,
)
# What may follow the boundary on a delimiter line (email.feedparser's pattern, "--" when closing).
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\n|\r|\Z)")

_CONTAINER = re.compile(rb"boundary\s*=|message/rfc822", re.IGNORECASE)
# email.feedparser's notion of a header line (an mbox "From " line counts too).
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:")
# In a header block with a "\n" put in front: a line that is neither a header nor a continuation line,
# and a kept field (its line and continuation lines).
_NOT_HEADER_LINE = re.compile(rb"\n(?![ \t]|From |[\x21-\x39\x3b-\x7e]*:)")
_KEPT_FIELD = re.compile(
    rb"\n((?:subject|message-id|mime-version|content-type|content-transfer-encoding|content-disposition)"
    rb":[^\n]*(?:\n[ \t][^\n]*)*)",
    re.IGNORECASE,
)
_XML_START = re.compile(r"<\?xml\b|<(?:[\w.-]+:)?(?:TextNotification|CallFinished|BroadcastNotification|Envelope)\b")
_XML_DECL_END = re.compile(r"\?>")
_ELEMENT = re.compile(r"\s*(?:<!--.*?-->\s*)*<([\w.:-]+)", re.DOTALL)
_JSON_KEYS = ('"TextNotification"', '"CallFinished"', '"BroadcastNotification"', '"events"')
_FORWARD_MARK = re.compile(
    r"^[ \t]*(?:-{3,}\s*(?:Forwarded message|Original Message)\s*-*|Begin forwarded message:)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_FORWARD_HEADER = re.compile(r"^[ \t]*(?:From|Date|Sent|Subject|To|Cc|Reply-To)[ \t]*:", re.IGNORECASE)
# A `^` pattern under MULTILINE is tried at every character; these find the same
# lines by searching for the newline before them (a literal prefix the engine skips to).
_FORWARD_HINT = re.compile(r"\n[ \t]*(?:---|[Bb])")  # every _FORWARD_MARK line after the first begins so
_QUOTED_FIRST = re.compile(r"[ \t]*>")
_QUOTED_NEXT = re.compile(r"\n[ \t]*>")
_QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+[ \t]?", re.MULTILINE)
# Every HTML pattern stops at the next "<" ([^<>]*): an unclosed tag repeated
# a million times must cost one pass, not one pass per tag.
_HTML_BREAK = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d|/pre)\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")
_HTML_HIDDEN = re.compile(r"<(script|style|head)\b|</(script|style|head)\s*>", re.IGNORECASE)
# Outside every object: the next brace (quotes there are prose). Inside one: the next brace that is
# not in a string, skipping whole strings (an unclosed one runs to the end; a backslash escapes the
# next character). Possessive, so a text without a brace costs one pass, not a backtracking search.
_JSON_BRACE = re.compile(r"[{}]")
_JSON_NEXT_BRACE = re.compile(r'(?:[^{}"]++|"[^"\\]*+(?:\\.[^"\\]*+)*+"?+)*+([{}])', re.DOTALL)
_JSON_KEY_PATTERNS = tuple(re.compile(re.escape(k)) for k in _JSON_KEYS)
_XML_ENCODING = re.compile(r"(<\?xml[^>]*?)\s+encoding\s*=\s*([\"'])[^\"']*\2")
# The entities html.escape writes, "&amp;" last.
_ESCAPE_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&#x27;": "'", "&amp;": "&"}
_DOC_TYPES = frozenset({"application/xml", "text/xml", "application/json", "text/json", "application/soap+xml"})


class _MailParser(mailparser.MailParser):  # type: ignore[misc]  # mail-parser ships no type hints
    """mail-parser without the summary dicts (`mail`, `mail_partial`) that mailhook never reads.

    `parse()` builds them twice per email, decoding every header and joining
    every body again: about a tenth of extraction. The parts, attachments and
    headers mailhook reads are built exactly as before.
    """

    def _make_mail(self, complete: bool = True) -> dict[str, object]:
        return {}


@dataclass(frozen=True, slots=True)
class DocumentCandidate:
    """An embedded XML/JSON notification text and where in the email it was found."""

    data: bytes
    origin: str


@dataclass(frozen=True, slots=True)
class TextCandidate:
    """A human-readable part (plain text or HTML) with forwards and quote prefixes removed."""

    text: str
    html: bool
    origin: str


@dataclass(frozen=True, slots=True)
class Mail:
    """What one email offers the extractors: its ids and every candidate notification text."""

    message_id: str | None
    subject: str | None
    documents: tuple[DocumentCandidate, ...]
    texts: tuple[TextCandidate, ...]


def parse_mail(raw: bytes) -> Mail:
    """Parse `raw` RFC 5322 bytes into candidates, raising only `Unreadable`."""
    # Every container match holds one of these words, so counting them (fast, in C) bounds the
    # matches; the regex only runs on the rare email that might be over the limit.
    lowered = raw.lower()
    possible = lowered.count(b"boundary") + lowered.count(b"message/rfc822")
    containers = len(_CONTAINER.findall(raw)) if possible > MAX_CONTAINERS else possible
    if containers > MAX_CONTAINERS:
        raise Unreadable(
            f"MIME structure too deep or too large: {containers} multipart/message containers"
            f" (limit {MAX_CONTAINERS}); not parsed"
        )
    try:
        return _read(_parse(_trim_headers(raw)))
    except (MailParserError, RecursionError) as exc:
        raise Unreadable(f"MIME structure nested too deeply to parse: {exc}") from exc
    except Unreadable:
        raise
    except Exception as exc:  # hostile input must quarantine, never crash the door
        raise Unreadable(f"email could not be parsed: {type(exc).__name__}: {exc}") from exc


def _parse(data: bytes) -> mailparser.MailParser:
    """Parse with mail-parser, through the shared boundary when that cannot change the result."""
    renamed = _with_shared_boundary(data)
    if renamed is not None:
        shared, plain = renamed
        try:
            parsed = _MailParser.from_bytes(shared)
        except Exception:  # noqa: BLE001 - the email itself, parsed below, says what is wrong with it
            parsed = None
        if parsed is not None and (
            plain  # its one Content-Type is read as multipart with this boundary: no need to ask
            or (
                parsed.message.get_content_maintype() == "multipart"
                and parsed.message.get_boundary() == _SHARED_BOUNDARY.decode()
            )
        ):
            return parsed
    return _MailParser.from_bytes(data)


def _with_shared_boundary(data: bytes) -> tuple[bytes, bool] | None:
    """Return `data` with its top-level multipart boundary renamed _SHARED_BOUNDARY, when that is safe.

    The standard library compiles a regex for every multipart boundary it
    meets (~80 us), and boundaries are unique per email, so its cache never
    helps; under one shared name the pattern is compiled once. The rename
    changes nothing else when the boundary is made of characters no header or
    delimiter syntax gives a meaning to and occurs only as the Content-Type
    parameter and at the start of whole delimiter lines up to the closing one
    (never in content, a nested header or the epilogue). _parse keeps the
    result only if the parsed email is a multipart with the shared boundary,
    which needs no asking when the header is `plain` (returned with the bytes):
    a block of header lines ending in LF or CRLF whose only Content-Type field
    is `multipart/x; boundary=B` (B quoted or not, the parameter perhaps on a
    continuation line) and nothing else, which email.message reads as that
    multipart and that boundary.
    """
    head_end = _header_end(data)
    lines = b"\n" + data[:head_end]
    field = _CONTENT_TYPE_BOUNDARY.search(lines)
    if field is None or _SHARED_BOUNDARY in data:
        return None
    boundary = field.group(1)
    size = len(boundary)
    # Every occurrence, found as bytes.replace will find them: left to right, not overlapping.
    found: list[int] = []
    at = data.find(boundary)
    while at >= 0:
        found.append(at)
        at = data.find(boundary, at + size)
    if not found or found[0] != field.start(1) - 1 or (len(found) > 1 and found[1] < head_end):
        return None
    closing = False
    for at in found[1:]:
        tail = _DELIMITER_TAIL.match(data, at + size)
        if closing or tail is None or data[at - 3 : at] != b"\n--":
            return None  # content, or a delimiter line after the closing one (epilogue)
        closing = tail.group(1) is not None
    plain = _PLAIN_CONTENT_TYPE.match(lines, field.start())
    is_plain = (
        plain is not None
        and plain.start(2) == field.start(1)
        and plain.group(2) == boundary
        and len(_CONTENT_TYPE_NAME.findall(lines)) == 1
        # and the standard library's header block is this block, line for line
        and lines.count(b"\r") == lines.count(b"\r\n")
        and _NOT_HEADER_LINE.search(lines) is None
    )
    return data.replace(boundary, _SHARED_BOUNDARY), is_plain


def _read(parsed: mailparser.MailParser) -> Mail:
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

    for i, att in enumerate(parsed.attachments, 1):
        ctype = str(att.get("mail_content_type") or "").lower()
        if ctype == "message/rfc822":
            continue  # its parts were walked too and appear below as parts of their own
        name = str(att.get("filename") or f"attachment {i}")
        data = _attachment_bytes(att)
        text = _decode(data, att.get("charset"))
        origin = f"attachment {name!r}"
        # A document's own bounds are searched even in a part that is wholly one:
        # mailers append signatures, footers and stray bytes after the root.
        rank = 0 if _is_whole_document(text) else 2
        for doc in _documents_in_body(text, ctype == "text/html"):
            add(rank, doc, origin)
        if ctype.startswith("text/") and ctype not in _DOC_TYPES:
            texts.append(TextCandidate(_clean(text), ctype == "text/html", origin))

    bodies = [("text/plain", t, False) for t in parsed.text_plain]
    bodies += [("text/html", t, True) for t in parsed.text_html]
    bodies += [("other", t, False) for t in parsed.text_not_managed]
    for i, (kind, body, is_html) in enumerate(bodies, 1):
        origin = f"{kind} part {i}"
        whole = _is_whole_document(body)
        for doc in _documents_in_body(body, is_html):
            add(1 if whole else 3, doc, origin)
        if whole:
            continue
        if kind != "other":
            texts.append(TextCandidate(_clean(body) if not is_html else body, is_html, origin))

    ranked.sort(key=lambda r: (r[0], r[1]))
    return Mail(
        message_id=_message_id(parsed.message_id),
        subject=_subject(parsed.subject),
        documents=tuple(c for _, _, c in ranked),
        texts=tuple(texts),
    )


def find_documents(text: str) -> list[bytes]:
    """Return every XML/SOAP/JSON notification embedded in `text`, in order, as UTF-8 bytes.

    A document whose end is missing runs to the end of the text, so the
    document reader can say precisely why it is truncated.
    """
    found: list[bytes] = []
    spans: list[tuple[int, int]] = []
    if "<" in text:
        pos = 0
        while (m := _XML_START.search(text, pos)) is not None:
            start, end = m.start(), _xml_end(text, m.start())
            spans.append((start, end))
            found.append(_utf8_document(text[start:end]))
            pos = end
    if "{" in text and any(k in text for k in _JSON_KEYS):
        xml_starts = [s for s, _ in spans]
        for start, end in _json_spans(text):
            k = bisect.bisect_right(xml_starts, start) - 1
            if k < 0 or start >= spans[k][1]:  # not inside an XML document
                spans.append((start, end))
                found.append(text[start:end].encode("utf-8", "replace"))
    if len(found) > 1:
        order = sorted(range(len(found)), key=lambda k: spans[k][0])
        found = [found[k] for k in order]
    return found


def _documents_in_body(body: str, is_html: bool) -> list[bytes]:
    """Search a body (unquoted), and an HTML body also with tags removed and entities undone."""
    variants = [body]
    if is_html:
        variants.append(html_to_text(body))
    found: list[bytes] = []
    for variant in variants:
        if _has_quoted_line(variant):
            # A quoted copy is only readable unquoted; an unquoted document in the
            # same text loses nothing, as its lines do not start with ">".
            variant = _QUOTE_PREFIX.sub("", variant)
        found += find_documents(variant)
    return found


def html_to_text(markup: str) -> str:
    """Turn HTML into its visible text, one line per break/paragraph/row, entities decoded."""
    text = _HTML_BREAK.sub("\n", drop_hidden(markup))
    return unescape(_HTML_TAG.sub("", text))


def unescape(text: str) -> str:
    """Return html.unescape(text), without its per-entity callback when only html.escape's entities occur."""
    ampersands = text.count("&")
    if not ampersands:
        return text
    if ampersands != sum(text.count(entity) for entity in _ESCAPE_ENTITIES):
        return html.unescape(text)
    # Every "&" starts one of these, so replacing them one kind at a time ("&amp;" last, so
    # no "&" it yields is read again) gives what unescape's single left-to-right pass gives.
    for entity, char in _ESCAPE_ENTITIES.items():
        text = text.replace(entity, char)
    return text


def drop_hidden(markup: str) -> str:
    """Remove <script>, <style> and <head> elements (an unclosed one runs to the end) in one pass."""
    if "<" not in markup:
        return markup
    out: list[str] = []
    pos = 0
    hidden: str | None = None
    for m in _HTML_HIDDEN.finditer(markup):
        opening, closing = m.group(1), m.group(2)
        if hidden is None and opening:
            out.append(markup[pos : m.start()])
            hidden = opening.lower()
        elif hidden is not None and closing and closing.lower() == hidden:
            hidden = None
            pos = m.end()
    if hidden is None:
        out.append(markup[pos:])
    return "".join(out)


def _xml_end(text: str, start: int) -> int:
    """Return the end of the XML document starting at `start` (its root's closing tag)."""
    pos = start
    if text.startswith("<?xml", start):
        decl = _XML_DECL_END.search(text, start)
        if decl is None:
            return len(text)
        pos = decl.end()
    root = _ELEMENT.match(text, pos)
    if root is None:
        return len(text)
    name = root.group(1)
    opening = text.find(">", root.end())
    if opening > 0 and text[opening - 1] == "/":
        return opening + 1
    close = re.compile(r"</" + re.escape(name) + r"\s*>").search(text, root.end())
    return len(text) if close is None else close.end()


def _json_spans(text: str) -> list[tuple[int, int]]:
    """Return the outermost `{ … }` spans naming a CallFire notification, in one pass.

    Strings are only tracked inside an object, so a stray quote in prose
    cannot hide what follows. A notification still open at the end (truncated)
    runs to the end, so the reader can say why it cannot be read.
    """
    keys = sorted(m.start() for pattern in _JSON_KEY_PATTERNS for m in pattern.finditer(text))
    closed: list[tuple[int, int]] = []
    opened: list[int] = []
    pos = 0
    while True:
        if opened:
            m = _JSON_NEXT_BRACE.match(text, pos)
            if m is None:
                break
            i = m.start(1)
        else:
            m = _JSON_BRACE.search(text, pos)
            if m is None:
                break
            i = m.start()
        pos = i + 1
        if text[i] == "{":
            opened.append(i)
        elif opened:
            begin = opened.pop()
            if _has_key(keys, begin, i + 1):
                closed.append((begin, i + 1))
    spans: list[tuple[int, int]] = []
    for begin, finish in sorted(closed, key=lambda span: (span[0], -span[1])):
        if not spans or begin >= spans[-1][1]:
            spans.append((begin, finish))
    after = spans[-1][1] if spans else 0
    for begin in opened:
        # A truncated object: the first unclosed "{" after the last whole one that opens with a key.
        if (
            begin >= after
            and text[begin + 1 : begin + 40].lstrip().startswith('"')
            and _has_key(keys, begin, len(text))
        ):
            spans.append((begin, len(text)))
            break
    return spans


def _has_key(keys: list[int], start: int, end: int) -> bool:
    """Say whether a notification key occurs in text[start:end] (keys: sorted positions)."""
    k = bisect.bisect_left(keys, start)
    return k < len(keys) and keys[k] < end


def _is_whole_document(text: str) -> bool:
    """Say whether a part is nothing but one document (it may still be malformed)."""
    head = text.lstrip("\ufeff \t\r\n")[:512]
    if head.startswith("{"):
        return any(k in text for k in _JSON_KEYS)
    return bool(head.startswith("<") and _XML_START.match(head)) and head[:5].lower() != "<html"


def _utf8_document(text: str) -> bytes:
    """Encode an already-decoded XML text as UTF-8, dropping its now-wrong encoding declaration."""
    if text.startswith("<?xml"):
        end = text.find("?>", 0, 512)
        if end > 0:  # only the declaration itself is rewritten, never searched past
            text = _XML_ENCODING.sub(r"\1", text[:end], count=1) + text[end:]
    return text.encode("utf-8", "replace")


def _clean(text: str) -> str:
    """Remove inline-forward header blocks and `>` quote prefixes from a plain-text part."""
    if _has_quoted_line(text):
        text = _QUOTE_PREFIX.sub("", text)
    if not _has_forward_mark(text):
        return text
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        if _FORWARD_MARK.match(line):
            in_block = True
            continue
        if in_block:
            if _FORWARD_HEADER.match(line) or (line.startswith((" ", "\t")) and line.strip()):
                continue
            in_block = False
            if not line.strip():
                continue
        out.append(line)
    return "\n".join(out)


def _has_quoted_line(text: str) -> bool:
    """Say whether a line starts with `>` (after blanks), as `re.search("^[ \\t]*>", text, re.M)` would."""
    return _QUOTED_FIRST.match(text) is not None or _QUOTED_NEXT.search(text) is not None


def _has_forward_mark(text: str) -> bool:
    """Say whether `_FORWARD_MARK.search(text)` matches, running it only where a mark line may start."""
    if _FORWARD_MARK.match(text) is not None:
        return True
    return _FORWARD_HINT.search(text) is not None and _FORWARD_MARK.search(text) is not None


def _attachment_bytes(att: dict[str, object]) -> bytes:
    payload = att.get("payload") or ""
    text = payload if isinstance(payload, str) else str(payload)
    if att.get("binary"):
        try:
            return base64.b64decode(text)
        except (binascii.Error, ValueError):
            return text.encode("utf-8", "replace")
    return text.encode("utf-8", "surrogateescape") if text else b""


def _decode(data: bytes, charset: object) -> str:
    """Decode bytes best-effort: BOM, declared charset, UTF-8, then Windows-1252; never raises."""
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, "replace")
    declared = charset if isinstance(charset, str) else ""
    for codec in (declared, "utf-8"):
        if codec:
            try:
                return data.decode(codec)
            except (LookupError, UnicodeError):
                continue
    return data.decode("cp1252", "replace")


def _trim_headers(raw: bytes) -> bytes:
    """Keep only the top-level headers mailhook reads, each at most _MAX_FIELD_BYTES long.

    mail-parser decodes every header it is given (addresses, Received chains,
    dates) and mailhook reads a few: dropping the rest first saves about a
    quarter of extraction on ordinary notification emails, and bounds a huge
    header block. The header block ends where the standard library's parser
    ends it, at the first line that is not a header, so no body text is lost.
    """
    head_end = _header_end(raw)
    fast = _trim_plain_headers(raw, head_end) if head_end <= _MAX_FIELD_BYTES else None
    return fast if fast is not None else _trim_header_lines(raw, head_end)


def _trim_header_lines(raw: bytes, head_end: int) -> bytes:
    """Do what _trim_headers does, line by line: for any header block, however odd or large."""
    kept: list[bytes] = []
    keep = False
    size = 0
    pos = 0
    for line in raw[:head_end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if keep and size + len(line) <= _MAX_FIELD_BYTES:
                kept.append(line)
                size += len(line)
        elif _HEADER_LINE.match(line):
            name = line.split(b":", 1)[0].strip().lower()
            keep = name in _KEEP_HEADERS
            size = len(line)
            if keep and size <= _MAX_FIELD_BYTES:
                kept.append(line)
        else:
            break  # the body starts here, as it does for email.parser
        pos += len(line)
    return b"".join(kept) + raw[pos:]


def _trim_plain_headers(raw: bytes, head_end: int) -> bytes | None:
    """Do what _trim_headers does, with two regex scans, for a header block that needs no care.

    That is a block of at most _MAX_FIELD_BYTES (so no field is cut) whose
    every line is a header or continuation line ending in "\n" or "\r\n" (so
    the body starts after it); for any other block, return None.
    """
    block = raw[:head_end]
    lines = b"\n" + block
    if block.count(b"\r") != block.count(b"\r\n") or _NOT_HEADER_LINE.search(lines) is not None:
        return None
    # A field ends before its last line's "\n", which is put back (the block's last line has none).
    kept = [m.group(1) + b"\n" if m.end() < len(lines) else m.group(1) for m in _KEPT_FIELD.finditer(lines)]
    return b"".join(kept) + raw[head_end:]


def _header_end(raw: bytes) -> int:
    """Return where the first blank line (`\\r?\\n\\r?\\n`) starts, or len(raw): bytes.find, not a regex scan."""
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    if not ends:
        return len(raw)
    first = min(ends)
    return first - 1 if first > 0 and raw[first - 1] == 0x0D else first


def _message_id(value: object) -> str | None:
    if value is None:
        return None
    text = "".join(str(value).split())
    return text or None


def _subject(value: object) -> str | None:
    """Return the subject mail-parser decoded (RFC 2047), whitespace collapsed."""
    return " ".join(str(value).split()) or None if value else None
