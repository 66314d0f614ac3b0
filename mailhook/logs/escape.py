"""Escaping what peers control before it is logged: `escape`, `escape_lines` (a traceback) and `logfmt` (a value)."""

from __future__ import annotations

_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def escape(text: str) -> str:
    """Return `text` with every non-printable character (controls, DEL, U+2028, lone surrogates) escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_SPECIAL = frozenset(' "=\\')


def logfmt(value: object) -> str:
    """Return `value` as one unambiguous logfmt value: bare when plain, else quoted with `\\` and `"` escaped.

    A peer's value with a space, quote or `=` (`"x status=stored"@example.com`)
    would otherwise read as extra `key=value` fields of the line; quoted, it
    stays one value. Non-printable characters are escaped inside the quotes
    too, so a literal backslash (doubled) never looks like an escape.
    """
    text = "" if value is None else str(value)
    if text and text.isprintable() and _SPECIAL.isdisjoint(text):
        return text
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def escape_lines(text: str) -> str:
    """Escape each line of a multi-line text (a traceback) on its own, keeping the line breaks."""
    return "\n".join(escape(line) for line in text.split("\n"))
