"""The extraction backlog: with acknowledge = "received", 250 once the raw bytes are durable, events moments later."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import BackgroundServer, StartServer, make_settings
from process_support import ALLOW_ROOT, descendants, free_port, wait_until
from smtp_support import client, locked, notification, rows

from mailhook.backlog import Backlog
from mailhook.models import Delivery, Receipt
from mailhook.pending_extraction import extract_pending
from mailhook.pipeline import Pipeline
from mailhook.server import Runtime
from mailhook.store.write import Store
from mailhook.store.writer import Writer
from mailhook.workers import worker_pool

pytestmark = pytest.mark.slow

RECEIVED = {"acknowledge": "received"}


def send(smtp: smtplib.SMTP, raw: bytes) -> tuple[int, bytes]:
    """Send one message step by step and return the server's answer to its DATA."""
    smtp.ehlo_or_helo_if_needed()
    assert smtp.mail("notifications@callfire.com")[0] == 250
    assert smtp.rcpt("ops@example.com")[0] == 250
    return smtp.data(raw)


def settled(db: Path, timeout: float = 30.0) -> list[tuple[object, ...]]:
    """Wait until no delivery is pending; return (id, status, message_id, event_count) of each."""
    wait_until(lambda: rows(db, "SELECT count(*) FROM deliveries WHERE status = 'pending'") == [(0,)], timeout,
               "no delivery pending")
    return rows(db, "SELECT id, status, message_id, event_count FROM deliveries ORDER BY id")


def database(runtime: Runtime) -> Path:
    assert runtime.settings.storage.db is not None
    return runtime.settings.storage.db


def test_received_mode_answers_pending_and_then_stores_every_event(start_server: StartServer) -> None:
    runtime = start_server(smtp=RECEIVED)
    with client(runtime) as smtp:
        answers = [send(smtp, notification(70_000 + n)) for n in range(20)]
    assert all(code == 250 and text.endswith(b" pending") for code, text in answers)
    stored = settled(database(runtime))
    assert [status for _, status, _, _ in stored] == ["stored"] * 20
    assert sorted(m for _, _, m, _ in stored) == sorted(f"<{70_000 + n}.notify@callfire.test>" for n in range(20))
    assert rows(database(runtime), "SELECT count(DISTINCT resource_id) FROM events") == [(20,)]
    # The events carry the time the delivery was received, as inline storage gives them.
    assert rows(database(runtime), "SELECT count(*) FROM events JOIN deliveries d ON d.id = delivery_id "
                                   "WHERE events.received_at != d.received_at") == [(0,)]


def test_received_mode_keeps_an_unreadable_email_quarantined_with_its_bytes(start_server: StartServer) -> None:
    runtime = start_server(smtp=RECEIVED)
    raw = b"Subject: hello\r\nMessage-ID: <prose@x>\r\n\r\nJust words, no notification.\r\n"
    with client(runtime) as smtp:
        assert send(smtp, raw)[0] == 250
    [(_, status, message_id, events)] = settled(database(runtime))
    assert (status, message_id, events) == ("quarantined", "<prose@x>", 0)
    [(error, kept)] = rows(database(runtime), "SELECT error, raw FROM deliveries")
    assert error and kept == raw


def test_received_mode_stores_a_redelivery_as_a_duplicate_without_a_second_copy(start_server: StartServer) -> None:
    runtime = start_server(smtp=RECEIVED)
    raw = notification(71_000)
    with client(runtime) as smtp:
        send(smtp, raw)
        send(smtp, raw)
    assert [status for _, status, _, _ in settled(database(runtime))] == ["stored", "duplicate"]
    assert rows(database(runtime), "SELECT raw IS NULL FROM deliveries ORDER BY id") == [(0,), (1,)]
    assert rows(database(runtime), "SELECT count(*) FROM events") == [(1,)]


@pytest.mark.parametrize("acknowledge", ["stored", "received"])
def test_deliveries_an_earlier_run_left_pending_are_extracted_at_start(
    start_server: StartServer, tmp_path: Path, acknowledge: str
) -> None:
    db = tmp_path / "mailhook.db"
    store = Store(db)
    # What a run killed right after acknowledging leaves behind: raw bytes, status pending.
    leftover = [Delivery("smtp", notification(72_000 + n), "2026-01-01T00:00:00Z", envelope_to=("ops@example.com",))
                for n in range(5)]
    receipts = store.write([(delivery, None) for delivery in leftover])
    store.close()
    assert {r.status for r in receipts} == {"pending"}  # type: ignore[union-attr]
    start_server(smtp={"acknowledge": acknowledge})
    assert [status for _, status, _, _ in settled(db)] == ["stored"] * 5
    assert rows(db, "SELECT count(*) FROM events") == [(5,)]


