"""`mailhook serve --workers N`: several processes serve SMTP and HTTP around one writer, with every guarantee kept."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from pathlib import Path

import pytest
from postgres_support import PASSWORD, USER, Cluster
from process_support import ALLOW_ROOT, descendants, free_port, listening, wait_until
from prometheus_client.parser import text_string_to_metric_families
from smtp_support import SEED, notification

from mailhook.config.settings import Settings
from mailhook.group.remote import ASK_TIMEOUT
from mailhook.group.shares import share, worker_count, worker_settings

ROOT = Path(__file__).resolve().parent.parent
PID = re.compile(r"\[(\d+)\] mailhook\.ingest: delivery channel=(\w+)")
# Connections opened at once when a test needs every worker to take some.
BURST = 8


class Served:
    """`mailhook serve` as a subprocess on fixed loopback ports, its stderr in a file."""

    def __init__(self, tmp: Path, workers: int, *flags: str, env: dict[str, str] | None = None) -> None:
        self.db, self.log = tmp / "mailhook.db", tmp / "serve.log"
        self.smtp, self.http = free_port(), free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT
        environ |= {"MAILHOOK_CONFIG": "", **(env or {})}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailhook", "serve", "--workers", str(workers), "--db", str(self.db),
                 "--smtp-listen", f"127.0.0.1:{self.smtp}", "--http-listen", f"127.0.0.1:{self.http}", *flags],
                cwd=ROOT, env=environ, stdout=log, stderr=log,
            )
        ready = "worker processes serving" if workers > 1 else "http listening on"
        wait_until(lambda: self._alive() and ready in self.text(), 60, f"mailhook serve --workers {workers} up")

    def _alive(self) -> bool:
        assert self.proc.poll() is None, f"mailhook serve exited with {self.proc.returncode}:\n{self.text()}"
        return True

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """Return the pids of the worker processes now running (the parent's children running the worker)."""
        return [pid for pid in descendants(self.proc.pid) if b"mailhook.group" in _cmdline(pid)]

    def pids(self, channel: str) -> set[int]:
        """Return the pids whose log lines show a delivery on `channel`."""
        return {int(pid) for pid, seen in PID.findall(self.text()) if seen == channel}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=90)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Served]]:
    started: list[Served] = []

    def start(workers: int, *flags: str, env: dict[str, str] | None = None) -> Served:
        server = Served(tmp_path, workers, *flags, env=env)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def send_mail(port: int, raw: bytes, timeout: float = 30) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
        smtp.sendmail("notifications@callfire.com", ["ops@example.com"], raw)


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/notifications", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Connection": "close"})
    with urllib.request.urlopen(request, timeout=30) as response:
        status: int = response.status
        return status


def document(text_id: int) -> bytes:
    data = json.loads(SEED.read_text(encoding="utf-8"))
    data["TextNotification"]["Text"]["@id"] = str(text_id)
    return json.dumps(data).encode()


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def mail_and_post(server: Served, n: int) -> None:
    """Deliver notification n once over each door, each on a connection of its own."""
    send_mail(server.smtp, notification(500_000 + n))
    assert post(server.http, document(600_000 + n)) == 200


def deliver_until_every_worker_served(server: Served, deliver: Callable[[int], None]) -> int:
    """Run `deliver(n)` for n = 0, 1, ... in bursts of BURST at once until every worker has logged a delivery on
    both doors; return how many ran.

    One connection at a time proves nothing: the kernel may wake the same idle worker first for every one (it
    did, 200 times in a row, in one CI run). A burst is queued together, and a worker takes one per turn.
    """
    sent = 0
    with ThreadPoolExecutor(BURST) as pool:
        while (len(server.pids("smtp")) < 2 or len(server.pids("http")) < 2) and sent < 40 * BURST:
            list(pool.map(deliver, range(sent, sent + BURST)))
            sent += BURST
    assert server.pids("smtp") == server.pids("http") == set(server.workers()), server.text()[-2000:]
    return sent


# --- sharing the work -----------------------------------------------------------------------------


