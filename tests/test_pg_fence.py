"""A poller frozen inside a batch: writes never wait on it without bound, and the folder's next poller ends its hold."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from nodes_support import distinct_items
from process_support import wait_until

from mailhook.errors import RetryLater
from mailhook.extract import extract
from mailhook.models import Delivery, FolderPosition
from mailhook.store.pg.frozen import end_frozen
from mailhook.store.pg.lease import FENCE, AdvisoryLease, fence, folder_key
from mailhook.store.pg.write import PgStore
from mailhook.store.rows import rows
from mailhook.store.target import PostgresTarget

pytestmark = pytest.mark.slow

ACCOUNT, FOLDER = "alice@imap", "INBOX"
POSITION = FolderPosition(ACCOUNT, FOLDER, 1, 1)

# A writer's batch of the folder, frozen where no server timeout sees it: after its fence and key locks, between
# two messages of one exchange (a pipeline sent without its Sync), so its session stays "active" and not idle.
FROZEN_BATCH = """
import os, signal, sys
import psycopg
from mailhook.models import FolderPosition
from mailhook.store.pg.frozen import end_frozen
from mailhook.store.pg.lease import fence
from mailhook.store.pg.session import bound_transactions
from mailhook.store.pg.keys import KEY_LOCKS, lock_key

