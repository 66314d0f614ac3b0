"""aiosmtpd's per-message work done cheaper, with the same results: bodies, addresses, hook names.

aiosmtpd reads DATA one line at a time, runs the full RFC 5322 address
parser on every MAIL and RCPT, and lists a session's attributes with `dir()`
on every connection; together that was most of the SMTP door's own CPU. The
door (`mailhook.smtp.door`) uses these instead, and falls back to aiosmtpd
wherever an input is not the plain common case.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailhook.budget import InflightHold

# `<local@domain>` with both parts plain dot-atoms (ASCII, no quoting, comments,
# literals or encoded words): what the standard library's address parser would
# return unchanged, so it is taken as it is.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_ANGLE_ADDR = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*)>", re.ASCII)


# The longest SIZE value read here: far past any size limit, and short of Python's cap on int() digits.
_SIZE_DIGITS = 18


def plain_mail_options(rest: str, size_limit: int, body: bool, smtputf8: bool) -> tuple[list[str], bool] | None:
    """Return MAIL's parameters as aiosmtpd stores them, and whether SMTPUTF8 is one, when it would take them all.

    `rest` is what follows the address. Taken are SIZE=digits (not past
    `size_limit`, 0 for none), BODY=7BIT or 8BITMIME (when `body`: aiosmtpd
    reads BODY only without decode_data) and SMTPUTF8 (when `smtputf8`), each
    at most once, in any case, as the parameters clients send. Anything else,
    refused or not (a duplicate, a value aiosmtpd refuses, an unknown name,
    non-ASCII text), gives None: aiosmtpd's own method answers it.
    """
    if not rest.isascii():  # str.upper() and str.isdigit() go beyond ASCII; aiosmtpd's method sees those
        return None
    options = rest.upper().split()  # exactly aiosmtpd's mail_options
    seen: set[str] = set()
    for option in options:
        name, _, value = option.partition("=")
        if name in seen:
            return None
        seen.add(name)
        if name == "SIZE":
            if not value.isdigit() or len(value) > _SIZE_DIGITS or (size_limit and int(value) > size_limit):
                return None
        elif name == "BODY":
            if not body or value not in ("7BIT", "8BITMIME"):
                return None
        elif option != "SMTPUTF8" or not smtputf8:
            return None
    return options, "SMTPUTF8" in seen


def unreadable_size(arg: str) -> bool:
    """Say whether MAIL's arguments hold a SIZE value `str.isdigit` takes but `int` cannot read ("²", "①").

    aiosmtpd's smtp_MAIL checks SIZE with `isdigit()`, then calls `int()` on it,
    which raises for digits that are not decimal ones: the session would answer
    451 and log a traceback, a log line a client could repeat at will.
    """
    for option in arg.upper().split():
        name, _, value = option.partition("=")
        if name == "SIZE" and value.isdigit() and not value.isdecimal():
            return True
    return False


_hook_names: dict[type, list[str]] = {}


def hook_names(cls: type) -> list[str]:
    """Return the attributes of `cls` that aiosmtpd looks up by prefix: commands, AUTH mechanisms and hooks."""
    names = _hook_names.get(cls)
    if names is None:
        names = _hook_names[cls] = [name for name in dir(cls) if name.startswith(("smtp_", "auth_", "handle_"))]
    return names


TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH = "552 Error: Too much mail data"
# The in-flight budget is spent (parsing.inflight_budget): temporary, the sender retries (Postfix's answer
# when its queue file system is short of space).
NO_ROOM = "452 4.3.1 Insufficient system storage"


# The end of DATA: the CRLF ending the last line, a lone dot, CRLF (the DATA line's CRLF precedes the body).
END = b"\r\n.\r\n"


async def read_body(
    reader: asyncio.StreamReader, line_limit: int, size_limit: int, hold: InflightHold | None = None,
) -> tuple[bytes, str | None]:
    """Read a DATA body through its lone-dot line: the content (dots unstuffed), or the reply refusing it.

    The replies and the content are aiosmtpd's, but the body is found by
    searching the stream for the whole end marker (`END`) rather than reading
    it one line at a time (the door's largest CPU cost per message;
    docs/performance.md, "Where the code is shaped for speed"): two reads for a body within the stream limit whose
    first line holds three characters or more (an email's starts with a
    header), and the dots unstuffed once on the whole body; only a body too big for the
    limits is checked line by line. Each block is counted in `hold` (the
    server's in-flight budget) as it arrives; one that does not fit refuses
    the message with `NO_ROOM`, and the rest of it is read and dropped. A
    refused message gives its bytes back at once.
    """
    data = bytearray()
    refusal: str | None = None
    chunk = b""
    tail = END[:2]  # the stream's last (up to 5) bytes: at first, the DATA line's CRLF
    may_peek = True
    try:
        while True:
            overran = False
            # Every read stops at the marker's end at the latest, so a client's pipelined next command stays unread.
            # With none of the marker pending, a search for all of it; with its start pending (the body's start, a
            # block ending in CRLF), a search for it would wait past it: "\r\n." or "\r\n.\r" is completed by the
            # next 2 or 1 bytes, read exactly; "\r\n" (CRLF) is peeked at with 3 bytes, but only at the start or
            # after a search for the whole marker, else (or after "\r") a block through the next ".\r\n" is read
            # as before this search: so a peek follows only the start or a search (whose block, unless it ends the
            # body, is past the stream limit), and no body is read a few bytes at a time however its lines are cut.
            pending = _pending(tail)
            if pending >= 3 or (pending == 2 and may_peek):
                chunk = await reader.readexactly(len(END) - pending)
            else:
                try:
                    chunk = await reader.readuntil(END[2:] if pending else END)
                except asyncio.LimitOverrunError as exc:
                    chunk, overran = await reader.read(exc.consumed), True
            may_peek = not pending
            tail = (tail + chunk[-5:])[-5:]
            ended = tail == END
            if refusal is None:
                if hold is not None and not hold.grow(len(chunk)):
                    refusal = NO_ROOM
                    data = bytearray()  # a new buffer: the big one is freed now, not at the end of DATA
                    hold.close()
                else:
                    data += chunk
                    if not ended and ((size_limit and len(data) > size_limit + line_limit + 2) or (
                        overran and _open_line(data) > line_limit + 1
                    )):
                        # Over one limit or the other, so refused whatever follows: stop keeping it.
                        refusal = first_refusal(data, line_limit, size_limit)
                        assert refusal is not None
                        data = bytearray()
                        if hold is not None:
                            hold.close()
            if ended:
                break
        if refusal is None and len(data) > min(line_limit, size_limit or line_limit):
            refusal = first_refusal(data[:-3], line_limit, size_limit)
        if refusal is not None:
            if hold is not None:
                hold.close()
            return b"", refusal
        # Unstuffed in place where possible: at most one copy of a big body besides the one returned.
        del data[-3:]
        if data.startswith(b"."):
            del data[:1]
        if b"\r\n." in data:
            data = data.replace(b"\r\n.", b"\r\n")
        return bytes(data), None
    finally:
        # A session closed mid-DATA raises here, and the cancelled task's traceback keeps this frame until the
        # next garbage collection: free the buffers now.
        data = bytearray()
        chunk = b""


def whole_body(data: bytes, limit: int) -> bytes | None:
    """Return the content `read_body` would return for `data`, when `data` is a whole body it accepts; else None.

    That is: `data` (what follows DATA's line) ends with the body's end
    (`END`, the DATA line's CRLF counting at its start) and holds nothing
    after it, and is no longer than `limit`, the smaller of the line and size
    limits, so no limit can refuse it. Anything else (more after the end, an
    unfinished body, a longer one) gives None: `read_body` reads it.
    """
    if len(data) > limit:
        return None
    if data.endswith(END):
        if data.find(END) != len(data) - len(END) or data.startswith(b".\r\n"):
            return None
    elif data != b".\r\n":
        return None
    content = data[:-3]
    if content.startswith(b"."):
        content = content[1:]
    if b"\r\n." in content:
        content = content.replace(b"\r\n.", b"\r\n")
    return content


def _pending(tail: bytes) -> int:
    """Return how many of `END`'s first bytes `tail` ends with, short of all of it (0 to 4)."""
    last = tail[-1:]
    if last == b"\r":
        return 4 if tail.endswith(b"\r\n.\r") else 1
    if last == b"\n":
        return 2 if tail.endswith(b"\r\n") else 0
    if last == b".":
        return 3 if tail.endswith(b"\r\n.") else 0
    return 0


def _open_line(data: bytearray) -> int:
    """Return the length of the last, unfinished line of `data`."""
    end = data.rfind(b"\r\n")
    return len(data) if end < 0 else len(data) - end - 2


def first_refusal(data: bytes | bytearray, line_limit: int, size_limit: int) -> str | None:
    """Replay aiosmtpd's line-by-line checks on `data`: the first limit it breaks, as the reply, or None.

    A line longer than `line_limit` + 2 overruns the stream reader before its
    bytes are counted; a shorter one is counted first. The last piece, if it
    has no CRLF yet, overruns once it holds more than `line_limit` + 1 bytes.
    """
    start = 0
    # Line by line with find(), not split(): a list of every line would double the memory of a big body.
    while (end := data.find(b"\r\n", start)) >= 0:
        length, start = end + 2 - start, end + 2
        if length > line_limit + 2:
            return TOO_LONG
        if size_limit and start > size_limit:
            return TOO_MUCH
        if length > line_limit:
            return TOO_LONG
    return TOO_LONG if len(data) - start > line_limit + 1 else None
