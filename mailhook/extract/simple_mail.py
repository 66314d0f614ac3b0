"""Read a simple email straight from its bytes, as mail-parser would, or decline.

mail-parser builds a full `email.message.Message` and walks it (~350 µs per
email, docs/performance-log.md, "Where the CPU goes per message"); most notification emails are one text part, or a
multipart of text parts and a base64 document attachment, whose reading needs
none of that. `read_simple_mail` accepts only a shape whose every step through
email.feedparser, the compat32 policy and mail-parser's `parse()` it repeats
exactly, and returns None for anything else, which the caller then reads the
slow way. What it accepts:

- header blocks (the top one as `headers.trim_headers` leaves it) of printable
  ASCII and tabs, lines ending in LF or CRLF, each a field `name: value` or a
  continuation line after one, no field name twice in a block, every value
  within `header_size_limit`, no more fields in all than `max_header_fields`;
  Content-Type and Content-Disposition folded only right after a `;` (as
  email.generator folds them), the other MIME fields not folded;
- at the top: no `=?` (RFC 2047 words) in Subject or Message-ID;
- a text part: Content-Type absent, or one line `text/plain` or `text/html` with
  at most the parameters charset, format and delsp, each once, as a token
  (quoted or not); Content-Transfer-Encoding absent, or one line 7bit, 8bit,
  quoted-printable or base64 (base64 only when it decodes strictly); a charset,
  when named, from `simple_part._CHARSETS`; no Content-Disposition;
- or, at the top, `multipart/mixed|alternative|related; boundary=B` (B a
  token, or quoted and perhaps holding `=` as email.generator makes it), a
  body of lines ending in LF or CRLF (8-bit bytes only in a text part's
  body: email.generator writes a policy.default text part 8bit), where B
  occurs only in delimiter lines `--B` and one closing `--B--` at the end of
  a line, at least one part, no two delimiters in a row, each part a
  multipart as this one (one level down only: EmailMessage's text and HTML
  beside attachments), a text part as above, a
  document attachment: `application/xml|json` (perhaps `name=` a token),
  base64, `Content-Disposition: attachment; filename=` a token, or a forward:
  `message/rfc822` with no parameters, 7bit or 8bit, perhaps
  `Content-Disposition: attachment` (perhaps `filename=` a token), holding a
  message that is one text part as above under a header block as above,
  except that fields other than the MIME ones are counted and passed over
  (compat32 reads them, nothing after it does), however long or repeated.

tests/test_extract_simple_mail.py checks that every email it accepts reads to
the same `Mail` as the slow path, over the fixtures, the bench corpus and
generated variants.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from mailhook.extract.header_fields import (
    cr_only_before_lf,
    header_and_body,
    parameters,
    read_fields,
    without_last_line_end,
)
from mailhook.extract.simple_part import DISPOSITION, FILENAME_PARAMETERS, MEDIA_TYPE, add_part
from mailhook.models import MailLimits, quick_init

# The fields headers.trim_headers keeps at the top; in a part, the ones whose meaning is read here.
_TOP_FIELDS = frozenset(
    {"subject", "message-id", "mime-version", "content-type", "content-transfer-encoding", "content-disposition"}
)
_PART_FIELDS = frozenset({"mime-version", "content-type", "content-transfer-encoding", "content-disposition"})
_MULTIPART = frozenset({"mixed", "alternative", "related"})
_BOUNDARY = re.compile(r"[0-9A-Za-z._=+-]{1,70}")
# The parameters each field may have here.
_MULTIPART_PARAMETERS = frozenset({"boundary"})


@quick_init
@dataclass(frozen=True, slots=True)
class SimpleMail:
    """What mail-parser reads from a simple email: header values as it returns them, its bodies and attachments."""

    message_id: str
    subject: str
    text_plain: tuple[str, ...]
    text_html: tuple[str, ...]
    # Each with the keys mail._read reads, valued as mail-parser values them.
    attachments: tuple[dict[str, object], ...]


def read_simple_mail(data: bytes, limits: MailLimits) -> SimpleMail | None:
    """Read `data` (an email with its headers trimmed) as mail-parser would, or return None when not sure."""
    split = header_and_body(data)
    if split is None:
        return None
    count = [0]
    fields = read_fields(split[0], _TOP_FIELDS, limits, count)
    if fields is None:
        return None
    subject = fields.get("subject", "")
    message_id = fields.get("message-id", "")
    if "=?" in subject or "=?" in message_id:
        return None
    plain: list[str] = []
    html: list[str] = []
    attachments: list[dict[str, object]] = []
    media = MEDIA_TYPE.fullmatch(fields.get("content-type", "text/plain"))
    if media is not None and media.group(1).lower() == "multipart":
        if not _add_multipart(media, fields, split[1], limits, count, plain, html, attachments, nest=True):
            return None
    elif not add_part(fields, split[1], plain, html, attachments) or attachments:
        return None
    if count[0] > limits.max_header_fields:
        return None
    # mail-parser returns a lone header's decoded value stripped (decode_headers).
    return SimpleMail(message_id.strip(), subject.strip(), tuple(plain), tuple(html), tuple(attachments))


# A part's header block (Content-Type, Content-Transfer-Encoding) is the same in every email one sender's
# software makes, so its reading is kept for the next few: a pure function of the block and the size limit,
# for blocks up to this many bytes only.
CACHED_BLOCK_BYTES = 1024


def read_part_fields(block: bytes, limits: MailLimits, count: list[int]) -> dict[str, str] | None:
    """Do what `read_fields(block, _PART_FIELDS, limits, count)` does, from the cache for a block read before."""
    if len(block) > CACHED_BLOCK_BYTES:
        return read_fields(block, _PART_FIELDS, limits, count)
    fields, read = _part_fields(block, limits.header_size_limit)
    if fields is None:
        return None
    count[0] += read
    return dict(fields)  # the caller's own: the cached one is never handed out


@functools.lru_cache(maxsize=64)
def _part_fields(block: bytes, header_size_limit: int) -> tuple[dict[str, str] | None, int]:
    """Read a part's header block with no fields counted before it: its fields (or None) and how many it counts."""
    # read_fields reads only header_size_limit of the limits.
    count = [0]
    fields = read_fields(block, _PART_FIELDS, MailLimits(header_size_limit=header_size_limit), count)
    return fields, count[0]


