"""Read an email's header blocks from their bytes as email.feedparser and compat32 read them, or decline.

The scans `mailhook.extract.simple_mail` (the fast path) and `mailhook.extract.headers`
share: where the header block ends, whether its bytes are plain, its fields
with their values as compat32's `header_source_parse` makes them, and their `; name=value` parameters.
"""

from __future__ import annotations

import functools
import re

from mailhook.models import MailLimits

_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*:")
# One unfolded field line, as read_fields reads it: the name, and the value without leading blanks or the line's CR
# (a CR can only end a line: _header_bytes_plain). Matched in the block with a "\n" put in front, each line after
# its "\n": a literal the search skips to, where a MULTILINE `^` is tried at every character.
_FIELD_LINE = re.compile(r"\n([A-Za-z][A-Za-z0-9-]*):[ \t]*([^\r\n]*)\r?(?=\n|\Z)")
# Header bytes the fast path takes: printable ASCII, tab, and CR only before LF (_header_bytes_plain).
_PLAIN_HEADER_BYTES = b"\t\n\r" + bytes(range(0x20, 0x7F))
# A fold right after a parameter's `;`, as email.generator folds a long Content-Type or Content-Disposition.
_PARAMETER_FOLD = re.compile(r";\r?\n(?=[ \t])")
_FOLDABLE = frozenset({"content-type", "content-disposition"})
_PARAMETER = re.compile(r';[ \t]*([A-Za-z]+)[ \t]*=[ \t]*(?:"([^"]+)"|([^ \t;]+))[ \t]*')


def header_and_body(data: bytes) -> tuple[bytes, bytes] | None:
    """Split `data` at its first blank line (email.feedparser's header end), or None where it has none."""
    if data.startswith(b"\n"):
        return b"", data[1:]
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    first = first_blank_line(data)
    if first < 0:
        return None  # headers only: left to the slow path
    # The block runs up to the last field's LF (a CR before it stays, and _store strips it).
    return data[:first], data[first + 2 :] if data[first + 1] == 0x0A else data[first + 3 :]


def first_blank_line(data: bytes) -> int:
    """Return where the first `\\n\\n` or `\\n\\r\\n` starts, or -1: the other searched only before the one found.

    The first line's end says which to look for first: an LF-only email has no
    "\\n\\r\\n" at all, and a CRLF one (as SMTP delivers it) no "\\n\\n", so a
    search for the wrong one would scan the whole body.
    """
    newline = data.find(b"\n")
    usual, other = (b"\n\r\n", b"\n\n") if newline > 0 and data[newline - 1] == 0x0D else (b"\n\n", b"\n\r\n")
    first = data.find(usual)
    if first < 0:
        return data.find(other)
    # A match of the other before this one starts at most one byte before it (and ends within first + 2).
    earlier = data.find(other, 0, first + 2)
    return earlier if earlier >= 0 else first


def without_last_line_end(payload: bytes) -> bytes:
    """Return `payload` without the CRLF or LF that ends it (what `(?:\\r\\n|\\n)\\Z` would cut), if any."""
    if payload.endswith(b"\r\n"):
        return payload[:-2]
    return payload[:-1] if payload.endswith(b"\n") else payload


def _header_bytes_plain(block: bytes) -> bool:
    """Say whether a header block holds only printable ASCII, tabs and line ends, a CR only before an LF.

    A CR ending the block counts as before an LF (the block stops at the LF of
    its blank line). Two scans in C, not a regex tried at every byte.
    """
    block = block.removesuffix(b"\r")
    return not block.translate(None, _PLAIN_HEADER_BYTES) and cr_only_before_lf(block)


def cr_only_before_lf(data: bytes) -> bool:
    """Say whether every CR in `data` is followed by an LF; `find` (memchr) first, as LF-only text has no CR at all.

    Not `b"\\r" in data`: bytes' `in` first tries its operand as an integer, and the TypeError it makes
    and clears costs ~1 k instructions more than the search.
    """
    return data.find(b"\r") < 0 or data.count(b"\r") == data.count(b"\r\n")


