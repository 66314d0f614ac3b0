"""Logging to stderr: one line per record, as text or JSON, so journald does the rest.

Peers control much of what is logged (envelope addresses, Message-IDs, HELO
names, subjects, user names, HTTP paths and headers). The formatters escape
every record's rendered message, so a CR, LF, NUL, other control character,
DEL or invisible line separator (U+2028) shows as a visible escape (`\\r`,
`\\x00`, `\\u2028`) and can never start a forged log line, whichever code
path logged it. A traceback keeps its lines, each escaped on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mailhook.models import json_encoder

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


class ProcessId:
    """This process's id, read once (a system call) and read again in the child of a fork."""

    __slots__ = ("__weakref__", "value")

    def __init__(self) -> None:
        self.value = os.getpid()
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reread(this))


def _reread(pid: weakref.ref[ProcessId]) -> None:
    found = pid()
    if found is not None:
        found.value = os.getpid()


class TextFormatter(logging.Formatter):
    """The text format: the message escaped onto one line; a traceback after it, each line escaped.

    With `pid`, a record's `process` is this process's id, read once: `setup`
    turns off `logging.logProcesses`, the `getpid` each record made.
    """

    def __init__(self, fmt: str | None = None, *, pid: bool = False) -> None:
        super().__init__(fmt)
        self.pid = ProcessId() if pid else None

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        if self.pid is not None:
            record.process = self.pid.value
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return escape_lines(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object, with a delivery's fields at the top level (and the pid, if asked)."""

    def __init__(self, *, pid: bool = False) -> None:
        super().__init__()
        self.pid = ProcessId() if pid else None

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": escape(record.getMessage()),
        }
        if self.pid is not None:
            data["pid"] = self.pid.value
        delivery = getattr(record, "delivery", None)
        fields = getattr(delivery, "fields", None)
        if callable(fields):
            data.update(_escape_values(fields()))
        elif isinstance(delivery, dict):
            data.update(_escape_values(delivery))
        if record.exc_info:
            data["exception"] = escape_lines(self.formatException(record.exc_info))
        return _JSON_ENCODE(data)


# What `json.dumps(data, default=str)` writes, its encoder made once instead of per record.
_JSON_ENCODE = json_encoder(default=str, ensure_ascii=True, separators=(", ", ": "))


def _escape_values(fields: dict[str, object]) -> dict[str, object]:
    return {key: escape(value) if isinstance(value, str) else value for key, value in fields.items()}


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler bound to whatever `sys.stderr` is at the time of each record.

    In a thread that holds its lines (`HeldLines`), a record is formatted at once
    but kept until the hold ends, then written with the others in one write.
    """

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass

    def handle(self, record: logging.LogRecord) -> bool:
        # logging.Handler.handle's own steps, without its second frame per record.
        rv: object = self.filter(record)  # bool, or from Python 3.12 a record
        if not rv:
            return False
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may hand back a record to log instead
            record = rv
        held = _held.get(threading.get_ident()) if _held else None
        if held is None:
            self.acquire()
            try:
                self.emit(record)
            finally:
                self.release()
            return True
        # Held: formatted in this thread without the handler's lock, which guards only the stream.
        try:
            held.lines.append((self, self.format(record) + self.terminator, record))
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: told, never raised into the caller
            self.handleError(record)
        return True

    def write_held(self, text: str, record: logging.LogRecord) -> None:
        """Write lines formatted while held, in one write, as `emit` writes one (`record`: the last of them)."""
        self.acquire()
        try:
            stream: Any = self.stream
            stream.write(text)
            self.flush()
        except Exception:  # noqa: BLE001 - as StreamHandler.emit
            self.handleError(record)
        finally:
            self.release()


# The batch each holding thread keeps, by thread id: empty (one truth test) while no thread holds lines.
_held: dict[int, _Batch] = {}


class _Batch:
    """The lines a thread holds, per handler in order, and what waits for them to be written."""

    __slots__ = ("after", "lines")

    def __init__(self) -> None:
        self.lines: list[tuple[StderrHandler, str, logging.LogRecord]] = []
        self.after: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def write(self) -> None:
        """Write the held lines, each handler's in one write (in order), then run what waited for them."""
        lines = self.lines
        start = 0
        while start < len(lines):
            handler = lines[start][0]
            end = start + 1
            while end < len(lines) and lines[end][0] is handler:
                end += 1
            handler.write_held("".join(line for _, line, _ in lines[start:end]), lines[end - 1][2])
            start = end
        for call, args in self.after:
            try:
                call(*args)
            except Exception:  # as a future's done-callback: logged, the rest still run
                logging.getLogger("mailhook").exception("exception calling %r after writing log lines", call)


