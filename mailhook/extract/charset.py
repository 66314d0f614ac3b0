"""Decode a document's bytes by the charset its sender declared, in the order the standards give.

One order serves XML and JSON, bodies POSTed over HTTP and MIME parts alike
(docs/conformance.md):

1. a byte order mark (UTF-8, UTF-16LE/BE, UTF-32LE/BE) — RFC 7303 §3.2 puts
   it above the charset parameter, XML 1.0 Appendix F reads it first, and
   RFC 8259 §8.1 lets a JSON reader accept it;
2. the `charset` parameter of the Content-Type (HTTP header or MIME part);
3. what the bytes say of themselves: the zero bytes among the first four
   (XML 1.0 Appendix F, RFC 4627 §3) tell UTF-16/32 without a BOM, and in an
   ASCII-compatible body an XML declaration's `encoding` (XML 1.0 §4.3.3);
4. UTF-8 (XML 1.0 §4.3.3, RFC 8259 §8.1).

Where a sender breaks these rules in a way the bytes prove (a charset that
contradicts the BOM or the zero bytes, a legacy 8-bit charset over bytes that
are valid multi-byte UTF-8), the bytes win and a note says so. An unknown
charset, or bytes not valid in the charset chosen, raise `Unreadable` naming
both. Decoding is bounded: no charset accepted here yields more characters
than there are bytes, and that is checked.
"""

from __future__ import annotations

import codecs
import functools
import re
from email.message import Message

from mailhook.errors import Unreadable

# Longest BOM first: UTF-32LE's starts with UTF-16LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32LE"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32BE"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16LE"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16BE"),
)
# Python codecs that are no character set a sender can declare (string-literal escapes, domain-name
# encodings): accepting them would let a body pick a transformation instead of a charset.
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"})
_DECLARATION = re.compile(rb"""<\?xml[ \t\r\n][^>]*?encoding[ \t\r\n]*=[ \t\r\n]*["']([A-Za-z0-9._:-]{1,40})["']""")
_UNICODE = ("utf-8", "utf-16", "utf-32")
# The characters an XML or JSON document (RFC 8259: any value) may start with, after a BOM.
_FIRST = frozenset(b'<{[ \t\r\n"-0123456789tfn')
# First bytes of a document with no BOM (every BOM starts with 0x00, 0xEF, 0xFE or 0xFF).
_PLAIN_STARTS = (b"<", b"{", b"[")
_NAMES = {"utf-8": "UTF-8", "utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE", "utf-32-le": "UTF-32LE",
          "utf-32-be": "UTF-32BE", "utf-16": "UTF-16", "utf-32": "UTF-32"}  # fmt: skip


@functools.lru_cache(maxsize=256)
def charset_of(content_type: str | None) -> str | None:
    """Return the `charset` parameter of a Content-Type value (quoted or RFC 2231), or None.

    Cached: a sender posts with one Content-Type, and reading it through `email.message` costs ~30 µs.
    """
    if not content_type or "charset" not in content_type.lower():
        return None
    header = Message()
    header["Content-Type"] = content_type
    return header.get_content_charset() or None


def decode_document(data: bytes, declared: str | None = None) -> tuple[str, list[str]]:
    """Return the text of an XML/JSON document and notes on how its charset was chosen.

    `declared` is the `charset` parameter that came with it (None when none
    did). Raises `Unreadable` for an unknown charset or bytes not valid in
    the charset the rules choose.
    """
    if data[:1] in _PLAIN_STARTS and data[1:2] != b"\x00":
        # The common cases, ahead of the steps that cannot apply: a first byte that starts no BOM and a
        # second that is not zero show neither a BOM nor UTF-16/32 (`_family` would need a zero among the first two).
        if declared is None:
            if data[:1] == b"<":
                return _by_own_declaration(data, [])  # an XML body may still name its encoding in its declaration
            return _decode(data, "utf-8", "UTF-8", data), []
        if _codec(declared, "Content-Type") == "utf-8":
            return _decode(data, "utf-8", "UTF-8 (Content-Type charset)", data), []
    return _decode_by_rules(data, declared)


def _decode_by_rules(data: bytes, declared: str | None) -> tuple[str, list[str]]:
    """Decode as `decode_document` does, every step in the module's order (its common cases answer the same)."""
    notes: list[str] = []
    charset = _codec(declared, "Content-Type") if declared else None
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            if charset is not None and not _fits(charset, codec):
                notes.append(f"Content-Type says charset={declared} but the body starts with a {name} byte order"
                             f" mark; read as {name} (RFC 7303 §3.2: the BOM comes first)")
            return _decode(data[len(bom):], codec, f"{name} (byte order mark)", data), notes
    family = _family(data)
    if charset is not None:
        if family is not None and not _fits(charset, family):
            notes.append(f"Content-Type says charset={declared} but the body's zero bytes show"
                         f" {_NAMES[family]}; read as {_NAMES[family]}")
        elif family is None and charset in ("utf-16", "utf-32", "utf-16-le", "utf-16-be", "utf-32-le",
                                            "utf-32-be") and _ascii_start(data):
            notes.append(f"Content-Type says charset={declared} but the body starts with a plain"
                         " ASCII character; read by its own declaration or as UTF-8")
        else:
            codec = _endian(charset, family)
            label = f"{_NAMES.get(codec, declared)} (Content-Type charset)"
            return _legacy_or_utf8(data, codec, label, notes), notes
    if family is not None:
        text = _decode(data, family, f"{_NAMES[family]} (found from its zero bytes)", data)
        return text, notes
    return _by_own_declaration(data, notes)


