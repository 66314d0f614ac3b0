"""Hostile input against a real `mailhook serve` process, through SMTP and HTTP.

For every input: the server keeps serving others (a normal notification
still gets its 250 or 200 afterwards), its memory stays bounded (the peak
RSS the kernel records for the process), and the input is either stored -
quarantined when unreadable - or refused with the right code.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT, descendants, free_port, listening, wait_until
from smtp_support import FIXTURES, notification

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 4_000_000  # --max-message-size for this server: big enough for a 100k-line header
PEAK_RSS_MB = 250  # the server's bound for all of the inputs below together (measured: ~120 MB)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    db: Path
    smtp_port: int
    http_port: int
    log: Path
    sent: int = 0

    def peak_rss_mb(self) -> float:
        """The largest peak resident set size (VmHWM) of the server and its extraction workers, in MB."""
        peaks = []
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            with suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
        assert peaks, "no VmHWM in /proc"
        return max(peaks)

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Query the database once nothing is pending (acknowledge=received extracts after the 250)."""
        with closing(sqlite3.connect(self.db)) as conn:
            wait_until(lambda: conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone()
                       == (0,), 60, "no delivery pending")
            return conn.execute(sql, params).fetchall()

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=60)

    def send_exactly(self, raw: bytes) -> int:
        """Send `raw` as one message's DATA, byte for byte (CRLF lines, no leading dots); return the reply code."""
        with self.smtp() as smtp:
            smtp.ehlo()
            smtp.mail("notifications@callfire.com")
            smtp.rcpt("ops@example.com")
            code, _ = smtp.data(raw)
        return code

    def post(self, body: bytes, content_type: str = "application/octet-stream") -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
        try:
            conn.request("POST", "/notifications", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            answer = json.loads(data)
        except ValueError:
            answer = {"raw": data.decode(errors="replace")}
        return response.status, answer

    def assert_still_serving(self) -> None:
        """A normal notification still gets through both doors at once, and memory stayed bounded."""
        assert self.proc.poll() is None, f"the server died:\n{self.log.read_text()[-3000:]}"
        self.sent += 1
        text_id = 700_000_000 + self.sent
        with self.smtp() as smtp:
            code, _ = smtp.noop()
            assert code == 250
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(text_id))
        assert self.rows("SELECT count(*) FROM events WHERE resource_id = ?", text_id) == [(1,)]
        status, answer = self.post((FIXTURES / "seed" / "text-outbound.xml").read_bytes())
        assert status == 200, answer
        assert self.peak_rss_mb() < PEAK_RSS_MB

    def last_delivery(self) -> tuple[str, str | None, int, bytes | None]:
        (row,) = self.rows("SELECT status, error, size, raw FROM deliveries ORDER BY id DESC LIMIT 1")
        return row  # type: ignore[return-value]


# Both ways of acknowledging: after the events are stored, and once the bytes are (events after).
@pytest.fixture(scope="module", params=["stored", "received"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile")
    smtp_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT
    env["MAILHOOK_CONFIG"] = ""
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhook", "serve", "--db", str(tmp / "mailhook.db"),
             "--smtp-listen", f"127.0.0.1:{smtp_port}", "--http-listen", f"127.0.0.1:{http_port}",
             "--max-message-size", str(LIMIT), "--smtp-acknowledge", request.param],
            cwd=ROOT, env=env, stdout=out, stderr=out,
        )
    srv = Server(proc, tmp / "mailhook.db", smtp_port, http_port, log)
    for port in (smtp_port, http_port):
        def up(port: int = port) -> bool:
            assert proc.poll() is None, log.read_text()
            return listening(port)

        wait_until(up, 30, f"mailhook serve listening on {port}")
    yield srv
    print(f"mailhook serve peak RSS over the hostile inputs: {srv.peak_rss_mb():.0f} MB")
    proc.terminate()
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def _headers(subject: str = "hostile") -> bytes:
    return (
        b"From: CallFire <notifications@callfire.com>\r\nTo: ops@example.com\r\n"
        b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() + b"@hostile.test>\r\n"
    )


