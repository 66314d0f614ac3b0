"""A node started while its PostgreSQL cannot be reached waits for it (no door listening, READY=1 withheld) and
stores once it answers; a server that refuses the node's settings stops it at once with exit code 78."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from postgres_support import PASSWORD, Cluster
from process_support import ALLOW_ROOT, free_port, listening, wait_until
from smtp_support import notification

from mailhook.exitcodes import EX_CONFIG, EX_OK
from mailhook.store.pg.connection import refusal

pytestmark = pytest.mark.slow

TRY = "cannot open the database (try "


def _serve(url: str, port: int, log: Path, notify: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT | {
        "MAILHOOK_CONFIG": "", "MAILHOOK_WORKERS": "1"}
    if notify is not None:
        env |= {"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "30000000"}
    with log.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "mailhook", "serve", "--db", url,
                                 "--smtp-listen", f"127.0.0.1:{port}", "--http-listen", ""], env=env, stderr=err)


def _datagrams(sock: socket.socket) -> Iterator[str]:
    while True:
        yield from sock.recv(4096).decode().split("\n")


def _refused(port: int) -> bool:
    try:
        listening(port)
    except ConnectionRefusedError:
        return True
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_a_node_started_while_postgresql_is_down_listens_and_says_ready_only_once_it_answers_then_stores(
    postgres_cluster: Cluster, postgres_url: str, tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    port, log = free_port(), tmp_path / "serve.log"
    postgres_cluster.stop()
    proc = _serve(postgres_url, port, log, notify=path)
    try:
        before_ready: list[str] = []
        messages = _datagrams(sock)
        # Two tries told to systemd (each with more start-up time), and to the log, one line each.
        while sum(line.startswith("STATUS=waiting for the database (try ") for line in before_ready) < 2:
            before_ready.append(next(messages))
        assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in before_ready)
        assert "READY=1" not in before_ready
        text = log.read_text()
        assert text.count(TRY) >= 2 and "no door listens until then" in text
        assert "Connection refused" in text and PASSWORD not in text
        assert _refused(port)
        assert proc.poll() is None

        postgres_cluster.start()
        while "READY=1" not in before_ready:
            before_ready.append(next(messages))
        assert listening(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(91))
        with psycopg.connect(postgres_url) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        assert row == (1,)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == EX_OK
    finally:
        if not postgres_cluster.running():
            postgres_cluster.start()
        _stop(proc)


def test_a_node_waiting_for_its_database_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    closed = free_port()  # nothing listens there: every try is refused at once
    proc = _serve(f"postgresql://mailhook:{PASSWORD}@127.0.0.1:{closed}/mailhook", port, log)
    try:
        wait_until(lambda: TRY + "2)" in log.read_text(), 60, "a second try at the database")
        assert _refused(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == EX_OK
        assert "stopped before the database could be opened" in log.read_text()
    finally:
        _stop(proc)


@pytest.mark.parametrize("wrong", ["password", "database"])
def test_a_server_refusing_the_settings_stops_the_node_at_once_with_exit_78(
    postgres_url: str, tmp_path: Path, wrong: str
) -> None:
    url = (postgres_url.replace(PASSWORD, "wrong-secret-123") if wrong == "password"
           else postgres_url.rsplit("/", 1)[0] + "/no_such_database")
    port, log = free_port(), tmp_path / "serve.log"
    proc = _serve(url, port, log)
    try:
        assert proc.wait(timeout=60) == EX_CONFIG  # systemd's unit: RestartPreventExitStatus=78
    finally:
        _stop(proc)
    text = log.read_text()
    assert "configuration error: storage.db: the database refuses mailhook" in text
    assert ("password authentication failed" if wrong == "password" else "does not exist") in text
    assert TRY not in text and "wrong-secret-123" not in text


@pytest.mark.parametrize(("said", "refused"), [
    ('FATAL:  password authentication failed for user "mailhook"', True),
    ("fe_sendauth: no password supplied", True),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.2", user "mailhook", database "mailhook", no encryption', True),
    ('FATAL:  database "mailhook" does not exist', True),
    ('FATAL:  role "mailhook" does not exist', True),
    ('FATAL:  role "mailhook" is not permitted to log in', True),
    ('FATAL:  permission denied for database "mailhook"', True),
    ('FATAL:  too many connections for role "mailhook"', False),
    ("FATAL:  sorry, too many clients already", False),
    ("FATAL:  the database system is starting up", False),
    ("FATAL:  the database system is shutting down", False),
    ('connection to server at "127.0.0.1", port 5432 failed: Connection refused', False),
    ("failed to resolve host 'db.example': [Errno -2] Name or service not known", False),
    ("connection to server at \"10.0.0.1\", port 5432 failed: timeout expired", False),
])
def test_only_a_refusal_of_the_settings_counts_as_permanent(said: str, refused: bool) -> None:
    assert refusal(said) is refused
