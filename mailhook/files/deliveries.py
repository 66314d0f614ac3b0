"""The file door's reading side: `deliveries` turns paths (.eml, mbox, Maildir, .xml, .json, stdin) into deliveries."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mailhook.models import Delivery, Kind, kind_of

_MBOXRD_QUOTED = re.compile(rb"^>(>*From )", re.MULTILINE)
_DOCUMENT_SUFFIXES = {".xml": "document", ".json": "document"}


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An input that could not even be read (missing, unreadable, too large): nothing is stored."""

    source: str
    reason: str


def deliveries(
    paths: list[str], *, received_at: str, max_size: int, stdin: BinaryIO | None = None
) -> Iterator[Delivery | Unreadable]:
    """Yield one delivery per message found under `paths` (`-` reads one message from stdin)."""
    for name in paths:
        if name == "-":
            if stdin is None:
                yield Unreadable("-", "no standard input")
                continue
            raw, sender = _envelope_line(stdin.read(max_size + 1))
            yield _checked(raw, "-", received_at, max_size, envelope_from=sender)
            continue
        path = Path(name)
        try:
            if path.is_dir():
                yield from _directory(path, received_at=received_at, max_size=max_size)
            else:
                yield from _file(path, received_at=received_at, max_size=max_size)
        except OSError as exc:
            yield Unreadable(name, exc.strerror or str(exc))


def _checked(raw: bytes, source: str, received_at: str, max_size: int, kind: Kind | None = None,
             envelope_from: str | None = None) -> Delivery | Unreadable:
    if len(raw) > max_size:
        return Unreadable(source, f"larger than the limit of {max_size} bytes")
    return Delivery(
        channel="file",
        raw=raw,
        received_at=received_at,
        kind=kind or kind_of(raw),
        source=source,
        envelope_from=envelope_from,
    )


def _envelope_line(raw: bytes) -> tuple[bytes, str | None]:
    """Split off the `From sender date` line an MTA pipe (Postfix flag F, procmail) puts first."""
    if not raw.startswith(b"From "):
        return raw, None
    line, _, rest = raw.partition(b"\n")
    sender = line[5:].split(b" ", 1)[0].decode("ascii", "replace").strip()
    return rest, sender or None


def _directory(path: Path, *, received_at: str, max_size: int) -> Iterator[Delivery | Unreadable]:
    if all((path / sub).is_dir() for sub in ("cur", "new")):
        folders = [path / "new", path / "cur"]
        for folder in folders:
            for entry in sorted(folder.iterdir()):
                if entry.is_file() and not entry.name.startswith("."):
                    yield from _file(entry, received_at=received_at, max_size=max_size, kind="email")
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                yield from _file(Path(root) / name, received_at=received_at, max_size=max_size)


def _file(
    path: Path, *, received_at: str, max_size: int, kind: Kind | None = None
) -> Iterator[Delivery | Unreadable]:
    with path.open("rb") as fh:
        head = fh.read(5)
        fh.seek(0)
        if kind is None and head == b"From ":
            yield from _mbox(fh, str(path), received_at=received_at, max_size=max_size)
            return
        size = os.fstat(fh.fileno()).st_size
        if size > max_size:
            yield Unreadable(str(path), f"larger than the limit of {max_size} bytes")
            return
        raw = fh.read()
    if kind is None:
        kind = "document" if path.suffix.lower() in _DOCUMENT_SUFFIXES else kind_of(raw)
    yield _checked(raw, str(path), received_at, max_size, kind)


def _mbox(fh: BinaryIO, name: str, *, received_at: str, max_size: int) -> Iterator[Delivery | Unreadable]:
    """Split an mbox on its `From ` lines, streaming, and undo mboxrd `>From ` quoting.

    A line starting `From ` begins a message when it is the first line or
    follows a blank one. The file is read in large blocks searched with
    `bytes.find`, not line by line; a message over `max_size` is counted, not held.
    """
    buf = b"\n"  # a newline before the first byte: a first line starting "From " begins a message
    eof = False
    number = 0
    sender: str | None = None
    start = body = 0  # where the current message's "From " line and its bytes begin in buf
    dropped = 0  # bytes of the current message let go because it is too large to store
    search = 0
    while True:
        i = buf.find(b"\nFrom ", search)
        end = -1 if i < 0 else buf.find(b"\n", i + 6)
        if (i < 0 or end < 0) and not eof:
            if i < 0:
                if number and len(buf) - body > max_size + 16:
                    dropped += len(buf) - 8 - body
                    start = body = len(buf) - 8
                elif not number:
                    start = max(0, len(buf) - 8)
                search = max(search, len(buf) - 5)
            chunk = fh.read(_BLOCK)
            eof = not chunk
            # One copy per block: keep only the unfinished message.
            buf = buf[start:] + chunk
            search -= start
            body -= start
            start = 0
            continue
        if i < 0:
            break
        if i and buf[i - 1] != 10 and not (buf[i - 1] == 13 and buf[i - 2] == 10):
            search = i + 1  # "From " inside a message: the line before it is not blank
            continue
        line_end = end + 1 if end >= 0 else len(buf)
        if number:
            yield _message(buf[body : i + 1], dropped, f"{name}#{number}", received_at, max_size, sender)
        number += 1
        sender = buf[i + 6 : line_end].split(b" ", 1)[0].decode("ascii", "replace").strip() or None
        start, body, dropped = i + 1, line_end, 0
        search = end if end >= 0 else len(buf)
    if number:
        yield _message(buf[body:], dropped, f"{name}#{number}", received_at, max_size, sender)


_BLOCK = 1 << 20


def _message(
    raw: bytes, dropped: int, source: str, received_at: str, max_size: int, sender: str | None
) -> Delivery | Unreadable:
    # The blank line before the next "From " belongs to the mbox, not the message.
    if raw.endswith(b"\n") and (len(raw) == 1 or raw[-2] == 10):
        raw = raw[:-1]
    elif raw.endswith(b"\r\n") and (len(raw) == 2 or raw[-3] == 10):
        raw = raw[:-2]
    if dropped + len(raw) > max_size:
        return Unreadable(source, f"larger than the limit of {max_size} bytes")
    if b">From " in raw:  # every quoted line holds one; most messages have none, so skip the regex
        raw = _MBOXRD_QUOTED.sub(rb"\1", raw)
    return _checked(raw, source, received_at, max_size, "email", sender)
