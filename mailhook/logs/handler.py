"""`StderrHandler`, which writes to stderr, and `HeldLines`, which keeps a thread's lines for one write."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any


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
