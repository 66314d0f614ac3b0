"""Logging to stderr: one line per record, as text or JSON, so journald does the rest.

Peers control much of what is logged (envelope addresses, Message-IDs, HELO
names, subjects, user names, HTTP paths and headers). The formatters escape
every record's rendered message, so a CR, LF, NUL, other control character,
DEL or invisible line separator (U+2028) shows as a visible escape (`\\r`,
`\\x00`, `\\u2028`) and can never start a forged log line, whichever code
path logged it. A traceback keeps its lines, each escaped on its own.

`setup` routes mailhook's logs; escaping, the formatters, the handler and its
held lines, and `Summary` have a module each, re-exported here on purpose: the
doors, the pipeline and the tests import them as `mailhook.logs.X`.
"""

from __future__ import annotations

import logging

from mailhook.logs.escape import escape, escape_lines, logfmt
from mailhook.logs.formatters import JournalFormatter, JsonFormatter, ProcessId, TextFormatter
from mailhook.logs.handler import HeldLines, StderrHandler, after_lines
from mailhook.logs.summary import Summary

__all__ = [
    "HeldLines",
    "JournalFormatter",
    "JsonFormatter",
    "ProcessId",
    "StderrHandler",
    "Summary",
    "TextFormatter",
    "after_lines",
    "escape",
    "escape_lines",
    "logfmt",
    "setup",
]


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