def test_stopping_extracts_what_was_acknowledged_before_exiting(tmp_path: Path) -> None:
    server = BackgroundServer(make_settings(tmp_path / "mailhook.db", smtp=RECEIVED), {})
    runtime = server.start()
    try:
        with client(runtime) as smtp:
            for n in range(30):
                send(smtp, notification(73_000 + n))
    finally:
        server.stop()  # as SIGTERM does: returns once the server has finished
    db = tmp_path / "mailhook.db"
    assert rows(db, "SELECT count(*) FROM deliveries WHERE status = 'pending'") == [(0,)]
    assert rows(db, "SELECT count(*) FROM events") == [(30,)]


def extract_or_die(path: Path, ids: Sequence[int], subscriptions: Mapping[int, str]) -> list[tuple[Delivery, Any]]:
    """Extract as the worker does, but die as a crashing worker would on a delivery that says so."""
    found = extract_pending(path, ids, subscriptions)
    if any(b"KILL-THE-WORKER" in delivery.raw for delivery, _ in found):
        os._exit(70)
    return found


def test_a_delivery_that_kills_its_worker_is_quarantined_and_the_others_are_stored(tmp_path: Path) -> None:
    db = tmp_path / "mailhook.db"
    writer = Writer(db)
    received = "2026-01-01T00:00:00Z"
    poison = Delivery("smtp", b"Subject: KILL-THE-WORKER\r\n\r\nKILL-THE-WORKER\r\n", received)
    deliveries = [Delivery("smtp", notification(75_000), received), poison,
                  *(Delivery("smtp", notification(75_000 + n), received) for n in (1, 2))]
    for delivery in deliveries:
        writer.submit(delivery, None).result()
    receipts: list[Receipt] = []

    async def run_backlog() -> None:
        pipeline = Pipeline(writer, {}, listeners=[lambda delivery, receipt, elapsed: receipts.append(receipt)])
        backlog = Backlog(pipeline, pool=worker_pool(1), workers=1, extract=extract_or_die)
        backlog.start()
        await backlog.close(60)  # a stop first extracts everything pending
        assert backlog.pool is not None
        backlog.pool.shutdown()

    try:
        asyncio.run(run_backlog())
    finally:
        writer.close()
    assert rows(db, "SELECT status, error FROM deliveries ORDER BY id") == [
        ("stored", None), ("quarantined", "extraction crashed its worker process"), ("stored", None), ("stored", None)
    ]
    assert rows(db, "SELECT raw FROM deliveries WHERE id = 2") == [(poison.raw,)]
    assert sorted(r.delivery_id for r in receipts) == [1, 2, 3, 4]


def test_a_killed_extraction_worker_is_replaced(start_server: StartServer) -> None:
    runtime = start_server(smtp=RECEIVED)
    with client(runtime) as smtp:
        send(smtp, notification(74_000))
    settled(database(runtime))
    backlog = runtime.backlog
    assert backlog is not None and backlog.pool is not None
    killed = set(backlog.pool._processes)  # type: ignore[attr-defined]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    with client(runtime) as smtp:
        for n in range(1, 6):
            assert send(smtp, notification(74_000 + n))[0] == 250
    assert [status for _, status, _, _ in settled(database(runtime))] == ["stored"] * 6
    assert rows(database(runtime), "SELECT count(*) FROM events") == [(6,)]
    assert backlog.pool is not None and set(backlog.pool._processes).isdisjoint(killed)  # type: ignore[attr-defined]


def test_killing_mailhook_with_sigkill_leaves_no_extraction_process_behind(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | {"MAILHOOK_CONFIG": ""} | ALLOW_ROOT
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailhook", "serve", "--db", str(tmp_path / "m.db"), "--smtp-listen",
         f"127.0.0.1:{port}", "--http-listen", "", "--smtp-acknowledge", "received"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def connected() -> smtplib.SMTP:
            assert proc.poll() is None, f"mailhook serve exited with {proc.returncode}"
            return smtplib.SMTP("127.0.0.1", port, timeout=30)

        with wait_until(connected, 30, "mailhook's SMTP door") as smtp:
            assert send(smtp, notification(76_000))[0] == 250
        settled(tmp_path / "m.db")
        helpers = descendants(proc.pid)
        assert helpers, "no fork server or worker process found"
    finally:
        proc.kill()
        proc.wait()
    # The fork server and its worker are not mailhook's children's children for ever: they go too.
    def alive() -> list[int]:
        return [pid for pid in helpers if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]]

    wait_until(lambda: not alive(), 10, f"helpers {helpers} gone after mailhook was killed")


