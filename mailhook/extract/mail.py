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
import codecs
import email
import email.policy
import logging
import re
from dataclasses import dataclass
from email.message import Message

import mailparser
from mailparser.exceptions import MailParserError

from mailhook.errors import Unreadable
from mailhook.extract.charset import decode_document
from mailhook.extract.embedded import clean_text, documents_in_body, is_whole_document
from mailhook.extract.flowed import unflow
from mailhook.extract.simple_mail import cr_only_before_lf, first_blank_line, read_simple_mail
from mailhook.models import MailLimits, quick_init

log = logging.getLogger("mailhook.mail")
# mail-parser logs a WARNING for every part type it does not "handle" (xml, json,
# octet-stream): here those parts are the notifications themselves, arriving at
# thousands a second, and mailhook logs one line per delivery.
logging.getLogger("mailparser").setLevel(logging.ERROR)

# More embedded notifications than this in one email is an attack or a bug;
# the raw email is quarantined (and can be reprocessed) rather than read.
MAX_DOCUMENTS = 1000
# mail-parser eagerly parses every address header (a 100k-address header takes
# seconds) and every Received line: only the headers we read are handed to it.
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
# A declared boundary, as email.message's get_boundary() would read it (quoted or not).
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
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
_DOC_TYPES = frozenset({"application/xml", "text/xml", "application/json", "text/json", "application/soap+xml"})


MAX_CONTAINERS = MailLimits().max_containers


class _LimitedPolicy(email.policy.Compat32):
    """The compat32 policy (what mail-parser parses with) that counts header fields as the parser reads them."""

    limits: MailLimits
    count: list[int]  # [header fields read so far]

    def __init__(self, limits: MailLimits) -> None:
        super().__init__()
        # A policy's attributes are read-only once made (_PolicyBase.__setattr__): set as it sets its own.
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "count", [0])

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        """Read one header field as compat32 does, refusing the email past max_header_fields."""
        self.count[0] += 1
        if self.count[0] > self.limits.max_header_fields:
            raise Unreadable(
                f"more than {self.limits.max_header_fields} MIME header fields (limit max_header_fields); not parsed"
            )
        name, value = super().header_source_parse(sourcelines)
        # Postfix keeps a header's first header_size_limit bytes and discards the rest; so does this.
        return name, value[: self.limits.header_size_limit]


# mail-parser's private names mailhook relies on, all in `_MailParser` below; tests/test_library_internals.py checks
# them against the installed mail-parser, and pyproject.toml caps it.
PRIVATE_NAMES = ("MailParser._make_mail", "MailParser._decode_body_payload", "MailParser._parse_guarded")


class _MailParser(mailparser.MailParser):  # type: ignore[misc]  # mail-parser ships no type hints
    """mail-parser without the summary dicts (`mail`, `mail_partial`) that mailhook never reads.

    `parse()` builds them twice per email, decoding every header and joining
    every body again, a cost measured in docs/performance.md. The parts, attachments and
    headers mailhook reads are built exactly as before.
    """

    # Private override: MailParser._make_mail (builds the summary dicts) — skipped, mailhook never reads them.
    def _make_mail(self, complete: bool = True) -> dict[str, object]:
        return {}

    # Private override: MailParser._decode_body_payload (one part's text), for document charsets and flowed text.
    def _decode_body_payload(self, part: Message, charset: str, part_index: int) -> str:
        """Decode a body part as mail-parser does, but an XML/JSON part by its own rules, and unflow flowed text.

        An XML or JSON part's text follows BOM > MIME charset > zero bytes or
        XML declaration > UTF-8 (mailhook.extract.charset) instead of the MIME
        charset alone; a `format=flowed` text/plain part is unflowed (RFC 3676)
        here, where its parameters are still at hand, before any field is read.
        """
        ctype = part.get_content_type()
        if ctype in _DOC_TYPES or ctype.endswith(("+xml", "+json")):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes) and data:
                return _decode(data, part.get_content_charset())
        text: str = super()._decode_body_payload(part, charset, part_index)
        # get_param parses every parameter (~9 µs): only where the field names one called format at all.
        if (ctype == "text/plain" and "format" in str(part.get("content-type", "")).lower()
                and str(part.get_param("format", "")).lower() == "flowed"):
            return unflow(text, delsp=str(part.get_param("delsp", "")).lower() == "yes")
        return text

    @classmethod
    def from_limited_bytes(cls, data: bytes, limits: MailLimits) -> mailparser.MailParser:
        """Do what `from_bytes` does, parsing with a policy that enforces `limits` as headers are read."""
        policy = _LimitedPolicy(limits)
        # mail-parser's from_bytes is `cls._parse_guarded(lambda: email.message_from_bytes(bt))`, with no way
        # to pass a policy: the same, through its private _parse_guarded (which turns RecursionError into
        # MailParserRecursionError), with ours.
        return cls._parse_guarded(lambda: email.message_from_bytes(data, policy=policy))


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
        trimmed = _trim_headers(raw)
        simple = read_simple_mail(trimmed, limits)
        if simple is not None:  # the same Mail, read without building a Message (docs/performance.md)
            return _candidates(
                list(simple.attachments), {}, list(simple.text_plain), list(simple.text_html), [],
                simple.message_id, simple.subject,
            )
        return _read(_parse(trimmed, limits))
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
    # A part starts at a delimiter line, "--" and a declared boundary: lines starting "--" bound them, and
    # lines bound those (a count of one byte is cheaper than of three).
    lines = raw.count(b"\n")
    if lines > limits.max_parts and raw.count(b"\n--") > limits.max_parts:
        boundaries = {quoted or bare for quoted, bare in _BOUNDARY.findall(raw)}
        parts = sum(raw.count(b"\n--" + boundary) for boundary in boundaries)
        if parts > limits.max_parts:
            raise Unreadable(
                f"MIME structure too large: {parts} part delimiters (limit max_parts {limits.max_parts}); not parsed"
            )
    if lines > limits.max_lines:
        raise Unreadable(f"email of {lines} lines (limit max_lines {limits.max_lines}); not parsed")


