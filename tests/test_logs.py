"""Log lines: whatever a peer sends, it cannot forge a line, hide text or write control bytes to the journal;
a flood of one kind of event becomes one line per interval."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT, free_port, wait_until

from mailhook.delivery_log import DeliveryLine
from mailhook.logs import JournalFormatter, JsonFormatter, Summary, TextFormatter, escape, logfmt
from mailhook.models import Delivery

HOSTILE = "a\rINFO mailhook.ingest: forged\x00\n\x1b[31m\x7f\x85\u2028\u2029\ufeff end"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain ascii and ünïcödé", "plain ascii and ünïcödé"),
    ("cr\rlf\ntab\tnul\x00", "cr\\rlf\\ntab\\tnul\\x00"),
    ("esc\x1b[2J del\x7f c1\x85", "esc\\x1b[2J del\\x7f c1\\x85"),
    ("line sep\u2028para sep\u2029bom\ufeff", "line sep\\u2028para sep\\u2029bom\\ufeff"),
    ("surrogate-escaped byte \udcff", "surrogate-escaped byte \\udcff"),
])
def test_escape_makes_every_invisible_character_visible(raw: str, shown: str) -> None:
    assert escape(raw) == shown


_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^\s"=\\]+)'
_FIELD = re.compile(rf"(\w+)=({_VALUE})")


def fields(line: str) -> list[tuple[str, str]]:
    """Split a logfmt line strictly (single spaces between key=value, quoted values unescaped), or fail."""
    assert re.fullmatch(rf"\w+={_VALUE}(?: \w+={_VALUE})*", line), f"not one logfmt field per value: {line}"
    return [(key, re.sub(r'\\(.)', r"\1", value[1:-1]) if value.startswith('"') else value)
            for key, value in _FIELD.findall(line)]


@pytest.mark.parametrize(("value", "logged"), [
    ("ops@example.com", "ops@example.com"),
    ('"x status=stored delivery_id=1"@callfire.com', '"\\"x status=stored delivery_id=1\\"@callfire.com"'),
    ("a b", '"a b"'),
    ("k=v", '"k=v"'),
    ("back\\slash", '"back\\\\slash"'),
    ("cr\rnul\x00", '"cr\\rnul\\x00"'),
    ("", '""'),
])
def test_logfmt_quotes_every_value_that_could_read_as_more_than_one_field(value: str, logged: str) -> None:
    assert logfmt(value) == logged
    if value.isprintable():  # read back by a logfmt parser, it is the peer's value, whole
        assert fields(f"k={logged}") == [("k", value)]


def test_a_delivery_line_keeps_each_peer_value_in_its_own_field() -> None:
    hostile = '"x status=stored delivery_id=1"@callfire.com'
    delivery = Delivery(channel="smtp", raw=b"x", received_at="2024-01-01T00:00:00.000Z", envelope_from=hostile,
                        envelope_to=("a b@example.com", 'c"=d@example.com'), remote_addr="127.0.0.1")
    parsed = fields(str(DeliveryLine(delivery, None, 0.001)))
    assert [key for key, _ in parsed] == ["channel", "peer", "message_id", "from", "to", "status", "events",
                                          "duplicates", "size", "ms"]
    assert dict(parsed)["from"] == hostile
    assert dict(parsed)["to"] == 'a b@example.com,c"=d@example.com'
    assert dict(parsed)["status"] == "retry-later"


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("mailhook.smtp", logging.WARNING, __file__, 1, message, args, exc_info)


def failure() -> BaseException:
    try:
        raise ValueError(f"bad address {HOSTILE}")
    except ValueError as exc:
        return exc


@pytest.mark.parametrize("formatter", [TextFormatter("%(levelname)s %(name)s: %(message)s"),
                                       JournalFormatter("%(levelname)s %(name)s: %(message)s")])
def test_text_formats_keep_a_record_on_one_line_and_a_traceback_on_its_own_lines(
    formatter: logging.Formatter
) -> None:
    line = formatter.format(record("refused sender from=%s peer=%s", HOSTILE, "127.0.0.1"))
    assert line.splitlines() == [line]
    assert "\x00" not in line and "\x1b" not in line and "\u2028" not in line
    assert "from=a\\rINFO mailhook.ingest: forged\\x00\\n\\x1b[31m\\x7f\\x85\\u2028\\u2029\\ufeff end" in line
    with_traceback = formatter.format(record("session error from=%s", HOSTILE, exc=failure()))
    lines = with_traceback.splitlines()
    assert len(lines) > 3  # the traceback stays readable, one frame per line
    assert any("Traceback (most recent call last):" in line for line in lines)
    assert not any(line.lstrip("<0123456789>").startswith("INFO mailhook.ingest: forged") for line in lines)
    assert all(ch.isprintable() for line in lines for ch in line)


def test_json_format_escapes_the_message_the_delivery_fields_and_the_traceback() -> None:
    formatter = JsonFormatter()
    entry = record("delivery %s", "x", exc=failure())
    entry.delivery = {"from": HOSTILE, "size": 3}
    text = formatter.format(entry)
    assert text.splitlines() == [text]
    data = json.loads(text)
    # Decoded, as a log shipper shows it: still no control character.
    assert data["from"] == escape(HOSTILE) and data["size"] == 3
    assert all(ch.isprintable() for ch in data["from"] + data["message"])
    assert "bad address a\\rINFO" in data["exception"]
    assert all(ch.isprintable() for line in data["exception"].splitlines() for ch in line)


# --- through the doors of a running `mailhook serve` ------------------------------------------------------


class Served:
    def __init__(self, tmp: Path, fmt: str) -> None:
        self.smtp, self.http = free_port(), free_port()
        self.log = tmp / f"serve-{fmt}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT
        env |= {"MAILHOOK_CONFIG": "", "MAILHOOK_LOG_FORMAT": fmt}
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailhook", "serve", "--db", str(tmp / f"{fmt}.db"),
                 "--smtp-listen", f"127.0.0.1:{self.smtp}", "--http-listen", f"127.0.0.1:{self.http}"],
                env=env, stderr=err,
            )
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return b"http listening" in self.log.read_bytes()

        wait_until(up, 60, "mailhook serve listening")

    def stop(self) -> bytes:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        return self.log.read_bytes()


@pytest.fixture(params=["text", "json"])
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    server = Served(tmp_path, request.param)
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def chat(port: int, lines: list[bytes]) -> list[bytes]:
    """Send SMTP command lines one by one over a raw socket; return each reply's first line."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in lines:
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            replies.append(reply)
    return replies


