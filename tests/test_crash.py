"""Crash safety: kill -9 a real `mailhook serve` again and again while clients deliver; nothing acknowledged is lost.

The clients behave like an MTA: each message is retried until the server
answers 250. Whatever the moment of the kill, every acknowledged Message-ID
must be in `deliveries` afterwards and every notification must have exactly
one event, however often it was redelivered.
"""

from __future__ import annotations

import os
import random
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT, free_port, listening, wait_until
from smtp_support import notification

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DELIVERIES = 2000
CLIENTS = 4
KILLS = 4
DEADLINE = 100.0  # seconds; every loop below gives up by then


class Server:
    """`python -m mailhook serve` as a subprocess on a fixed port, restartable after a kill."""

    def __init__(self, db: Path, port: int, log: Path, acknowledge: str, workers: int) -> None:
        self.db, self.port, self.log, self.acknowledge, self.workers = db, port, log, acknowledge, workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, deadline: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT
        env["MAILHOOK_CONFIG"] = ""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailhook", "serve", "--db", str(self.db),
                 "--smtp-listen", f"127.0.0.1:{self.port}", "--http-listen", "", "--smtp-acknowledge",
                 self.acknowledge, "--workers", str(self.workers)],
                cwd=ROOT, env=env, stdout=log, stderr=log,
            )
        self.starts += 1
        proc = self.proc

        def up() -> bool:
            assert proc.poll() is None, f"mailhook serve exited with {proc.returncode}:\n{self._tail()}"
            return listening(self.port)

        wait_until(up, max(0.0, deadline - time.monotonic()), f"mailhook serve listening on {self.port}")

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"server died on its own:\n{self._tail()}"
        self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class Client(threading.Thread):
    """Deliver messages one after another over one session, retrying each until 250 (as an MTA would)."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], acked: list[str], deadline: float) -> None:
        super().__init__(daemon=True)
        self.port, self.messages, self.acked, self.deadline = port, messages, acked, deadline
        self.retries = 0
        self.failure: str | None = None

    def run(self) -> None:
        smtp: smtplib.SMTP | None = None
        for message_id, raw in self.messages:
            while True:
                if time.monotonic() > self.deadline:
                    self.failure = f"gave up on {message_id} at the deadline"
                    return
                try:
                    if smtp is None:
                        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
                    smtp.sendmail("notifications@callfire.com", ["ops@example.com"], raw)
                except smtplib.SMTPResponseException as exc:
                    if exc.smtp_code >= 500:
                        self.failure = f"{message_id}: permanent {exc.smtp_code} {exc.smtp_error!r}"
                        return
                    smtp = _drop(smtp)
                except (smtplib.SMTPException, OSError):
                    smtp = _drop(smtp)
                else:
                    self.acked.append(message_id)  # list.append is atomic; the killer reads len()
                    break
                self.retries += 1
                time.sleep(0.02)
        _drop(smtp)


def _drop(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        with suppress(OSError):
            smtp.close()
    return None


# "received": the 250 comes once the raw bytes are durable, the events after it (mailhook.backlog).
# In one process, and with two worker processes around the parent's writer (kill -9 hits the parent).
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("acknowledge", ["stored", "received"])
def test_kill_9_at_random_moments_loses_no_acknowledged_delivery_and_duplicates_no_event(
    tmp_path: Path, acknowledge: str, workers: int
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    deadline = time.monotonic() + DEADLINE
    db, log = tmp_path / "mailhook.db", tmp_path / "serve.log"
    # A fixed port, not 0: the restarted server must come back on the same one.
    server = Server(db, free_port(), log, acknowledge, workers)
    server.start(deadline)

    messages = [(f"<crash-{n}@callfire.test>", notification(900_000_000 + n, message_id=f"<crash-{n}@callfire.test>"))
                 for n in range(DELIVERIES)]
    acked: list[str] = []
    clients = [Client(server.port, messages[i::CLIENTS], acked, deadline) for i in range(CLIENTS)]
    for client in clients:
        client.start()

    kills = 0
    while kills < KILLS and time.monotonic() < deadline:
        # Kill after a random amount of progress since the last start, so each kill hits live traffic.
        target = len(acked) + rng.randrange(50, 350)
        while len(acked) < target and any(c.is_alive() for c in clients) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.001, 0.02))
        if not any(c.is_alive() for c in clients):
            break
        server.kill()
        kills += 1
        time.sleep(rng.uniform(0, 0.3))  # clients meanwhile see refused connections and retry
        server.start(deadline)

    for client in clients:
        client.join(timeout=max(1.0, deadline - time.monotonic()))
    assert server.terminate() == 0
    context = f"(seed {seed}, {kills} kills, {sum(c.retries for c in clients)} retries)"
    assert kills >= 3, f"the clients finished before three kills {context}"
    # Each kill cut live sessions: some client had to retry after every one of them.
    assert sum(c.retries for c in clients) >= kills, context
    assert [c.failure for c in clients if c.failure] == [], context
    assert sorted(acked) == sorted(m for m, _ in messages), context

    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {row[0] for row in conn.execute("SELECT message_id FROM deliveries")}
        missing = set(acked) - stored
        assert not missing, f"acknowledged but not stored: {sorted(missing)[:5]} {context}"
        events, distinct, resources = conn.execute(
            "SELECT count(*), count(DISTINCT dedupe_key), count(DISTINCT resource_id) FROM events"
        ).fetchone()
        # One notification per acknowledged message: each exactly once, however often it was redelivered.
        assert (events, distinct, resources) == (len(set(acked)),) * 3, context
        lost_raw = conn.execute(
            "SELECT count(*) FROM deliveries WHERE status != 'duplicate' AND raw IS NULL"
        ).fetchone()[0]
        assert lost_raw == 0, context
        # A clean stop extracts everything acknowledged before it, including what kills left pending.
        assert conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone() == (0,), context