def read_fields(
    block: bytes, names: frozenset[str], limits: MailLimits, count: list[int], *, others: bool = False
) -> dict[str, str] | None:
    """Read a header block into its fields (lower-case name -> compat32 value), counting them, or None.

    A field not in `names` declines the block, unless `others`: then it is
    counted (compat32 reads it) and passed over, as nothing here reads it.
    """
    if not _header_bytes_plain(block) or block.startswith((b" ", b"\t")):
        return None
    fields: dict[str, str] = {}
    if not block:
        return fields
    text = block.decode("ascii")
    if "\n " not in text and "\n\t" not in text:
        return _unfolded_fields(text, names, limits, count, others)
    name = ""
    lines: list[str] = []
    read = 0
    for line in text.split("\n"):
        if line[:1] in (" ", "\t"):
            lines.append("\n" + line)
            continue
        if name and not _store(fields, name, lines, names, limits, others):
            return None
        match = _FIELD_NAME.match(line)
        if match is None:
            return None
        read += 1
        name = line[: match.end() - 1]
        lines = [line[match.end() :].lstrip(" \t")]
    if not _store(fields, name, lines, names, limits, others):
        return None
    count[0] += read
    return fields


def _unfolded_fields(
    text: str, names: frozenset[str], limits: MailLimits, count: list[int], others: bool
) -> dict[str, str] | None:
    """Do what read_fields does for a block with no continuation line: one regex scan, not a loop over its lines."""
    pairs = _FIELD_LINE.findall("\n" + text)
    if len(pairs) != text.count("\n") + 1:
        return None  # a line that is not `name: value`
    fields: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key not in names:
            if others:
                continue
            return None
        if key in fields or len(value) > limits.header_size_limit:
            return None
        fields[key] = value
    count[0] += len(pairs)
    return fields


def _store(
    fields: dict[str, str], name: str, lines: list[str], names: frozenset[str], limits: MailLimits, others: bool
) -> bool:
    """Record one field's value as compat32's header_source_parse makes it; False where the slow path must decide."""
    key = name.lower()
    if others and key not in names:
        return True  # read by compat32 (and cut to header_size_limit there), by nothing after it
    # Lines were split on LF, so a CR ending a line sits at its end, before the LF put back in front of the next.
    value = "".join(lines).rstrip("\r\n")
    if key in fields or key not in names or len(value) > limits.header_size_limit:
        return False
    if key in _FOLDABLE and "\n" in value:
        # get_param splits the value at `;` and strips each piece (line ends too), so a fold there reads as a blank.
        value = _PARAMETER_FOLD.sub(";", value)
    if key != "subject" and key != "message-id" and "\n" in value:
        return False  # folded anywhere else: left to email.message
    fields[key] = value
    return True


# A part's parameters (`; charset=utf-8`, a document's `; name=…`) are the same in every email one sender's
# software makes: their reading is kept for the next few, a pure function of the text and the allowed names,
# for texts up to this many characters only (a value may be up to header_size_limit long).
CACHED_PARAMETER_CHARS = 256


def parameters(text: str, allowed: frozenset[str]) -> dict[str, str] | None:
    """Read `; name=value` parameters (already matched as tokens) as email.message's get_param reads them."""
    read = _parameter_pairs_cached if len(text) <= CACHED_PARAMETER_CHARS else _parameter_pairs
    pairs = read(text, allowed)
    return None if pairs is None else dict(pairs)


def _parameter_pairs(text: str, allowed: frozenset[str]) -> tuple[tuple[str, str], ...] | None:
    params: dict[str, str] = {}
    for param in _PARAMETER.finditer(text):
        name = param.group(1).lower()
        if name not in allowed or name in params:
            return None
        params[name] = param.group(2) or param.group(3)
    return tuple(params.items())


_parameter_pairs_cached = functools.lru_cache(maxsize=64)(_parameter_pairs)
