"""Undo the ways a forwarded or replied-to notification is wrapped in a plain-text part: `>` prefixes, forward headers.

Pure text work for `mailhook.extract.embedded` and `mailhook.extract.mail`.
"""

from __future__ import annotations

import re

_FORWARD_MARK = re.compile(
    r"^[ \t]*(?:-{3,}\s*(?:Forwarded message|Original Message)\s*-*|Begin forwarded message:)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_FORWARD_HEADER = re.compile(r"^[ \t]*(?:From|Date|Sent|Subject|To|Cc|Reply-To)[ \t]*:", re.IGNORECASE)
# A `^` pattern under MULTILINE is tried at every character; these find the same
# lines by searching for the newline before them (a literal prefix the engine skips to).
_FORWARD_HINT = re.compile(r"\n[ \t]*(?:---|[Bb])")  # every _FORWARD_MARK line after the first begins so
FORWARD_HINTS_TRIED = 8
_QUOTED_FIRST = re.compile(r"[ \t]*>")
_QUOTED_NEXT = re.compile(r"\n[ \t]*>")
QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+[ \t]?", re.MULTILINE)
# A quoted line that carries a notification: a `Field: value` line or the start of a document. Only then is
# the text a quoted notification; a lone `>` line in an unquoted body is the body's own text (a wrapped
# message's continuation can start with `>>`), and unquoting it would cut the value.
_QUOTED_CONTENT = re.compile(r"^(?:[ \t]*>)+[ \t]*(?:[A-Za-z][A-Za-z0-9 _/-]{0,40}:|<|\{)", re.MULTILINE)


def clean_text(text: str) -> str:
    """Remove inline-forward header blocks and `>` quote prefixes from a plain-text part that quotes a notification."""
    if has_quoted_line(text) and _QUOTED_CONTENT.search(text) is not None:
        text = QUOTE_PREFIX.sub("", text)
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


def has_quoted_line(text: str) -> bool:
    """Say whether a line starts with `>` (after blanks), as `re.search("^[ \\t]*>", text, re.M)` would."""
    # Most parts quote nothing: a text without ">" is told by one scan in C, not a regex search stopping at every line.
    return ">" in text and (_QUOTED_FIRST.match(text) is not None or _QUOTED_NEXT.search(text) is not None)


def _has_forward_mark(text: str) -> bool:
    """Say whether `_FORWARD_MARK.search(text)` matches, running it only where a mark line may start."""
    # Every mark holds "---" or "forwarded" in some case, and IGNORECASE takes only the two ASCII cases of
    # these letters (unlike "s", "i" and "k": U+017F, U+0131, U+212A; tested), which lower() maps one to one:
    # most texts are told by two scans in C, without a regex step at each hinted line.
    if "---" not in text and "forwarded" not in text.lower():
        return False
    if _FORWARD_MARK.match(text) is not None:
        return True
    # Tried only at the hinted lines (`^` holds right after their newline): a search of the whole text
    # tries `^` at every character once any line begins with "B" ("Billed Amount:", "Broadcast …").
    # Past a few hints, one search from the current one (every mark before it was tried), so that a text
    # of a million "B" lines costs one pass in C, not a Python step per line.
    for n, hint in enumerate(_FORWARD_HINT.finditer(text)):
        if n == FORWARD_HINTS_TRIED:
            return _FORWARD_MARK.search(text, hint.start()) is not None
        if _FORWARD_MARK.match(text, hint.start() + 1) is not None:
            return True
    return False
