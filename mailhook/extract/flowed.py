"""Undo RFC 3676 `format=flowed`: join soft-broken lines back into the paragraphs the sender wrote.

A flowed line ends in a space; it continues on the next line of the same
quote depth. `DelSp=yes` says that space was added by the wrapping and is
removed when the lines are joined (RFC 3676 §4.2); with `DelSp=no` it is part
of the text. A leading space is space-stuffing and is removed (§4.4). The
signature separator `-- ` is never flowed (§4.3). A flowed line followed by a
line of another quote depth, or by the end of the text, is read as fixed
(§4.5). Quoted paragraphs keep one `>` per level and a space, which the
quote-prefix removal downstream reads like any other quote.
"""

from __future__ import annotations

import re

_LINE_END = re.compile(r"\r?\n")
_SIGNATURE = "-- "


def unflow(text: str, *, delsp: bool) -> str:
    """Return `text` (a format=flowed body) with every soft line break undone."""
    out: list[str] = []
    paragraph: list[str] = []
    depth_open = -1  # the quote depth of the paragraph being joined, -1 when none is open
    lines = _LINE_END.split(text)
    ends_with_break = len(lines) > 1 and lines[-1] == ""
    for raw in lines[:-1] if ends_with_break else lines:
        depth = len(raw) - len(raw.lstrip(">"))
        line = raw[depth:]
        if line.startswith(" "):
            line = line[1:]  # space-stuffing (and the space after quote marks some clients add)
        if paragraph and depth != depth_open:
            out.append(_quoted(depth_open, "".join(paragraph)))  # a flowed line before another depth is fixed
            paragraph = []
        flowed = line.endswith(" ") and line != _SIGNATURE
        if flowed and delsp:
            line = line[:-1]
        paragraph.append(line)
        depth_open = depth
        if not flowed:
            out.append(_quoted(depth, "".join(paragraph)))
            paragraph = []
    if paragraph:
        out.append(_quoted(depth_open, "".join(paragraph)))
    return "\n".join(out) + ("\n" if ends_with_break else "")


def _quoted(depth: int, text: str) -> str:
    return f"{'>' * depth} {text}" if depth else text