def _send(server: Server, raw: bytes, rcpt: list[str] | None = None) -> None:
    with server.smtp() as smtp:
        smtp.sendmail("notifications@callfire.com", rcpt or ["ops@example.com"], raw)


def test_mime_nested_thousands_of_levels_deep_is_stored_quarantined(server: Server) -> None:
    depth = 5000
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)
    )
    closing_ = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    raw = _headers("deep-mime") + b"MIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nhi" + closing_
    _send(server, raw)
    status, error, size, stored = server.last_delivery()
    assert (status, size, stored) == ("quarantined", len(raw), raw)
    assert error
    server.assert_still_serving()


def test_message_rfc822_nested_thousands_deep_is_stored_quarantined(server: Server) -> None:
    raw = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for _ in range(3000):
        raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
    raw = _headers("deep-rfc822") + raw
    _send(server, raw)
    status, _, _, stored = server.last_delivery()
    assert (status, stored) == ("quarantined", raw)
    server.assert_still_serving()


def test_a_header_of_100k_lines_is_stored(server: Server) -> None:
    folded = b"X-Hostile: start\r\n" + b"".join(b"\tline %d\r\n" % i for i in range(100_000))
    body = notification(800_000_001).split(b"\n\n", 1)[1].replace(b"\n", b"\r\n")
    raw = _headers("long-header") + folded + b"\r\n" + body
    _send(server, raw)
    status, _, size, _ = server.last_delivery()
    assert status in ("stored", "quarantined") and size == len(raw)
    server.assert_still_serving()


def test_a_to_header_with_10000_addresses_is_stored_with_its_event(server: Server) -> None:
    to = b", ".join(b"user%d@example.com" % i for i in range(10_000))
    raw = notification(800_000_002).replace(b"\n", b"\r\n").replace(b"To: ops@example.com", b"To: " + to, 1)
    _send(server, raw)
    assert server.last_delivery()[0] == "stored"
    assert server.rows("SELECT count(*) FROM events WHERE resource_id = 800000002") == [(1,)]
    server.assert_still_serving()


def test_10000_envelope_recipients_past_the_cap_get_452_and_the_message_is_stored(server: Server) -> None:
    with server.smtp() as smtp:
        smtp.ehlo()
        assert smtp.mail("notifications@callfire.com")[0] == 250
        codes = [smtp.rcpt(f"user{i}@example.com")[0] for i in range(10_000)]
        assert codes == [250] * 100 + [452] * 9_900
        code, _ = smtp.data(notification(800_000_003))
        assert code == 250
    server.assert_still_serving()


@pytest.mark.parametrize("where", ["headers", "body", "both"])
def test_nul_bytes_and_invalid_utf8_are_stored_byte_for_byte(server: Server, where: str) -> None:
    junk = b"\x00\xff\xfe\xc3\x28\xa0\xa1\xed\xa0\x80\xf8\x88\x80\x80\x80\x00"
    head = _headers(f"junk-{where}")
    if where in ("headers", "both"):
        head += b"X-Junk: " + junk + b"\r\nSubject: " + junk + b"\r\n"
        head += b"Content-Type: text/plain; charset=" + junk + b"\r\n"
    body = (junk * 50 + b"\r\n") * 20 if where in ("body", "both") else b"hello\r\n"
    raw = head + b"\r\n" + body
    assert server.send_exactly(raw) == 250
    status, error, _, stored = server.last_delivery()
    assert (status, stored) == ("quarantined", raw)
    assert error
    server.assert_still_serving()


def test_invalid_utf8_and_nul_in_smtp_commands_get_an_error_reply_and_the_session_goes_on(server: Server) -> None:
    with closing(socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30)) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        for command in (b"EHLO \xff\xfe\x00\r\n", b"MAIL FROM:<\xff\x00@x>\r\n", b"\x00\x00\x00\r\n"):
            sock.sendall(command)
            line = f.readline()
            while line[3:4] == b"-":
                line = f.readline()
            assert line[:1] in (b"2", b"5"), line
        sock.sendall(b"NOOP\r\n")
        assert f.readline().startswith(b"250")
    server.assert_still_serving()