@pytest.mark.slow
def test_smtp_and_http_are_served_by_every_worker_and_duplicates_across_workers_are_stored_once(
    serve: type[Served],
) -> None:
    server = serve(2)
    workers = server.workers()
    assert len(workers) == 2
    sent = deliver_until_every_worker_served(server, functools.partial(mail_and_post, server))
    # A worker asks the parent's store whether it takes writes.
    for _ in range(4):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/healthz", timeout=30) as response:
            assert response.status == 200
    # The same notification sent again and again, over both doors, lands on both workers: stored once.
    for _ in range(10):
        send_mail(server.smtp, notification(777))
        assert post(server.http, document(778)) == 200
    assert server.stop() == 0
    assert query(server.db, "SELECT count(*) FROM events WHERE resource_id IN ('777', '778')") == [(2,)]
    assert query(server.db, "SELECT count(*) FROM events") == [(2 * sent + 2,)]
    assert query(server.db, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.slow
def test_the_session_cap_holds_for_the_whole_service_not_for_each_worker(serve: type[Served]) -> None:
    server = serve(2, "--smtp-max-sessions", "4", "--smtp-evict-after", "0")
    banners: list[bytes] = []
    held: list[socket.socket] = []
    try:
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", server.smtp), timeout=30)
            held.append(sock)
            banners.append(sock.recv(1024)[:3])
        # Each worker takes its share, 4 // 2: the service never holds more than 4 sessions.
        assert banners.count(b"220") <= 4
        assert banners.count(b"421") >= 6
    finally:
        for sock in held:
            sock.close()
    assert server.stop() == 0


# --- stopping and crashing ------------------------------------------------------------------------


def _open_transaction(port: int, number: int) -> smtplib.SMTP:
    """Open a session and send everything of one message but the final dot."""
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=60)
    smtp.ehlo()
    smtp.mail("notifications@callfire.com")
    smtp.rcpt("ops@example.com")
    smtp.putcmd("data")
    assert smtp.getreply()[0] == 354
    raw = notification(number).replace(b"\n", b"\r\n")
    smtp.send(raw + b"\r\n")
    return smtp


@pytest.mark.slow
def test_sigterm_drains_the_sessions_in_flight_on_every_worker_then_exits_0(serve: type[Served]) -> None:
    server = serve(2)
    sessions = [_open_transaction(server.smtp, 800 + n) for n in range(8)]
    workers = server.workers()
    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: server.text().count("stopped accepting") == 2, 30, "both workers stop accepting")
    for smtp in sessions:
        smtp.send(b".\r\n")
        assert smtp.getreply()[0] == 250
        smtp.close()
    assert server.proc.wait(timeout=60) == 0
    assert query(server.db, "SELECT count(*) FROM events") == [(8,)]
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


@pytest.mark.slow
def test_kill_9_of_a_worker_under_load_loses_nothing_acknowledged_and_it_is_restarted(serve: type[Served]) -> None:
    server = serve(2)
    workers = server.workers()
    victim = workers[0]
    acked: list[int] = []
    stop = threading.Event()

    def deliver(first: int) -> None:
        number = first
        while not stop.is_set():
            try:
                send_mail(server.smtp, notification(number), timeout=10)
            except (smtplib.SMTPException, OSError):
                continue  # cut by the kill: sent again, as an MTA would
            acked.append(number)
            number += 1

    clients = [threading.Thread(target=deliver, args=(n * 100_000,), daemon=True) for n in range(1, 5)]
    for client in clients:
        client.start()
    wait_until(lambda: len(acked) >= 40, 60, "deliveries under way")
    os.kill(victim, signal.SIGKILL)
    line = wait_until(lambda: re.search(rf"worker \d \(pid {victim}\) was killed by signal 9.*", server.text()),
                      30, "the parent noticing the dead worker")
    again = wait_until(lambda: re.search(r"worker \d \(pid (\d+)\) listening again", server.text()), 60,
                       "a new worker listening")
    assert set(server.workers()) == {int(again.group(1)), *workers} - {victim}
    before = len(acked)
    wait_until(lambda: len(acked) >= before + 40, 60, "deliveries after the restart")
    stop.set()
    for client in clients:
        client.join(timeout=30)
    assert server.stop() == 0
    stored = {int(row[0]) for row in query(server.db, "SELECT resource_id FROM events")}
    assert not set(acked) - stored, f"acknowledged but not stored after {line.group(0)!r}"
    assert query(server.db, "SELECT count(*), count(DISTINCT dedupe_key) FROM events")[0][0] == len(stored)
    assert server.pids("smtp") >= set(workers)  # both served before the kill