def _by_own_declaration(data: bytes, notes: list[str]) -> tuple[str, list[str]]:
    """Decode bytes with no BOM, charset or zero bytes to go by: by their XML declaration's encoding, else UTF-8."""
    found = _DECLARATION.match(data.lstrip(b" \t\r\n"))
    if found is not None:
        name = found.group(1).decode("ascii")
        codec = _codec(name, "XML declaration")
        if codec in ("utf-16", "utf-32", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            # The declaration was read as ASCII, so these bytes are no UTF-16/32 (Appendix F).
            notes.append(f"XML declaration says encoding={name} but the body is ASCII-compatible; read as UTF-8")
            return _decode(data, "utf-8", "UTF-8", data), notes
        return _legacy_or_utf8(data, codec, f"{name} (XML declaration)", notes), notes
    try:
        return _decode(data, "utf-8", "UTF-8", data), notes
    except Unreadable:
        if _kind(data) != "body":
            raise
    # Bytes that are no text at all and start like no document: say that, as the format sniff would.
    head = data.lstrip(b" \t\r\n\xef\xbb\xbf")[:1].decode("latin-1")
    raise Unreadable(f"not XML or JSON: document starts with {head!r}")


@functools.lru_cache(maxsize=64)  # a sender declares the same few charsets; an unknown one raises, never cached
def _codec(name: str, where: str) -> str:
    """Return Python's name for a declared charset, or raise `Unreadable` naming it and where it came from."""
    label = name.strip().strip("\"'").strip()
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        raise Unreadable(f"unknown charset {label[:40]!r} declared in the {where}") from None
    codec = info.name
    if codec in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        raise Unreadable(f"{label[:40]!r} declared in the {where} is not a character set")
    return codec


def _fits(charset: str, codec: str) -> bool:
    """Say whether a declared charset agrees with the Unicode encoding the bytes show."""
    if charset == codec:
        return True
    return charset in _UNICODE and codec.startswith(charset)


def _family(data: bytes) -> str | None:
    """Name the UTF-16/32 encoding the zero bytes among the first four show (Appendix F), or None.

    The one non-zero byte of the first character must be one a document can
    start with, as Appendix F's and RFC 4627's patterns assume: arbitrary
    bytes with a zero among them are no UTF-16.
    """
    head = data[:4]
    if len(head) < 2 or b"\x00" not in head:
        return None
    zeros = tuple(b == 0 for b in head)
    if len(head) == 4:
        if zeros == (True, True, True, False) and head[3] in _FIRST:
            return "utf-32-be"
        if zeros == (False, True, True, True) and head[0] in _FIRST:
            return "utf-32-le"
        if (zeros == (True, True, False, True) and head[2] in _FIRST) or (
            zeros == (True, False, True, True) and head[1] in _FIRST
        ):
            raise Unreadable("body is UCS-4 in an unusual byte order (2143 or 3412, XML 1.0 Appendix F);"
                             " not supported")
    if zeros[:2] == (True, False) and head[1] in _FIRST:
        return "utf-16-be"
    if zeros[:2] == (False, True) and head[0] in _FIRST:
        return "utf-16-le"
    return None


def _ascii_start(data: bytes) -> bool:
    return data[:1] in (b"<", b"{", b"[", b" ", b"\t", b"\r", b"\n")


def _endian(charset: str, family: str | None) -> str:
    """Give a declared UTF-16/32 without a BOM its byte order: the zero bytes', else big-endian (RFC 2781 §4.3)."""
    if charset in ("utf-16", "utf-32"):
        return family if family is not None else f"{charset}-be"
    return charset


def _legacy_or_utf8(data: bytes, codec: str, label: str, notes: list[str]) -> str:
    """Decode by a declared charset; a legacy 8-bit one over valid multi-byte UTF-8 is read as UTF-8, noted."""
    if codec != "utf-8" and not codec.startswith(("utf-16", "utf-32")) and not data.isascii():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            notes.append(f"declared {label} but the bytes are valid UTF-8 with multi-byte characters;"
                         " read as UTF-8")
            return text
    return _decode(data, codec, label, data)


def _decode(data: bytes, codec: str, label: str, whole: bytes) -> str:
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        offset = len(whole) - len(data) + exc.start
        raise Unreadable(f"{_kind(whole)} is not valid {label}: {exc.reason} at byte {offset}") from None
    except UnicodeError as exc:
        raise Unreadable(f"{_kind(whole)} cannot be decoded as {label}: {exc}") from None
    if len(text) > len(data):
        # No character set encodes a character in less than a byte; a codec that seems to is refused.
        raise Unreadable(f"decoding as {label} gave more characters than bytes; not read")
    return text


def _kind(data: bytes) -> str:
    """Name what the bytes look like, for a reason: 'JSON', 'XML', or 'body' (not a format decision)."""
    head = data.lstrip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe")[:1]
    return "XML" if head == b"<" else "JSON" if head in (b"{", b"[") else "body"


def decode_part(data: bytes, charset: object) -> str:
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