def test_a_message_exactly_at_the_size_limit_is_stored_and_one_byte_over_gets_552(server: Server) -> None:
    base = notification(800_000_004).replace(b"\n", b"\r\n")
    head, body = base.split(b"\r\n\r\n", 1)
    # Folded header lines of 80 bytes: the at-limit message must break no line-length rule.
    pad = LIMIT - len(base) - len(b"X-Pad: \r\n")
    lines, rest = divmod(pad, 80)
    folded = b"p" * rest + b"".join(b"\r\n\t" + b"p" * 77 for _ in range(lines))
    at = head + b"\r\nX-Pad: " + folded + b"\r\n\r\n" + body
    assert len(at) == LIMIT and not any(line.startswith(b".") for line in at.split(b"\r\n"))
    over = at.replace(b"X-Pad: ", b"X-Pad: q", 1)
    with server.smtp() as smtp:
        smtp.ehlo()
        smtp.mail("notifications@callfire.com")
        smtp.rcpt("ops@example.com")
        assert smtp.data(at)[0] == 250
    status, _, size, _ = server.last_delivery()
    assert (status, size) == ("stored", LIMIT)
    before = server.rows("SELECT count(*) FROM deliveries")
    with server.smtp() as smtp:
        smtp.ehlo()
        smtp.mail("notifications@callfire.com")
        smtp.rcpt("ops@example.com")
        assert smtp.data(over)[0] == 552
    assert server.rows("SELECT count(*) FROM deliveries") == before
    server.assert_still_serving()


def test_an_http_body_exactly_at_the_limit_is_read_and_one_byte_over_gets_413(server: Server) -> None:
    document = (FIXTURES / "seed" / "text-inbound.json").read_bytes()
    at = document + b" " * (LIMIT - len(document))
    status, _ = server.post(at, "application/json")
    assert status in (200, 422)
    assert server.last_delivery()[2] == LIMIT
    status, answer = server.post(at + b" ", "application/json")
    assert status == 413, answer
    server.assert_still_serving()


def test_slowloris_sessions_sending_byte_by_byte_do_not_hold_up_others(server: Server) -> None:
    message = notification(800_000_005).replace(b"\n", b"\r\n")
    script = (b"EHLO slow.test\r\nMAIL FROM:<a@callfire.com>\r\nRCPT TO:<ops@example.com>\r\nDATA\r\n"
              + message[:400])
    stop = threading.Event()
    errors: list[BaseException] = []
    begun: list[int] = []

    def slow() -> None:
        try:
            with closing(socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30)) as sock:
                for i in range(len(script)):
                    if stop.is_set():
                        return
                    sock.sendall(script[i:i + 1])
                    if i == 20:  # past EHLO: the session is under way
                        begun.append(i)
                    time.sleep(0.005)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(30)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(begun) == len(threads), 30, "thirty sessions trickling")
        for _ in range(3):
            server.assert_still_serving()  # while thirty sessions trickle bytes in
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    server.assert_still_serving()


def _bombs() -> list[tuple[str, bytes]]:
    depth = 100_000
    return [
        ("billion-laughs", (FIXTURES / "documents" / "xml-billion-laughs.xml").read_bytes()),
        ("external-entity", (FIXTURES / "documents" / "xml-external-entity.xml").read_bytes()),
        ("quadratic-blowup", b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "' + b"x" * 50_000 + b'">]>'
         b"<TextNotification>" + b"&a;" * 20_000 + b"</TextNotification>"),
        ("deep-xml", b"<TextNotification>" + b"<a>" * depth + b"</a>" * depth + b"</TextNotification>"),
        ("deep-json", b'{"TextNotification": ' + b"[" * depth + b"]" * depth + b"}"),
        ("huge-json-number", b'{"TextNotification": {"Text": {"@id": ' + b"9" * 1_000_000 + b"}}}"),
        ("json-many-keys", b'{"TextNotification": {' + b",".join(b'"k%d": 1' % i for i in range(200_000)) + b"}}"),
    ]


