"""Read a simple single-part text email straight from its bytes, as mail-parser would, or decline.

mail-parser builds a full `email.message.Message` and walks it (~350 µs per
email, docs/performance.md); most notification emails are one text/plain or
text/html part whose reading needs none of that. `read_single_part` accepts
only a shape whose every step through email.feedparser, the compat32 policy
and mail-parser's `parse()` it can repeat exactly, and returns None for
anything else, which the caller then reads the slow way. What it accepts:

- a header block (the bytes before the first blank line, as
  `mail._trim_headers` leaves it) of printable ASCII and tabs, lines ending
  in LF or CRLF, each a field `name: value` with a name of letters and dashes
  or a continuation line after one, no field name twice, every value within
  `header_size_limit` and no more fields than `max_header_fields`;
- no `=?` (RFC 2047 words) in Subject or Message-ID, no Content-Disposition;
- Content-Type absent, or one line `text/plain` or `text/html` with at most the
  parameters charset, format and delsp, each once, as a token (quoted or not);
- Content-Transfer-Encoding absent, or one line 7bit, 8bit, quoted-printable
  or base64 (base64 only when it decodes strictly, without padding repair);
- a charset, when named, from `_CHARSETS`.

tests/test_extract_single_part.py checks that every email it accepts reads to
the same `Mail` as the slow path, over the fixtures, the bench corpus and
generated variants.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass

from mailhook.extract.flowed import unflow
from mailhook.models import MailLimits

# Charsets whose codec decodes any bytes the same way every time (or fails the
# same way, caught as mail-parser catches it); any other name is left to the slow path.
_CHARSETS = frozenset(
    {"us-ascii", "ascii", "utf-8", "utf8", "latin1", "latin-1", "cp1252"}
    | {f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 7, 9, 13, 15)}
    | {f"windows-{n}" for n in range(1250, 1259)}
)
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*:")
# The fields mail._trim_headers keeps; any other name in the block is left to the slow path.
_KNOWN_FIELDS = frozenset(
    {"subject", "message-id", "mime-version", "content-type", "content-transfer-encoding", "content-disposition"}
)
# Header bytes the fast path takes: printable ASCII, tab, and CR only before LF.
_ODD_HEADER_BYTE = re.compile(rb"[^\t\n\r\x20-\x7e]|\r(?!\n)")
_CONTENT_TYPE = re.compile(
    r"(text)/(plain|html)[ \t]*((?:;[ \t]*[A-Za-z]+[ \t]*=[ \t]*(?:\"[A-Za-z0-9._:+-]+\"|[A-Za-z0-9._:+-]+)[ \t]*)*)",
    re.IGNORECASE,
)
_PARAMETER = re.compile(r';[ \t]*([A-Za-z]+)[ \t]*=[ \t]*(?:"([^"]+)"|([^ \t;]+))[ \t]*')
_PARAMETER_NAMES = frozenset({"charset", "format", "delsp"})
_ENCODINGS = frozenset({"", "7bit", "8bit", "quoted-printable", "base64"})


@dataclass(frozen=True, slots=True)
class SinglePart:
    """What mail-parser reads from a single-part text email: header values as it returns them, and the body text."""

    message_id: str
    subject: str
    html: bool
    text: str  # "" when mail-parser would list no body


def read_single_part(data: bytes, limits: MailLimits) -> SinglePart | None:
    """Read `data` (an email with its headers trimmed) as mail-parser would, or return None when not sure."""
    fields, body = _fields(data, limits)
    if fields is None or body is None or "content-disposition" in fields:
        return None
    subject = fields.get("subject", "")
    message_id = fields.get("message-id", "")
    if "=?" in subject or "=?" in message_id:
        return None
    ctype = fields.get("content-type")
    params: dict[str, str] = {}
    subtype = "plain"
    if ctype is not None:
        match = _CONTENT_TYPE.fullmatch(ctype)
        if match is None:
            return None
        subtype = match.group(2).lower()
        for param in _PARAMETER.finditer(match.group(3)):
            name = param.group(1).lower()
            if name not in _PARAMETER_NAMES or name in params:
                return None
            params[name] = param.group(2) or param.group(3)
    cte = fields.get("content-transfer-encoding", "").lower()
    if cte not in _ENCODINGS:
        return None
    charset = params.get("charset", "utf-8").lower()
    if charset not in _CHARSETS:
        return None
    text = _body_text(body, cte, charset)
    if text is None:
        return None
    if subtype == "plain" and params.get("format", "").lower() == "flowed":
        text = unflow(text, delsp=params.get("delsp", "").lower() == "yes")
    # mail-parser returns a lone header's decoded value stripped (decode_headers).
    return SinglePart(message_id.strip(), subject.strip(), subtype == "html", text)


def _fields(data: bytes, limits: MailLimits) -> tuple[dict[str, str] | None, bytes | None]:
    """Split `data` into its header fields (lower-case name -> compat32 value) and body, or (None, None)."""
    if data.startswith(b"\n"):
        return {}, data[1:]
    if data.startswith(b"\r\n"):
        return {}, data[2:]
    first = min((i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0), default=-1)
    if first < 0:
        return None, None  # headers only: left to the slow path
    body = data[first + 2 :] if data[first + 1] == 0x0A else data[first + 3 :]
    block = data[:first]  # up to the last field's LF (a CR before it stays and is stripped below)
    if _ODD_HEADER_BYTE.search(block.removesuffix(b"\r")) is not None or block.startswith((b" ", b"\t")):
        return None, None
    fields: dict[str, str] = {}
    name = ""
    lines: list[str] = []
    for line in block.decode("ascii").split("\n"):
        if line[:1] in (" ", "\t"):
            lines.append("\n" + line)
            continue
        if name and not _store(fields, name, lines, limits):
            return None, None
        match = _FIELD_NAME.match(line)
        if match is None:
            return None, None
        name = line[: match.end() - 1]
        lines = [line[match.end() :].lstrip(" \t")]
    if name and not _store(fields, name, lines, limits):
        return None, None
    if len(fields) > limits.max_header_fields:
        return None, None
    return fields, body


def _store(fields: dict[str, str], name: str, lines: list[str], limits: MailLimits) -> bool:
    """Record one field's value as compat32's header_source_parse makes it; False where the slow path must decide."""
    key = name.lower()
    # Lines were split on LF, so a CR ending a line sits at its end, before the LF put back in front of the next.
    value = "".join(lines).rstrip("\r\n")
    if key in fields or key not in _KNOWN_FIELDS or len(value) > limits.header_size_limit:
        return False
    if key in ("content-type", "content-transfer-encoding") and "\n" in value:
        return False  # a folded MIME field: its parameters are left to email.message
    fields[key] = value
    return True


def _body_text(body: bytes, cte: str, charset: str) -> str | None:
    """Decode the body as mail-parser's _decode_body_payload does, or None when base64 needs repair."""
    if cte in ("", "7bit", "8bit"):
        if body.isascii():
            return body.decode("ascii")
        payload = body
    elif cte == "quoted-printable":
        payload = quopri.decodestring(body)
    else:
        joined = b"".join(body.splitlines())
        if len(joined) % 4:
            return None
        try:
            payload = base64.b64decode(joined, validate=True)
        except binascii.Error:
            return None
    if not payload:
        return ""
    try:
        text = payload.decode(charset)
        text.encode("utf-8")
    except (LookupError, UnicodeError):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = payload.decode("utf-8", "replace")
    return text