url, message_id = sys.argv[1], sys.argv[2]
conn = psycopg.connect(url, autocommit=False, application_name="mailhook")
bound_transactions(conn)
conn.execute("SET idle_in_transaction_session_timeout = 300")  # far below what the test waits: it never applies
conn.commit()
fence(conn, [FolderPosition("alice@imap", "INBOX", 1, 1)])
conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (KEY_LOCKS, lock_key("m:" + message_id)))
conn.pgconn.enter_pipeline_mode()
conn.pgconn.send_query_params(b"SELECT 1", None)
conn.pgconn.flush()
print(conn.pgconn.backend_pid, flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def _delivery() -> Delivery:
    raw = re.sub(rb"\r?\n", b"\r\n", distinct_items(1, 0, seed=41)[0].payload)  # a CallFire email, with attempts
    return Delivery(channel="imap", raw=raw, received_at="2026-12-05T00:00:00Z", kind="email", position=POSITION,
                    source="imap://alice@imap/INBOX;UIDVALIDITY=1/;UID=1")


@pytest.fixture
def frozen(postgres_url: str) -> Iterator[tuple[subprocess.Popen[str], int, Delivery]]:
    """A process frozen inside a batch of the folder's first message: (the process, its backend's pid, the message)."""
    delivery = _delivery()
    found = rows(extract(delivery.raw, kind="email"), len(delivery.raw))
    assert found.message_id
    proc = subprocess.Popen([sys.executable, "-c", FROZEN_BATCH, postgres_url, found.message_id],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    try:
        yield proc, pid, delivery
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def _session(url: str, pid: int) -> tuple[str, str] | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT state, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return (row[0], row[1]) if row else None


def _stored(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status")]


def test_a_batch_frozen_mid_exchange_is_not_ended_by_the_servers_idle_timeouts(
    postgres_url: str, frozen: tuple[subprocess.Popen[str], int, Delivery]
) -> None:
    proc, pid, _ = frozen
    wait_until(lambda: proc.poll() is None and _session(postgres_url, pid) == ("active", "ClientRead"), 10,
               "the batch frozen with its session active, waiting on its client")
    threading.Event().wait(1.0)  # past its idle_in_transaction_session_timeout (0.3 s): still there
    assert _session(postgres_url, pid) == ("active", "ClientRead")


def test_a_write_waiting_on_a_frozen_batch_gives_up_with_retry_later_after_its_lock_waits(
    postgres_url: str, frozen: tuple[subprocess.Popen[str], int, Delivery]
) -> None:
    _, pid, delivery = frozen
    # Frozen for less than the bound after which a writer ends it (frozen.FROZEN_AFTER): left alone.
    store = PgStore(PostgresTarget(postgres_url), lock_wait=0.2, frozen_after=3600.0)
    try:
        with pytest.raises(RetryLater, match="storage busy"):
            store.write([(delivery, extract(delivery.raw, kind="email"))])
    finally:
        store.close()
    assert _stored(postgres_url) == []
    assert _session(postgres_url, pid) == ("active", "ClientRead")


def test_a_write_that_meets_a_batch_frozen_past_the_bound_ends_it_and_stores(
    postgres_url: str, frozen: tuple[subprocess.Popen[str], int, Delivery], caplog: pytest.LogCaptureFixture
) -> None:
    _, pid, imap = frozen
    # The same message by SMTP (no folder: no poller would ever end the frozen batch): only its key locks meet.
    delivery = dataclasses.replace(imap, channel="smtp", position=None, source=None)
    wait_until(lambda: _session(postgres_url, pid) == ("active", "ClientRead"), 10, "the batch frozen mid-exchange")
    store = PgStore(PostgresTarget(postgres_url), lock_wait=0.2, frozen_after=0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="mailhook.store"):
            receipt = store.write([(delivery, extract(delivery.raw, kind="email"))])[0]
    finally:
        store.close()
    assert not isinstance(receipt, Exception) and receipt.status == "stored"
    assert f"ended session {pid}" in caplog.text and "frozen in the middle of an exchange" in caplog.text
    assert _session(postgres_url, pid) is None
    assert _stored(postgres_url) == [("stored", 1)]


def test_a_writer_of_another_role_leaves_a_frozen_session_alone_and_says_so_when_it_sees_it(
    weak_url: str, postgres_url: str, frozen: tuple[subprocess.Popen[str], int, Delivery],
    caplog: pytest.LogCaptureFixture
) -> None:
    _, pid, _ = frozen
    wait_until(lambda: _session(postgres_url, pid) == ("active", "ClientRead"), 10, "the batch frozen mid-exchange")
    # Another role sees no state of the superuser's sessions (without pg_read_all_stats), and may not end them.
    with psycopg.connect(weak_url, application_name="mailhook") as conn:
        assert end_frozen(conn, after=0.0) == 0
    with psycopg.connect(postgres_url, autocommit=True) as owner:
        owner.execute(f"GRANT pg_read_all_stats TO {urlsplit(weak_url).username}")
    with psycopg.connect(weak_url, application_name="mailhook") as conn, \
            caplog.at_level(logging.WARNING, logger="mailhook.store"):
        assert end_frozen(conn, after=0.0) == 0
    assert "may not be ended" in caplog.text
    assert _session(postgres_url, pid) == ("active", "ClientRead")


def test_the_folders_next_poller_ends_a_batch_frozen_past_the_grace_and_stores_the_message_once(
    postgres_url: str, frozen: tuple[subprocess.Popen[str], int, Delivery], caplog: pytest.LogCaptureFixture
) -> None:
    _, pid, delivery = frozen
    lease = AdvisoryLease(postgres_url, ACCOUNT, FOLDER, fence_grace=0.2)
    store = PgStore(PostgresTarget(postgres_url), lock_wait=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="mailhook.store"):
            assert lease.acquire()
        assert _session(postgres_url, pid) is None
        assert f"ended session {pid}" in caplog.text
        receipt = store.write([(delivery, extract(delivery.raw, kind="email"))])[0]
        assert not isinstance(receipt, Exception) and receipt.status == "stored"
        # Written again (the former poller, woken, retrying its batch): found stored, not stored twice.
        again = store.write([(delivery, extract(delivery.raw, kind="email"))])[0]
        assert not isinstance(again, Exception) and again.delivery_id == receipt.delivery_id
    finally:
        store.close()
        lease.release()
    assert _stored(postgres_url) == [("stored", 1)]


def test_a_batch_that_ends_within_the_grace_is_left_to_commit(postgres_url: str) -> None:
    lease = AdvisoryLease(postgres_url, ACCOUNT, FOLDER, fence_grace=60.0)
    taken: list[bool] = []
    with psycopg.connect(postgres_url) as batch:
        fence(batch, [POSITION])
        taker = threading.Thread(target=lambda: taken.append(lease.acquire()))
        taker.start()
        try:
            wait_until(lambda: _fence_waiters(postgres_url) == 1, 10, "the new poller waiting for the batch")
        finally:
            batch.commit()
            taker.join()
        assert batch.execute("SELECT 1").fetchone() == (1,)  # its session was not ended
    lease.release()
    assert taken == [True]


def _fence_waiters(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = %s::bigint::oid"
            " AND objid = (%s::bigint & 4294967295)::oid AND objsubid = 2",
            (FENCE, folder_key(ACCOUNT, FOLDER))).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def weak_url(postgres_url: str) -> Iterator[str]:
    """The URL of the test database as a role that may not end the superuser's sessions."""
    role = f"weak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'weak'")
    parts = urlsplit(postgres_url)
    yield urlunsplit(parts._replace(netloc=f"{role}:weak@{parts.hostname}:{parts.port}"))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")


def test_a_poller_that_may_not_end_the_frozen_batch_says_so_and_takes_the_lease(
    weak_url: str, postgres_url: str, frozen: tuple[subprocess.Popen[str], int, Delivery],
    caplog: pytest.LogCaptureFixture
) -> None:
    _, pid, _ = frozen
    lease = AdvisoryLease(weak_url, ACCOUNT, FOLDER, fence_grace=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="mailhook.store"):
            assert lease.acquire()
    finally:
        lease.release()
    assert "may not be ended" in caplog.text
    assert _session(postgres_url, pid) == ("active", "ClientRead")