@pytest.mark.parametrize(("name", "bomb"), _bombs(), ids=[name for name, _ in _bombs()])
def test_xml_and_json_bombs_over_http_are_stored_quarantined_with_422(server: Server, name: str, bomb: bytes) -> None:
    status, answer = server.post(bomb)
    assert status == 422, answer
    status_, error, size, stored = server.last_delivery()
    assert (status_, size, stored) == ("quarantined", len(bomb), bomb)
    assert error
    server.assert_still_serving()


@pytest.mark.parametrize(("name", "bomb"), _bombs(), ids=[name for name, _ in _bombs()])
def test_xml_and_json_bombs_over_smtp_are_stored_quarantined(server: Server, name: str, bomb: bytes) -> None:
    # As an attachment, the way CallFire sends documents: base64 lines stay short on the wire.
    attachment = base64.encodebytes(bomb).replace(b"\n", b"\r\n")
    raw = (
        _headers(f"bomb-{name}") + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n--b\r\n"
        b'Content-Type: application/octet-stream; name="notification"\r\nContent-Transfer-Encoding: base64\r\n'
        b"Content-Disposition: attachment\r\n\r\n" + attachment + b"--b--\r\n"
    )
    assert server.send_exactly(raw) == 250
    status, _, size, _ = server.last_delivery()
    assert (status, size) == ("quarantined", len(raw))
    assert server.rows("SELECT count(*) FROM events WHERE delivery_id = (SELECT max(id) FROM deliveries)") == [(0,)]
    server.assert_still_serving()


def test_a_line_longer_than_the_line_limit_gets_500_and_nothing_is_stored(server: Server) -> None:
    # The door accepts lines far beyond RFC 5321's 1000 octets, up to the smaller of the size limit and 1 MiB.
    raw = _headers("long-line") + b"\r\n" + b"x" * min(LIMIT, 1 << 20) + b"\r\n"
    before = server.rows("SELECT count(*) FROM deliveries")
    assert server.send_exactly(raw) == 500
    assert server.rows("SELECT count(*) FROM deliveries") == before
    server.assert_still_serving()


def _talk(sock_file: object, line: bytes) -> bytes:
    f = sock_file
    f.write(line + b"\r\n")  # type: ignore[attr-defined]
    f.flush()  # type: ignore[attr-defined]
    reply: bytes = f.readline()  # type: ignore[attr-defined]
    while reply[3:4] == b"-":
        reply = f.readline()  # type: ignore[attr-defined]
    return reply


def test_envelope_addresses_with_invalid_utf8_or_control_characters_get_501_not_451(server: Server) -> None:
    before = server.rows("SELECT count(*) FROM deliveries")
    with closing(socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30)) as sock:
        f = sock.makefile("rwb")
        assert f.readline().startswith(b"220")
        assert _talk(f, b"EHLO hostile.test").startswith(b"250")
        for bad in (b"\xff\xfe", b"\xc3\x28", b"\x00", b"\r", b"\x1b", b"\x7f"):
            assert _talk(f, b"MAIL FROM:<a" + bad + b"@callfire.com>").startswith(b"501 5.1.7"), bad
        assert _talk(f, b"MAIL FROM:<notifications@callfire.com>").startswith(b"250")
        for bad in (b"\xff\xfe", b"\x00", b"\r"):
            assert _talk(f, b"RCPT TO:<ops" + bad + b"@example.com>").startswith(b"501 5.1.3"), bad
        assert _talk(f, b"QUIT").startswith(b"221")
    assert server.rows("SELECT count(*) FROM deliveries") == before
    server.assert_still_serving()


def test_the_101st_command_without_mail_closes_the_session(server: Server) -> None:
    with closing(socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30)) as sock:
        f = sock.makefile("rwb")
        assert f.readline().startswith(b"220")
        assert _talk(f, b"EHLO hostile.test").startswith(b"250")
        replies = [_talk(f, b"NOOP") for _ in range(100)]
        assert all(r.startswith(b"250") for r in replies)
        assert _talk(f, b"NOOP").startswith(b"421 4.7.0")
        assert f.readline() == b""
    server.assert_still_serving()