@pytest.mark.slow
def test_kill_9_of_the_parent_ends_every_worker_and_no_session_in_flight_gets_250(serve: type[Served]) -> None:
    server = serve(2)
    workers = server.workers()
    sessions = [_open_transaction(server.smtp, 900 + n) for n in range(4)]
    server.proc.kill()
    server.proc.wait(timeout=10)
    wait_until(lambda: not [pid for pid in workers if Path(f"/proc/{pid}").exists()], 10, "workers ending")
    for smtp in sessions:
        with suppress(OSError, smtplib.SMTPServerDisconnected):
            smtp.send(b".\r\n")
        try:
            # smtplib drops its socket when the send already found the connection gone.
            code: int | None = smtp.getreply()[0] if smtp.sock is not None else None
        except (OSError, smtplib.SMTPServerDisconnected):
            code = None  # the connection died with its worker
        assert code != 250
        smtp.close()
    assert query(server.db, "SELECT count(*) FROM events") == [(0,)]


@pytest.mark.slow
def test_one_worker_is_the_single_process_of_before(serve: type[Served]) -> None:
    server = serve(1)
    assert server.workers() == []
    send_mail(server.smtp, notification(4242))
    assert server.stop() == 0
    assert "INFO mailhook.ingest: delivery channel=smtp" in server.text()  # no [pid]
    assert "worker" not in server.text()


async def _burst(port: int, first: int, sessions: int = 8) -> None:
    """Open `sessions` SMTP sessions at once (as bench/smtp.py does), then deliver one email on each."""
    opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(sessions)))

    async def deliver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        data = notification(number).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
        assert (await reader.readline()).startswith(b"220")
        for command, code in ((b"HELO burst", b"250"), (b"MAIL FROM:<notifications@callfire.com>", b"250"),
                              (b"RCPT TO:<ops@example.com>", b"250"), (b"DATA", b"354"),
                              (data + b"\r\n.", b"250"), (b"QUIT", b"221")):
            writer.write(command + b"\r\n")
            assert (await reader.readline()).startswith(code)
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(deliver(reader, writer, first + n) for n, (reader, writer) in enumerate(opened)))


async def _http_burst(port: int, connections: int = 8) -> None:
    """Open `connections` HTTP connections at once and ask /healthz on each."""
    opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(connections)))
    for _, writer in opened:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: mailhook\r\nConnection: close\r\n\r\n")
    for reader, writer in opened:
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()


def _accepts_per_wakeup(trace: Path) -> list[int]:
    """Return, from `strace -e trace=accept4,epoll_wait` of one thread, the connections accepted after each wake-up."""
    turns = [0]
    for line in trace.read_text().splitlines():
        if line.startswith("epoll_wait("):
            turns.append(0)
        elif line.startswith("accept4(") and re.search(r"\) = \d+$", line):
            turns[-1] += 1
    return turns


@pytest.mark.slow
@pytest.mark.needs("strace", "strace")
def test_a_burst_of_sessions_is_shared_out_each_worker_accepting_one_connection_a_turn(
    serve: type[Served], tmp_path: Path,
) -> None:
    """Eight sessions opened at once, five times over: no worker takes more than one per wake-up, both serve.

(Then two bursts of eight HTTP connections: the HTTP door's socket takes turns too.)

    The first check is deterministic: every accept4 of each worker's event loop is traced, and between two
    epoll_waits at most one succeeds (before, a worker took every connection waiting, up to 100, at once).
    The second, that both workers served sessions, holds because a worker takes one connection and goes
    round its loop before the next, while the other, woken by the same readiness, takes what waits: for it
    to fail, one worker would have to win all 40 accepts of five bursts (bench/worker_split.py, without
    strace: 13 bursts of 140 went whole to one worker, either one, so five in a row on the same one far
    less than once in 10,000 runs if independent; with strace every turn of both workers is slower alike).
    """
    server = serve(2)
    workers = server.workers()
    assert len(workers) == 2
    traced = tmp_path / "accepts"
    tracer = subprocess.Popen(["strace", "-qq", "-ff", "-o", str(traced), "-e", "trace=accept4,epoll_wait",
                               *(arg for pid in workers for arg in ("-p", str(pid)))], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: all(f"TracerPid:\t{tracer.pid}" in Path(f"/proc/{pid}/status").read_text()
                               for pid in workers), 30, "strace attached to both workers")
        for burst in range(5):
            asyncio.run(_burst(server.smtp, 880_000 + 8 * burst))
        for _ in range(2):
            asyncio.run(_http_burst(server.http))
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches, leaving the workers running
        tracer.wait(timeout=30)
    turns = {pid: _accepts_per_wakeup(Path(f"{traced}.{pid}")) for pid in workers}
    assert all(max(per_turn) <= 1 for per_turn in turns.values()), turns
    assert sum(sum(per_turn) for per_turn in turns.values()) == 40 + 16  # every SMTP session, every HTTP one
    assert all(sum(per_turn) >= 1 for per_turn in turns.values()), turns
    assert server.pids("smtp") == set(workers)
    assert server.stop() == 0
    assert query(server.db, "SELECT count(*) FROM events") == [(40,)]


