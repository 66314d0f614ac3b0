"""Helpers for the SMTP door tests: clients, notification emails, database reads and a held lock."""

from __future__ import annotations

import json
import os
import queue
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from email.message import EmailMessage
from pathlib import Path
from typing import Any, BinaryIO

from process_support import ALLOW_ROOT

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


def raw_session(runtime: Runtime, source: str = "127.0.0.1") -> tuple[socket.socket, BinaryIO]:
    """Open a bare connection to the SMTP door from `source` and read its greeting: for exact bytes on the wire."""
    sock = socket.create_connection(smtp_address(runtime), timeout=30, source_address=(source, 0))
    f = sock.makefile("rwb")
    assert f.readline().startswith(b"220 ")
    return sock, f


def read_reply(f: BinaryIO) -> bytes:
    """Read one (possibly multi-line) reply and return its last line; b"" when the server has closed."""
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    return line


def say(f: BinaryIO, line: bytes) -> bytes:
    """Send one raw command line (CRLF added) and return the last line of its reply."""
    f.write(line + b"\r\n")
    f.flush()
    return read_reply(f)


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


class ServerProcess:
    """`mailhook serve` run as a user would, with its stderr read line by line."""

    def __init__(self, db: Path, *flags: str, listen: str = "127.0.0.1:0") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailhook", "serve", "--db", str(db), "--smtp-listen", listen,
             "--http-listen", "", *flags],
            stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for("smtp listening on ")
        host, _, port = line.rsplit(" ", 1)[1].rpartition(":")
        self.address = (host, int(port))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        # stop() closes the pipe under this thread once the process is gone: the end of its output.
        with suppress(ValueError, OSError):
            for line in self.proc.stderr:
                self.lines.put(line)
        self.lines.put("")

    def wait_for(self, text: str) -> str:
        """Return the first stderr line containing `text`; fail if the process ends first."""
        while True:
            line = self.lines.get(timeout=30)
            self.log.append(line)
            if text in line:
                return line.strip()
            assert line, f"mailhook serve ended without saying {text!r}:\n{''.join(self.log)}"

    def stop(self) -> None:
        """Kill the process if it still runs and release its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