@pytest.mark.slow
def test_a_stop_under_load_that_signals_every_process_kills_no_extraction_worker(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | {"MAILHOOK_CONFIG": ""} | ALLOW_ROOT
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        # Its own process group, so that a signal to the group reaches the fork server and the
        # workers too, as systemd's stop signals every process of the service's cgroup.
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhook", "serve", "--db", str(tmp_path / "m.db"), "--smtp-listen",
             f"127.0.0.1:{port}", "--http-listen", "", "--smtp-acknowledge", "received"],
            env=env, stderr=err, start_new_session=True,
        )
    stop = threading.Event()
    accepted: list[int] = []

    def load(first: int) -> None:
        # Large enough that extraction lags behind the 250s: deliveries are pending at the stop.
        padding = b"\n" + (b"-" * 76 + b"\n") * 6000
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                for number in range(first, first + 10_000):
                    if stop.is_set():
                        return
                    smtp.sendmail("n@callfire.com", ["ops@example.com"], notification(number) + padding)
                    accepted.append(number)
        except (smtplib.SMTPException, OSError):
            return  # the server stopped taking mail: expected

    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            return b"smtp listening" in log.read_bytes()

        wait_until(up, 60, "mailhook serve listening")
        senders = [threading.Thread(target=load, args=(n * 100_000,)) for n in range(1, 4)]
        for sender in senders:
            sender.start()

        def taking_mail() -> bool:
            assert proc.poll() is None, log.read_text()
            return len(accepted) >= 60

        wait_until(taking_mail, 60, "60 messages accepted")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for sender in senders:
        sender.join(timeout=60)
    text = log.read_text()
    assert "extraction worker died" not in text, text
    assert "Traceback" not in text, text
    # Nothing acknowledged was lost: each is stored, or pending for the next start.
    stored = rows(tmp_path / "m.db", "SELECT count(*) FROM deliveries WHERE status IN ('stored', 'pending')")
    assert stored[0][0] >= len(accepted)


def test_events_that_cannot_be_stored_yet_are_retried_until_they_are(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = start_server(smtp=RECEIVED, storage={"busy_timeout": 0.2})
    with client(runtime) as smtp:
        assert send(smtp, notification(77_000))[0] == 250
        # Before the backlog's first look (it lingers 50 ms): its commit will find the database locked.
        with locked(database(runtime)):
            wait_until(lambda: "events of delivery 1 not stored" in caplog.text, 30, "the backlog's failed try")
            assert rows(database(runtime), "SELECT status FROM deliveries") == [("pending",)]
    assert [status for _, status, _, _ in settled(database(runtime))] == ["stored"]
    assert rows(database(runtime), "SELECT count(*) FROM events") == [(1,)]
    assert "events of delivery 1 not stored" in caplog.text


def test_a_chunks_events_are_answered_together_with_one_wake_up_of_the_loop(tmp_path: Path) -> None:
    from loop_support import WakeUps

    writer = Writer(tmp_path / "m.db")
    pipeline = Pipeline(writer)
    deliveries = [Delivery("smtp", notification(78_000 + n), "2026-12-05T19:00:00.000000Z",
                           envelope_from="a@example.com", envelope_to=("ops@example.com",)) for n in range(12)]
    for delivery in deliveries:
        assert writer.submit(delivery, None).result().status == "pending"

    async def main() -> int:
        backlog = Backlog(pipeline)  # no pool: the chunk is extracted in a thread
        wakeups = WakeUps(asyncio.get_running_loop())
        backlog.start()
        await backlog.close(30)  # takes up what is pending, then stops
        return wakeups.count

    try:
        # One chunk of 12: a few wake-ups for its claim, extraction, events and release, the next (empty)
        # claim and the queue's close (7), never one per delivery (18 when each one's events woke it).
        assert asyncio.run(main()) < len(deliveries)
    finally:
        writer.close()
    assert rows(tmp_path / "m.db", "SELECT status, count(*) FROM deliveries GROUP BY status") == [("stored", 12)]