def _backlog(port: int) -> int:
    """Return a listening socket's backlog as the kernel has it (`ss` shows it as Send-Q)."""
    shown = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    (line,) = shown.splitlines()
    return int(line.split()[2])


@pytest.mark.slow
@pytest.mark.needs("ss", "iproute2")
def test_both_doors_keep_the_backlog_the_parent_listened_with_when_every_worker_serves_them(
    serve: type[Served],
) -> None:
    """asyncio listen()s again on a socket it serves (100 for SMTP, aiohttp 511): the workers keep the parent's."""
    server = serve(2)
    send_mail(server.smtp, notification(4343))  # the workers serve them now
    expected = min(socket.SOMAXCONN, int(Path("/proc/sys/net/core/somaxconn").read_text()))
    assert (_backlog(server.smtp), _backlog(server.http)) == (expected, expected)
    assert server.stop() == 0


# --- systemd -------------------------------------------------------------------------------------


def _messages(sock: socket.socket, seconds: float) -> list[str]:
    """Return the lines of every datagram received within `seconds`."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        with suppress(TimeoutError):
            lines += sock.recv(4096).decode().split("\n")
    return lines


@pytest.mark.slow
def test_ready_after_every_worker_listens_status_sums_the_group_and_a_stuck_worker_withholds_the_watchdog(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    log = tmp_path / "serve.log"
    smtp_port, http_port = free_port(), free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "MAILHOOK_CONFIG": "",
           "MAILHOOK_DB": str(tmp_path / "mailhook.db"), "MAILHOOK_WORKERS": "2", **ALLOW_ROOT,
           "MAILHOOK_SMTP_LISTEN": f"127.0.0.1:{smtp_port}", "MAILHOOK_HTTP_LISTEN": f"127.0.0.1:{http_port}",
           "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailhook", "serve"], env=env, cwd=tmp_path, stderr=err)
    try:
        lines: list[str] = []
        while "READY=1" not in lines:
            lines += sock.recv(4096).decode().split("\n")
        assert "2 worker processes serving" in log.read_text()
        workers = [pid for pid in descendants(proc.pid) if b"mailhook.group" in _cmdline(pid)]
        assert len(workers) == 2
        sent = 0
        while len({int(pid) for pid, _ in PID.findall(log.read_text())}) < 2 and sent < 100:
            send_mail(smtp_port, notification(300 + sent))
            sent += 1
        assert post(http_port, document(299)) == 200
        # Counted in the parent, whichever worker took each delivery.
        wait_until(lambda: any(re.match(rf"STATUS=.*since start {sent + 1} deliveries", line)
                               for line in _messages(sock, 1.5)), 20, "the group's total in STATUS=")
        assert "WATCHDOG=1" in _messages(sock, 2.5)
        os.kill(workers[1], signal.SIGSTOP)  # its event loop answers no heartbeat
        try:
            wait_until(lambda: "WATCHDOG=1" not in _messages(sock, 2.5), 20, "pings withheld")
            assert "do not answer the heartbeat; withholding the watchdog ping" in log.read_text()
        finally:
            os.kill(workers[1], signal.SIGCONT)
        wait_until(lambda: "WATCHDOG=1" in _messages(sock, 2.5), 20, "pings again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape /metrics on a connection of its own (the kernel hands it to either worker)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _totals(port: int) -> tuple[float, float, float, float]:
    """Return (SMTP stored, HTTP stored, HTTP refusals for a wrong token, open SMTP sessions) from one scrape."""
    samples = _scrape(port)
    return (samples.get(("mailhook_deliveries_total", (("channel", "smtp"), ("status", "stored"))), 0.0),
            samples.get(("mailhook_deliveries_total", (("channel", "http"), ("status", "stored"))), 0.0),
            samples.get(("mailhook_rejected_total", (("channel", "http"), ("reason", "unauthorized"))), 0.0),
            samples.get(("mailhook_smtp_sessions", ()), 0.0))


def _post_token(port: int, body: bytes, token: str) -> int:
    return _status(port, f"/notifications?token={token}", body)


@pytest.mark.slow
def test_metrics_count_the_whole_group_on_every_scrape_and_survive_a_worker_restart(serve: type[Served]) -> None:
    server = serve(2, "--http-token", "sesame")
    workers = server.workers()

    def deliver(n: int) -> None:
        send_mail(server.smtp, notification(400_000 + n))
        assert _post_token(server.http, document(450_000 + n), "sesame") == 200
        assert _post_token(server.http, document(1), "wrong") == 401

    sent = refused = deliver_until_every_worker_served(server, deliver)
    # Every scrape, whichever worker takes it, counts what both workers took.
    for _ in range(8):
        assert _totals(server.http)[:3] == (sent, sent, refused)
    # Open SMTP sessions, summed over the workers (each tells its own with the next heartbeat).
    held = [socket.create_connection(("127.0.0.1", server.smtp), timeout=30) for _ in range(4)]
    try:
        for sock in held:
            assert sock.recv(1024).startswith(b"220")
        wait_until(lambda: all(_totals(server.http)[3] == 4 for _ in range(4)), 20, "4 sessions in the gauge")
    finally:
        for sock in held:
            sock.close()

    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: f"(pid {victim}) was killed by signal 9" in server.text(), 30, "the parent noticing")
    wait_until(lambda: "listening again" in server.text(), 60, "a new worker listening")
    # Neither reset by the restart nor counted twice; the dead worker's sessions are gone from the gauge.
    for _ in range(8):
        assert _totals(server.http)[:3] == (sent, sent, refused)
    wait_until(lambda: all(_totals(server.http)[3] == 0 for _ in range(4)), 20, "no sessions in the gauge")
    for n in range(6):
        send_mail(server.smtp, notification(490_000 + n))
        assert _post_token(server.http, document(495_000 + n), "sesame") == 200
        assert _post_token(server.http, document(1), "wrong") == 401
    for _ in range(8):
        assert _totals(server.http)[:3] == (sent + 6, sent + 6, refused + 6)
    assert server.stop() == 0


def test_a_scrape_the_silent_main_process_does_not_answer_gets_503_and_the_next_one_200(
    serve: type[Served],
) -> None:
    server = serve(2)
    assert _status(server.http, "/metrics") == 200
    os.kill(server.proc.pid, signal.SIGSTOP)  # the main process holds the counters; it says nothing now
    try:
        started = time.monotonic()
        request = urllib.request.Request(f"http://127.0.0.1:{server.http}/metrics",
                                         headers={"Connection": "close"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        waited = time.monotonic() - started
        assert refused.value.code == 503
        assert "supervisor process does not answer" in refused.value.read().decode()
        assert waited >= ASK_TIMEOUT - 1  # it waited its bound, then gave up
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    wait_until(lambda: _status(server.http, "/metrics") == 200, 30, "scrapes answered again")
    assert server.stop() == 0


# --- shares of the limits -------------------------------------------------------------------------


def test_every_cap_is_divided_among_the_workers_so_the_service_keeps_it() -> None:
    settings = Settings()
    mine = worker_settings(settings, 3)
    assert mine.smtp.max_sessions == 1000 // 3
    assert mine.smtp.max_per_ip == 100 // 3
    assert mine.http.max_connections == 512 // 3
    assert mine.parsing.inflight_budget == settings.parsing.inflight_budget // 3
    assert mine.smtp.max_connection_rate == 0  # no limit stays no limit
    assert share(1, 4) == 1
    assert mine.smtp.max_message_size == settings.smtp.max_message_size  # a size is not a count


def test_the_default_is_one_worker_per_usable_core() -> None:
    assert worker_count(Settings()) == len(os.sched_getaffinity(0))


# --- on PostgreSQL --------------------------------------------------------------------------------


def _pg_count(url: str, sql: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _status(port: int, path: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Content-Type": "application/json", "Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status: int = response.status
    except urllib.error.HTTPError as refused:
        status = refused.code
    return status


@pytest.mark.slow
def test_the_group_on_postgresql_stores_through_every_worker_once_and_waits_out_an_outage(
    serve: type[Served], postgres_cluster: Cluster, postgres_url: str, tmp_path: Path,
) -> None:
    password_file = tmp_path / "db-password"
    password_file.write_text(PASSWORD + "\n")
    url = postgres_url.replace(f"{USER}:{PASSWORD}@", f"{USER}@")  # the password from the file
    server = serve(2, "--db", url, "--storage-password-file", str(password_file))
    workers = server.workers()
    assert len(workers) == 2
    try:
        sent = deliver_until_every_worker_served(server, functools.partial(mail_and_post, server))
        for _ in range(4):  # the same notification over both doors, landing on both workers: stored once
            send_mail(server.smtp, notification(777))
            assert post(server.http, document(778)) == 200
        assert _pg_count(postgres_url, "SELECT count(*) FROM deliveries") == 2 * sent + 8
        assert _pg_count(postgres_url, "SELECT count(*) FROM deliveries WHERE status = 'duplicate'") == 6
        assert _pg_count(postgres_url, "SELECT count(*) FROM events") == 2 * sent + 2
        assert _pg_count(postgres_url, "SELECT count(DISTINCT dedupe_key) FROM events") == 2 * sent + 2

        postgres_cluster.stop()
        for attempt in range(4):  # connections land on either worker: each one answers "later"
            with (smtplib.SMTP("127.0.0.1", server.smtp, timeout=30) as smtp,
                  pytest.raises(smtplib.SMTPDataError) as refused):
                smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(900 + attempt))
            assert refused.value.smtp_code == 451
            assert refused.value.smtp_error.startswith(b"4.3.0")
            assert _status(server.http, "/notifications", document(950 + attempt)) == 503
            assert _status(server.http, "/healthz") == 503

        postgres_cluster.start()
        wait_until(lambda: all(_status(server.http, "/healthz") == 200 for _ in range(4)), 60, "/healthz to recover")
        for attempt in range(4):
            send_mail(server.smtp, notification(900 + attempt))
            assert post(server.http, document(950 + attempt)) == 200
        assert _pg_count(postgres_url, "SELECT count(*) FROM events") == 2 * sent + 2 + 8
        assert server.stop() == 0
    finally:
        if not postgres_cluster.running():
            postgres_cluster.start()
    assert PASSWORD not in server.text()


def test_a_sigterm_while_the_workers_start_stops_the_group_cleanly(tmp_path: Path) -> None:
    # The parent binds the sockets before its workers run, so a client (or systemd) can see the port
    # open and send SIGTERM before the server has started: that must be a clean stop, not a death by signal.
    smtp, http = free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT
    with (tmp_path / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhook", "serve", "--workers", "2", "--db", str(tmp_path / "mailhook.db"),
             "--smtp-listen", f"127.0.0.1:{smtp}", "--http-listen", f"127.0.0.1:{http}"],
            cwd=ROOT, env=environ | {"MAILHOOK_CONFIG": ""}, stdout=log, stderr=log,
        )
    try:
        wait_until(lambda: proc.poll() is not None or listening(smtp), 60, "the SMTP port open")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, (tmp_path / "serve.log").read_text(errors="replace")
        wait_until(lambda: not [p for p in descendants(proc.pid) if b"mailhook.group" in _cmdline(p)], 10,
                   "no worker left")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            names.append((task / "comm").read_text().rstrip("\n"))
    return names


def test_the_group_names_its_processes_and_threads_so_top_tells_them_apart(serve: type[Served]) -> None:
    server = serve(2)
    send_mail(server.smtp, notification(888_001))
    workers = server.workers()
    assert sorted(Path(f"/proc/{pid}/comm").read_text().rstrip("\n") for pid in workers) == [
        "mh-worker-0", "mh-worker-1"]
    parent = _thread_names(server.proc.pid)
    assert {"mh-writer", "mh-reader-0", "mh-reader-1"} <= set(parent), parent
    assert server.stop() == 0