def http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def forged(log: bytes) -> list[bytes]:
    """Return the log lines (split at CR too, as a terminal shows them) that begin with text a peer sent."""
    lines = log.replace(b"\r", b"\n").split(b"\n")
    return [line for line in lines if line.startswith((b"INFO forged", b"INFO mailhook.smtp: forged",
                                                       b"INFO mailhook.webhook: forged"))]


def test_cr_and_nul_in_envelope_addresses_message_id_and_http_cannot_forge_a_log_line(served: Served) -> None:
    replies = chat(served.smtp, [
        b"EHLO client.example\rINFO forged helo\r\n",
        b'MAIL FROM:<"a\rINFO mailhook.smtp: forged\x00"@example.com>\r\n',
        b'RCPT TO:<"b\x00\rINFO mailhook.smtp: forged"@example.com>\r\n',
        b"RCPT TO:<ok@example.com>\r\n",
        b"DATA\r\n",
        b"Message-ID: <id\x01forged\x7f@example.com>\r\nSubject: s\r\n\r\nno notification\r\n.\r\n",
        b"QUIT\r\n",
    ])
    assert all(reply[:1] in b"2345" and reply[:3].isdigit() for reply in replies)  # answered, still serving
    key = "top\rINFO mailhook.webhook: forged key\x00"
    body = json.dumps({key: 1}).encode()
    http(served.http, b"POST /notifications HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    http(served.http, b"GET /healthz?x=\rINFO mailhook.webhook: forged query HTTP/1.1\r\nHost: x\r\n\r\n")
    http(served.http, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: a\rINFO mailhook.webhook: forged header\r\n"
         b"Connection: close\r\n\r\n")
    log = served.stop()

    assert b"\x00" not in log and b"\r" not in log and b"\x01" not in log and b"\x7f" not in log
    assert not forged(log), log.decode("utf-8", "replace")
    text = log.decode()
    # What the peer sent is still there to read, made visible (an address refused at MAIL may go unlogged).
    if replies[1].startswith(b"250"):
        assert "a\\rINFO mailhook.smtp: forged\\x00" in text.replace("\\\\", "\\")
    assert "top\\rINFO mailhook.webhook: forged key\\x00" in text.replace("\\\\", "\\")
    if "json" in served.log.name:
        for line in text.splitlines():
            json.loads(line)  # every line one JSON object


def test_a_peer_cannot_forge_fields_of_the_delivery_line_over_smtp(tmp_path: Path) -> None:
    served = Served(tmp_path, "text")
    try:
        replies = chat(served.smtp, [
            b"EHLO client.example\r\n",
            b'MAIL FROM:<"x status=stored delivery_id=1"@callfire.com>\r\n',
            b"RCPT TO:<ok@example.com>\r\n",
            b"DATA\r\n",
            b"Message-ID: <id status=stored@example.com>\r\nSubject: s\r\n\r\nno notification\r\n.\r\n",
            b"QUIT\r\n",
        ])
        log = served.stop()
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    assert [reply[:3] for reply in replies] == [b"250", b"250", b"250", b"354", b"250", b"221"], replies
    lines = [line for line in log.decode().splitlines() if "mailhook.ingest: delivery " in line]
    assert len(lines) == 1, log.decode()
    parsed = fields(lines[0].split("mailhook.ingest: delivery ", 1)[1])
    keys = [key for key, _ in parsed]
    assert len(keys) == len(set(keys)), keys
    assert dict(parsed)["from"] == '"x status=stored delivery_id=1"@callfire.com'
    assert "status=stored" in dict(parsed)["message_id"]  # mailhook reads it without the space
    assert dict(parsed)["status"] == "quarantined"


def test_the_text_formatter_is_what_setup_installs() -> None:
    from mailhook.logs import setup

    setup("INFO", "text")
    handler = logging.getLogger("mailhook").handlers[0]
    assert isinstance(handler.formatter, TextFormatter)
    stream = io.StringIO()
    old, sys.stderr = sys.stderr, stream
    try:
        logging.getLogger("mailhook.smtp").warning("peer said %s", "x\ry")
    finally:
        sys.stderr = old
    assert stream.getvalue() == "WARNING mailhook.smtp: peer said x\\ry\n"


def test_a_flood_is_logged_once_then_summed_up_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("mailhook.test-summary")

    async def flood() -> list[str]:
        summary = Summary(logger, logging.WARNING, "refusals", interval=0.3)
        for n in range(500):
            summary.note("refused peer=%s", f"10.0.0.{n % 250}")
        first = [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.45)  # one interval over: one summary line
        summary.note("refused peer=%s", "late")  # still within the second window: counted
        await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)  # a whole quiet interval: the window closes
        summary.note("refused peer=%s", "after the quiet")  # logged at once
        summary.close()
        return first

    first = asyncio.run(flood())

    assert first == ["refused peer=10.0.0.0"]
    assert [r.getMessage() for r in caplog.records] == [
        "refused peer=10.0.0.0",
        "refusals: 499 more in the last 0.3 s (the last: refused peer=10.0.0.249)",
        "refusals: 1 more in the last 0.3 s (the last: refused peer=late)",
        "refused peer=after the quiet",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_workers_lines_name_its_pid_read_once_not_per_record(fmt: str) -> None:
    from mailhook.logs import setup

    setup("INFO", fmt, pid=True)
    stream = io.StringIO()
    old, sys.stderr = sys.stderr, stream
    logger = logging.getLogger("mailhook.smtp")
    made = logger.makeRecord(logger.name, logging.WARNING, "", 0, "peer said %s", ("x",), None)
    # The record looked up no pid (a getpid system call), thread or process name: no format prints them.
    assert made.process is None and made.thread is None and made.processName is None
    try:
        logger.handle(made)
    finally:
        sys.stderr = old
    line = stream.getvalue()
    if fmt == "json":
        assert json.loads(line)["pid"] == os.getpid()
    else:
        assert line == f"WARNING [{os.getpid()}] mailhook.smtp: peer said x\n"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("formatter", [TextFormatter("[%(process)d] %(message)s", pid=True), JsonFormatter(pid=True)])
def test_a_forked_childs_lines_name_the_child_not_its_parent(formatter: logging.Formatter) -> None:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            record = logging.LogRecord("mailhook", logging.INFO, "", 0, "hello", None, None)
            os.write(write, formatter.format(record).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        line = pipe.read().decode()
    os.waitpid(child, 0)
    shown = json.loads(line)["pid"] if isinstance(formatter, JsonFormatter) else int(line[1:line.index("]")])
    assert shown == child != os.getpid()
