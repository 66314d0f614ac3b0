"""Helpers for the SMTP door tests: clients, notification emails, database reads and a held lock."""

from __future__ import annotations

import json
import smtplib
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailhook.server import Runtime

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEED = FIXTURES / "seed" / "text-inbound.json"


def smtp_address(runtime: Runtime) -> tuple[str, int]:
    """Return the SMTP door's bound host and port."""
    door = next(d for d in runtime.doors if d.name == "smtp")
    host, _, port = door.addresses()[0].rpartition(":")
    return host.strip("[]"), int(port)


def client(runtime: Runtime, **kwargs: Any) -> smtplib.SMTP:
    """Open an smtplib client to the running server's SMTP door."""
    host, port = smtp_address(runtime)
    return smtplib.SMTP(host, port, timeout=30, **kwargs)


def on_the_wire(raw: bytes) -> bytes:
    """Return bytes as `smtplib.SMTP.data()` sends them: unchanged, but ending in CRLF."""
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def notification(text_id: int, *, message_id: str | None = None, to: str = "ops@example.com") -> bytes:
    """Build a CallFire JSON notification email about text `text_id` (one event)."""
    document = json.loads(SEED.read_text(encoding="utf-8"))
    document["TextNotification"]["Text"]["@id"] = str(text_id)
    msg = EmailMessage()
    msg["From"] = "CallFire <notifications@callfire.com>"
    msg["To"] = to
    msg["Subject"] = f"CallFire notification {text_id}"
    msg["Message-ID"] = message_id or f"<{text_id}.notify@callfire.test>"
    msg.set_content(json.dumps(document, indent=2))
    return msg.as_bytes()


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run a query on a fresh connection, as an analyst would."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


@contextmanager
def locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Hold a write lock on the database from a second connection until the block ends."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def read_until_closed(sock_file: Any) -> bytes:
    """Read lines until the server closes the connection; return everything it said."""
    data = b""
    while line := sock_file.readline():
        data += line
    return data
