"""Trim an email's top header block to the fields mailhook reads, before either mail reader sees it.

mail-parser decodes every header it is given (addresses, Received chains,
dates) and mailhook reads a few; the block ends where email.feedparser ends it.
"""

from __future__ import annotations

import re

from mailhook.extract.header_fields import cr_only_before_lf, first_blank_line

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
# email.feedparser's notion of a header line (an mbox "From " line counts too).
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:")
# In a header block with a "\n" put in front: a line that is neither a header nor a continuation line.
NOT_HEADER_LINE = re.compile(rb"\n(?![ \t]|From |[\x21-\x39\x3b-\x7e]*:)")
# The same block's kept fields (group 1: a field's line and continuation lines) and, with no group, its
# lines that NOT_HEADER_LINE finds: one scan tries each line once, not once for each of two patterns.
_KEPT_FIELD_OR_NOT_HEADER = re.compile(
    rb"\n(?:((?i:subject|m(?:essage-id|ime-version)|content-(?:type|transfer-encoding|disposition))"
    rb":[^\n]*(?:\n[ \t][^\n]*)*)"
    rb"|(?![ \t]|From |[\x21-\x39\x3b-\x7e]*:))"
)


def trim_headers(raw: bytes) -> bytes:
    """Keep only the top-level headers mailhook reads, each at most _MAX_FIELD_BYTES long.

    mail-parser decodes every header it is given (addresses, Received chains,
    dates) and mailhook reads a few: dropping the rest first saves about a
    quarter of extraction on ordinary notification emails, and bounds a huge
    header block. The header block ends where the standard library's parser
    ends it, at the first line that is not a header, so no body text is lost.
    """
    head_end = header_end(raw)
    fast = _trim_plain_headers(raw, head_end) if head_end <= _MAX_FIELD_BYTES else None
    return fast if fast is not None else _trim_header_lines(raw, head_end)


def _trim_header_lines(raw: bytes, head_end: int) -> bytes:
    """Do what trim_headers does, line by line: for any header block, however odd or large."""
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
    """Do what trim_headers does, with two regex scans, for a header block that needs no care.

    That is a block of at most _MAX_FIELD_BYTES (so no field is cut) whose
    every line is a header or continuation line ending in "\n" or "\r\n" (so
    the body starts after it); for any other block, return None.
    """
    block = raw[:head_end]
    if not cr_only_before_lf(block):
        return None
    lines = b"\n" + block
    kept: list[bytes] = []
    for m in _KEPT_FIELD_OR_NOT_HEADER.finditer(lines):
        field = m.group(1)
        if field is None:
            return None  # a line that is neither a header nor a continuation line
        # A field ends before its last line's "\n", which is put back (the block's last line has none).
        kept.append(field + b"\n" if m.end() < len(lines) else field)
    return b"".join(kept) + raw[head_end:]


def header_end(raw: bytes) -> int:
    """Return where the first blank line (`\\r?\\n\\r?\\n`) starts, or len(raw): bytes.find, not a regex scan."""
    first = first_blank_line(raw)
    if first < 0:
        return len(raw)
    return first - 1 if first > 0 and raw[first - 1] == 0x0D else first
