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
        if isinstance(delivery, dict):
            data.update(delivery)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler bound to whatever `sys.stderr` is at the time of each record."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup(level: str, fmt: str) -> None:
    """Route mailhook's logs to stderr at `level` in `fmt` (text or json); idempotent."""
    handler = StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald adds its own timestamp; a terminal user still wants the level.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("mailhook")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
