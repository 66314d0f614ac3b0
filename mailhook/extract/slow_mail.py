"""Read an email the slow way, through the standard library's parser and mail-parser, within MailLimits.

`mailhook.extract.mail` comes here for whatever `read_simple_mail` declines:
mail-parser with a policy that counts header fields, without the summary
dicts mailhook never reads, and with a multipart's boundary renamed to one
shared name where that cannot change the result.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from email.message import Message

import mailparser

from mailhook.errors import Unreadable
from mailhook.extract.charset import decode_part
from mailhook.extract.flowed import unflow
from mailhook.extract.headers import NOT_HEADER_LINE, header_end
from mailhook.models import MailLimits

# mail-parser logs a WARNING for every part type it does not "handle" (xml, json,
# octet-stream): here those parts are the notifications themselves, arriving at
# thousands a second, and mailhook logs one line per delivery.
logging.getLogger("mailparser").setLevel(logging.ERROR)

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
DOC_TYPES = frozenset({"application/xml", "text/xml", "application/json", "text/json", "application/soap+xml"})


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
    every body again, a cost measured in docs/performance.md, "Where the code is shaped for speed". The
    parts, attachments and headers mailhook reads are built exactly as before.
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
        if ctype in DOC_TYPES or ctype.endswith(("+xml", "+json")):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes) and data:
                return decode_part(data, part.get_content_charset())
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


def parse_message(data: bytes, limits: MailLimits | None = None) -> mailparser.MailParser:
    """Parse with mail-parser, through the shared boundary when that cannot change the result."""
    limits = limits or MailLimits()
    renamed = _with_shared_boundary(data, limits.header_size_limit)
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


def _with_shared_boundary(
    data: bytes, header_size_limit: int = MailLimits().header_size_limit
) -> tuple[bytes, bool] | None:
    """Return `data` with its top-level multipart boundary renamed _SHARED_BOUNDARY, when that is safe.

    The standard library compiles a regex for every multipart boundary it
    meets (docs/performance.md, "Where the code is shaped for speed"), and boundaries are unique
    per email, so its cache never helps; under one shared name the pattern is compiled once. The rename
    changes nothing else when the boundary is made of characters no header or
    delimiter syntax gives a meaning to and occurs only as the Content-Type
    parameter and at the start of whole delimiter lines up to the closing one
    (never in content, a nested header or the epilogue), and when the longer
    name cannot make the field longer than `header_size_limit`. _parse keeps the
    result only if the parsed email is a multipart with the shared boundary,
    which needs no asking when the header is `plain` (returned with the bytes):
    a block of header lines ending in LF or CRLF whose only Content-Type field
    is `multipart/x; boundary=B` (B quoted or not, the parameter perhaps on a
    continuation line) and nothing else, which email.message reads as that
    multipart and that boundary.
    """
    head_end = header_end(data)
    lines = b"\n" + data[:head_end]
    field = _CONTENT_TYPE_BOUNDARY.search(lines)
    if field is None or _SHARED_BOUNDARY in data:
        return None
    boundary = field.group(1)
    size = len(boundary)
    if len(_SHARED_BOUNDARY) > size and head_end + len(_SHARED_BOUNDARY) - size > header_size_limit:
        # The longer name could push the Content-Type field past header_size_limit, which would cut it (and its
        # boundary) where the email's own field is whole: no field of a header block this size can grow past it.
        return None
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
        and NOT_HEADER_LINE.search(lines) is None
    )
    return data.replace(boundary, _SHARED_BOUNDARY), is_plain


def flowed_attachments(parsed: mailparser.MailParser) -> dict[str, bool]:
    """Map the file name of every format=flowed text/plain attachment to its DelSp (mail-parser keeps neither)."""
    if not any(str(att.get("mail_content_type") or "").lower() == "text/plain" for att in parsed.attachments):
        return {}
    found: dict[str, bool] = {}
    for part in parsed.message.walk():
        name = part.get_filename()
        if name and part.get_content_type() == "text/plain" and str(part.get_param("format", "")).lower() == "flowed":
            found[str(name)] = str(part.get_param("delsp", "")).lower() == "yes"
    return found
