"""The SMTP door from outside: swaks as the client, and `mailhook serve` as a process that gets signals."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartServer
from outside import Certificate, require, require_swaks_starttls
from smtp_support import (
    FIXTURES,
    ServerProcess,
    locked,
    notification,
    on_the_wire,
    read_until_closed,
    rows,
    smtp_address,
)

from mailhook.smtp.auth import hash_password

pytestmark = pytest.mark.slow


def _swaks(runtime_address: tuple[str, int], *args: str) -> subprocess.CompletedProcess[str]:
    require("swaks", "swaks")
    host, port = runtime_address
    return subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--ehlo", "swaks.test", "--timeout", "30", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_swaks_delivers_a_notification_email_that_is_stored_byte_for_byte(start_server: StartServer) -> None:
    runtime = start_server(smtp={"accept": ("@example.com",), "listen": "127.0.0.1:0"})
    sample = FIXTURES / "email" / "soap-in-body.eml"
    done = _swaks(smtp_address(runtime), "--from", "notifications@callfire.com", "--to", "ops@example.com",
                  "--data", f"@{sample}")
    assert done.returncode == 0, done.stdout
    assert "<-  250 2.0.0 OK delivery 1 stored" in done.stdout
    db = runtime.settings.storage.db
    assert db is not None
    (raw, events), = rows(db, "SELECT raw, event_count FROM deliveries")
    # swaks sends the file with CRLF line endings, as any MTA would, and ends it with an empty line.
    sent = sample.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert raw.rstrip(b"\r\n") == sent.rstrip(b"\r\n")
    assert events == 1


def test_swaks_sees_550_for_a_recipient_outside_the_accept_list(start_server: StartServer) -> None:
    runtime = start_server(smtp={"accept": ("ops@example.com",)})
    done = _swaks(smtp_address(runtime), "--from", "a@callfire.com", "--to", "intruder@example.net")
    assert done.returncode != 0
    assert "<** 550 5.1.1" in done.stdout


def test_swaks_with_starttls_and_auth_login(
    start_server: StartServer, certificate: Certificate, tmp_path: Path
) -> None:
    require_swaks_starttls()
    cert, key = certificate.cert, certificate.key
    passwords = tmp_path / "passwords"
    passwords.write_text(f"callfire:{hash_password('hunter2', iterations=1000)}\n", encoding="utf-8")
    runtime = start_server(smtp={"tls_cert": cert, "tls_key": key, "auth_file": passwords, "require_starttls": True})
    common = ("--from", "a@callfire.com", "--to", "ops@example.com", "-tls", "--auth", "LOGIN",
              "--auth-user", "callfire")
    refused = _swaks(smtp_address(runtime), *common, "--auth-password", "wrong")
    done = _swaks(smtp_address(runtime), *common, "--auth-password", "hunter2",
                  "--data", notification(9).decode())
    assert refused.returncode != 0 and "535 5.7.8" in refused.stdout
    assert done.returncode == 0, done.stdout
    db = runtime.settings.storage.db
    assert db is not None
    assert rows(db, "SELECT count(*), sum(event_count) FROM deliveries") == [(1, 1)]


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_the_transaction_in_flight_refuses_new_ones_and_exits_0(
    tmp_path: Path, processes: list[ServerProcess], workers: int
) -> None:
    db = tmp_path / "mailhook.db"
    server = ServerProcess(db, "--storage-busy-timeout", "60", "--workers", str(workers))
    processes.append(server)
    reply: list[tuple[int, bytes]] = []
    with (
        smtplib.SMTP(*server.address, timeout=60) as busy,
        socket.create_connection(server.address, timeout=60) as idle,
        idle.makefile("rwb") as idle_file,
    ):
        idle_file.readline()
        busy.ehlo()
        with locked(db):
            busy.mail("a@callfire.com")
            busy.rcpt("ops@example.com")
            sender = threading.Thread(target=lambda: reply.append(busy.data(notification(77))))
            sender.start()
            server.proc.send_signal(signal.SIGTERM)
            # Each worker closes its own copy of the listening socket: new connections are refused once all have.
            for _ in range(workers):
                server.wait_for("smtp stopped accepting")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(server.address, timeout=5)
            assert read_until_closed(idle_file).startswith(b"421 4.3.2")
            assert server.proc.poll() is None
        sender.join(timeout=60)
        assert reply and reply[0][0] == 250, reply
        # After its transaction the session is told the server is going away.
        assert busy.noop() == (421, b"4.3.2 Service shutting down, please try again later")
        busy.close()
    assert server.proc.wait(timeout=30) == 0
    assert rows(db, "SELECT count(*), sum(event_count) FROM deliveries") == [(1, 1)]


def test_a_crash_during_a_store_loses_no_acknowledged_message_and_the_retry_is_stored_once(
    tmp_path: Path, processes: list[ServerProcess]
) -> None:
    db = tmp_path / "mailhook.db"
    first = ServerProcess(db, "--storage-busy-timeout", "60")
    processes.append(first)
    with smtplib.SMTP(*first.address, timeout=60) as smtp:
        for n in range(3):
            smtp.sendmail("a@callfire.com", ["ops@example.com"], notification(n))
        with locked(db):
            smtp.mail("a@callfire.com")
            smtp.rcpt("ops@example.com")
            smtp.send(b"DATA\r\n")
            assert smtp.getreply()[0] == 354
            smtp.send(on_the_wire(notification(3)) + b".\r\n")
            first.proc.kill()
            first.proc.wait(timeout=30)
            # Never a 250: the connection dies with the process serving it, or, with `--workers`
            # (the default: one per core), that worker may first see its main process gone: the
            # message in flight is answered 451 (its store is gone), then the worker stops with 421.
            # Either way the client keeps the message and retries.
            replies: list[tuple[int, bytes]] = []
            while True:
                try:
                    replies.append(smtp.getreply())
                except smtplib.SMTPServerDisconnected:
                    break
            stored_later = (451, b"4.3.0 Storage temporarily unavailable, please try again later")
            stopping = (421, b"4.3.2 Service shutting down, please try again later")
            assert replies in ([], [stopping], [stored_later], [stored_later, stopping])
    second = ServerProcess(db)
    processes.append(second)
    with smtplib.SMTP(*second.address, timeout=60) as smtp:
        for n in range(5):
            smtp.sendmail("a@callfire.com", ["ops@example.com"], notification(n))
    ids = rows(db, "SELECT resource_id, count(*) FROM events GROUP BY resource_id ORDER BY resource_id")
    assert ids == [(n, 1) for n in range(5)]