def _parse(data: bytes, limits: MailLimits | None = None) -> mailparser.MailParser:
    """Parse with mail-parser, through the shared boundary when that cannot change the result."""
    limits = limits or MailLimits()
    renamed = _with_shared_boundary(data)
    if renamed is not None:
        shared, plain = renamed
        try:
            parsed = _MailParser.from_limited_bytes(shared, limits)
        except Unreadable:
            raise  # a limit: the same email under its own boundary is no smaller
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
    return _MailParser.from_limited_bytes(data, limits)


def _with_shared_boundary(data: bytes) -> tuple[bytes, bool] | None:
    """Return `data` with its top-level multipart boundary renamed _SHARED_BOUNDARY, when that is safe.

    The standard library compiles a regex for every multipart boundary it
    meets (see docs/performance.md), and boundaries are unique per email, so its cache never
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
    return _candidates(
        parsed.attachments,
        _flowed_attachments(parsed),
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
        text = _decode(data, att.get("charset"))
        origin = f"attachment {name!r}"
        # A document's own bounds are searched even in a part that is wholly one:
        # mailers append signatures, footers and stray bytes after the root.
        rank = 0 if is_whole_document(text) else 2
        for doc in documents_in_body(text, ctype == "text/html"):
            add(rank, doc, origin)
        if ctype == "text/plain" and att.get("filename") in flowed:
            text = unflow(text, delsp=flowed[str(att.get("filename"))])
        if ctype.startswith("text/") and ctype not in _DOC_TYPES:
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


def _flowed_attachments(parsed: mailparser.MailParser) -> dict[str, bool]:
    """Map the file name of every format=flowed text/plain attachment to its DelSp (mail-parser keeps neither)."""
    if not any(str(att.get("mail_content_type") or "").lower() == "text/plain" for att in parsed.attachments):
        return {}
    found: dict[str, bool] = {}
    for part in parsed.message.walk():
        name = part.get_filename()
        if name and part.get_content_type() == "text/plain" and str(part.get_param("format", "")).lower() == "flowed":
            found[str(name)] = str(part.get_param("delsp", "")).lower() == "yes"
    return found


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
    """Decode bytes best-effort, never raising: as a document is (BOM > MIME charset > zero bytes or
    XML declaration > UTF-8), else by the declared charset, UTF-8, then Windows-1252."""
    declared = charset if isinstance(charset, str) else ""
    try:
        return decode_document(data, declared or None)[0]
    except Unreadable:
        pass
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, "replace")
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
    if not cr_only_before_lf(block) or _NOT_HEADER_LINE.search(lines) is not None:
        return None
    # A field ends before its last line's "\n", which is put back (the block's last line has none).
    kept = [m.group(1) + b"\n" if m.end() < len(lines) else m.group(1) for m in _KEPT_FIELD.finditer(lines)]
    return b"".join(kept) + raw[head_end:]


def _header_end(raw: bytes) -> int:
    """Return where the first blank line (`\\r?\\n\\r?\\n`) starts, or len(raw): bytes.find, not a regex scan."""
    first = first_blank_line(raw)
    if first < 0:
        return len(raw)
    return first - 1 if first > 0 and raw[first - 1] == 0x0D else first


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
