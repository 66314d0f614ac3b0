"""The formatters of a log line: text, text for journald (with its priority) and JSON, each escaping the message."""

from __future__ import annotations

import logging
import os
import weakref
from datetime import UTC, datetime
from typing import Any

from mailhook.logs.escape import escape, escape_lines
from mailhook.models import json_encoder


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


_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(TextFormatter):
    """Prefix each line with its syslog priority (`<4>`), which journald turns into the entry's level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        # journald reads the prefix per line; a traceback's lines must keep the level too.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))
