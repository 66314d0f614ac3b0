"""Logging to stderr: one line per record, as text or JSON, so journald does the rest."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object, with a delivery's fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        delivery = getattr(record, "delivery", None)
        fields = getattr(delivery, "fields", None)
        if callable(fields):
            data.update(fields())
        elif isinstance(delivery, dict):
            data.update(delivery)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler bound to whatever `sys.stderr` is at the time of each record."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority (`<4>`), which journald turns into the entry's level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        # journald reads the prefix per line; a traceback's lines must keep the level too.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


def setup(level: str, fmt: str, *, journal: bool = False) -> None:
    """Route mailhook's logs to stderr at `level` in `fmt` (text or json); idempotent.

    With `journal` (stderr is connected to journald), text lines carry their
    syslog priority so `journalctl -p warning` finds warnings and errors.
    """
    handler = StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald adds its own timestamp; a terminal user still wants the level.
        text = "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(JournalFormatter(text) if journal else logging.Formatter(text))
    root = logging.getLogger("mailhook")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