def _add_multipart(
    media: re.Match[str],
    fields: dict[str, str],
    body: bytes,
    limits: MailLimits,
    count: list[int],
    plain: list[str],
    html: list[str],
    attachments: list[dict[str, object]],
    *,
    nest: bool,
) -> bool:
    """Add a multipart's parts in the order mail-parser walks them; False when the slow path must read it.

    With `nest`, a part may itself be a multipart of such parts (one level:
    EmailMessage puts its text and HTML alternative in one beside attachments).
    """
    parts = _multipart(media, fields, body)
    if parts is None:
        return False
    for part in parts:
        part_split = header_and_body(part)
        part_fields = read_part_fields(part_split[0], limits, count) if part_split is not None else None
        if part_split is None or part_fields is None:
            return False
        if _is_forward(part_fields):
            if not _add_forward(part_split[1], limits, count, plain, html):
                return False
            continue
        # RFC 2046: the line end before a delimiter belongs to it, so email.feedparser takes it off the payload.
        payload = without_last_line_end(part_split[1])
        if part_fields.get("content-type", "")[:10].lower() == "multipart/":  # before a regex match per leaf
            inner = MEDIA_TYPE.fullmatch(part_fields["content-type"])
            if not nest or inner is None or not _add_multipart(
                inner, part_fields, payload, limits, count, plain, html, attachments, nest=False
            ):
                return False
        elif not add_part(part_fields, payload, plain, html, attachments):
            return False
    return True


def _multipart(media: re.Match[str], fields: dict[str, str], body: bytes) -> list[bytes] | None:
    """Cut a multipart body into its parts' bytes as email.feedparser does, or None unless its shape is plain."""
    params = parameters(media.group(3), _MULTIPART_PARAMETERS)
    if (
        params is None
        or media.group(2).lower() not in _MULTIPART
        or "content-disposition" in fields
        or fields.get("content-transfer-encoding", "7bit").lower() not in ("7bit", "8bit")
        or not cr_only_before_lf(body)
    ):
        return None
    boundary = params.get("boundary", "")
    if _BOUNDARY.fullmatch(boundary) is None:
        return None
    delimiter = b"--" + boundary.encode("ascii")
    size = len(delimiter)
    parts: list[bytes] = []
    start = -1  # where the current part's bytes begin (after its delimiter line), -1 in the preamble
    at = body.find(boundary.encode("ascii"))
    while at >= 0:
        at -= 2  # the delimiter line starts at its dashes
        if at < 0 or body[at : at + 2] != b"--" or (at > 0 and body[at - 1] != 0x0A):
            return None  # the boundary inside content
        tail = body[at + size : at + size + 4]
        closing = tail.startswith(b"--")
        end = tail[2:] if closing else tail
        if end.startswith(b"\r\n"):
            line_end = at + size + (2 if closing else 0) + 2
        elif end.startswith(b"\n"):
            line_end = at + size + (2 if closing else 0) + 1
        elif closing and at + size + 2 == len(body):
            line_end = len(body)
        else:
            return None
        if start >= 0:
            if start == at:
                return None  # two delimiters in a row: email.feedparser skips the second
            # RFC 2046: the line end before a delimiter belongs to it (the part's payload loses it).
            parts.append(body[start:at])
        elif closing:
            return None  # a closing delimiter with no part before it
        if closing:
            return parts if body.find(boundary.encode("ascii"), line_end) < 0 else None
        start = line_end
        at = body.find(boundary.encode("ascii"), line_end)
    return None  # no closing delimiter


def _is_forward(fields: dict[str, str]) -> bool:
    """Say whether a part is a plain `message/rfc822` (no parameters, 7bit or 8bit, perhaps an attachment)."""
    if fields.get("content-type", "").lower() != "message/rfc822":
        return False
    if fields.get("content-transfer-encoding", "7bit").lower() not in ("7bit", "8bit"):
        return False
    disposition = fields.get("content-disposition")
    if disposition is None:
        return True
    match = DISPOSITION.fullmatch(disposition)
    return match is not None and parameters(match.group(2), FILENAME_PARAMETERS) is not None


def _add_forward(body: bytes, limits: MailLimits, count: list[int], plain: list[str], html: list[str]) -> bool:
    """Add a forwarded message's one text part as mail-parser's parse() would; False when the slow path must read it.

    mail-parser lists the message/rfc822 part as an attachment that
    mail._candidates passes over, and the message inside it as a body part of
    its own; its header fields all count towards max_header_fields (only the
    top block is trimmed). email.feedparser takes the line end before the
    next delimiter off the inner message's payload (the last message made).
    """
    split = header_and_body(body)
    if split is None:
        return False
    fields = read_fields(split[0], _PART_FIELDS, limits, count, others=True)
    if fields is None:
        return False
    found: list[dict[str, object]] = []
    payload = without_last_line_end(split[1])
    return add_part(fields, payload, plain, html, found) and not found