class HeldLines:
    """Keep the lines this thread logs through `StderrHandler` until the block ends, then write them in one write.

    The writer thread holds the lines of a batch it answers: one write (a
    system call) for the batch instead of one per delivery. What must not
    happen before its line is written (a delivery's answer) is deferred with
    `after_lines`. Nested: only the outermost hold writes.
    """

    __slots__ = ("batch",)

    def __enter__(self) -> None:
        thread = threading.get_ident()
        self.batch = None if thread in _held else _Batch()
        if self.batch is not None:
            _held[thread] = self.batch

    def __exit__(self, *exc: object) -> None:
        if self.batch is not None:
            del _held[threading.get_ident()]
            self.batch.write()


def after_lines(call: Callable[..., object], *args: object) -> None:
    """Call `call(*args)` once the lines this thread holds are written; at once when it holds none."""
    held = _held.get(threading.get_ident()) if _held else None
    if held is None:
        call(*args)
    else:
        held.after.append((call, args))


_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(TextFormatter):
    """Prefix each line with its syslog priority (`<4>`), which journald turns into the entry's level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        # journald reads the prefix per line; a traceback's lines must keep the level too.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


def setup(level: str, fmt: str, *, journal: bool = False, pid: bool = False) -> None:
    """Route mailhook's logs to stderr at `level` in `fmt` (text or json); idempotent.

    With `journal` (stderr is connected to journald), text lines carry their
    syslog priority so `journalctl -p warning` finds warnings and errors.
    With `pid` (a worker of `serve --workers N`), every line names its process.
    """
    handler = StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(pid=pid))
    else:
        # journald adds its own timestamp; a terminal user still wants the level. A worker's pid
        # goes before the logger's name, so `mailhook.ingest: delivery` reads the same from any process.
        text = "%(levelname)s " + ("[%(process)d] " if pid else "") + "%(name)s: %(message)s"
        handler.setFormatter(JournalFormatter(text, pid=pid) if journal else TextFormatter(text, pid=pid))
    # No format here prints a record's thread, thread name or process name, and a worker's pid comes
    # from its formatter (`ProcessId`): a record need not look them up (a `getpid` system call,
    # `threading.current_thread()`, `multiprocessing.current_process()` each).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False
    root = logging.getLogger("mailhook")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class Summary:
    """Log the first of a kind of event at once, then at most one line per interval counting the rest.

    A flood of refusals or accept failures would otherwise fill the journal
    with one line (or one traceback) each; this keeps it to one line per
    `interval` for as long as the flood lasts. Must be used on the event loop.
    """

    def __init__(self, logger: logging.Logger, level: int, what: str, interval: float = 60.0) -> None:
        self.logger = logger
        self.level = level
        self.what = what
        self.interval = interval
        self.more = 0
        self.last = ""
        self._window: asyncio.TimerHandle | None = None

    def note(self, message: str, *args: object) -> None:
        """Record one event: logged now if none was in the last interval, else counted for the summary."""
        if self._window is None:
            self.logger.log(self.level, message, *args)
            self._window = asyncio.get_running_loop().call_later(self.interval, self._flush)
            return
        self.more += 1
        self.last = message % args if args else message

    def _flush(self) -> None:
        self._window = None
        if self._summarise():
            # Still flooding: keep counting, one line per interval.
            self._window = asyncio.get_running_loop().call_later(self.interval, self._flush)

    def _summarise(self) -> bool:
        if not self.more:
            return False  # quiet for a whole interval: the next event is logged at once
        self.logger.log(self.level, "%s: %d more in the last %g s (the last: %s)",
                        self.what, self.more, self.interval, self.last)
        self.more = 0
        return True

    def close(self) -> None:
        """Log what is still counted and stop the timer."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
            self._summarise()
