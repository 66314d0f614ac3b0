"""The IMAP folder lease on PostgreSQL: one holder at a time, and let go when its holder dies, hangs or is cut off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from postgres_support import Cluster
from process_support import wait_until

from mailhook.errors import RetryLater
from mailhook.store.pg.lease import AdvisoryLease, lease_key

pytestmark = pytest.mark.slow

HOLDER = """
import sys, time
from mailhook.store.pg.lease import AdvisoryLease
lease = AdvisoryLease(sys.argv[1], "alice@imap", "INBOX", ping=0.5, timeout=4.0)
assert lease.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def leases(postgres_url: str) -> Iterator[list[AdvisoryLease]]:
    made: list[AdvisoryLease] = []
    yield made
    for lease in made:
        lease.release()


def _lease(made: list[AdvisoryLease], url: str, folder: str = "INBOX", **kwargs: float) -> AdvisoryLease:
    lease = AdvisoryLease(url, "alice@imap", folder, **kwargs)
    made.append(lease)
    return lease


def _holder(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_folder_is_leased_to_one_holder_at_a_time(postgres_url: str, leases: list[AdvisoryLease]) -> None:
    first, second = _lease(leases, postgres_url), _lease(leases, postgres_url)
    assert first.acquire() and first.held()
    assert not second.acquire() and not second.held()
    assert first.acquire()  # asking again while holding it changes nothing
    assert _lease(leases, postgres_url, "Other").acquire()  # another folder has a lease of its own
    first.release()
    assert not first.held()
    assert second.acquire() and second.held()


def test_the_key_is_stable_and_tells_folders_and_accounts_apart() -> None:
    assert lease_key("alice@imap", "INBOX") == lease_key("alice@imap", "INBOX")
    assert len({lease_key("alice@imap", "INBOX"), lease_key("alice@imap", "INBOX2"),
                lease_key("bob@imap", "INBOX"), lease_key("alice@imapINBOX", "")}) == 4
    assert -(2**63) <= lease_key("a", "b") < 2**63


def test_a_holder_killed_with_9_lets_go_at_once(postgres_url: str, leases: list[AdvisoryLease]) -> None:
    holder = _holder(postgres_url)
    waiting = _lease(leases, postgres_url)
    try:
        assert not waiting.acquire()
        _end(holder)
        started = time.monotonic()
        wait_until(waiting.acquire, 5, "the lease free after its holder was killed")
        assert time.monotonic() - started < 5
    finally:
        _end(holder)


def test_a_frozen_holder_loses_the_lease_to_the_server_timeout(postgres_url: str, leases: list[AdvisoryLease]) -> None:
    # A stopped process still has a live TCP connection (its kernel answers); only its silence gives it away.
    holder = _holder(postgres_url)
    waiting = _lease(leases, postgres_url)
    try:
        assert not waiting.acquire()
        os.kill(holder.pid, signal.SIGSTOP)
        started = time.monotonic()
        wait_until(waiting.acquire, 15, "the lease free after its holder froze", interval=0.2)
        assert time.monotonic() - started >= 2  # it was not free before the holder fell silent long enough
    finally:
        _end(holder)


def test_a_frozen_holder_that_wakes_knows_at_once_that_it_lost_the_lease(postgres_url: str,
                                                                         leases: list[AdvisoryLease]) -> None:
    lease = _lease(leases, postgres_url, ping=60.0, timeout=2.0)  # no ping comes in time: as if frozen
    assert lease.acquire()
    time.sleep(1.2)
    assert not lease.held()


def test_a_holder_whose_session_is_ended_notices_and_another_takes_over(
    postgres_url: str, leases: list[AdvisoryLease]
) -> None:
    holder, waiting = _lease(leases, postgres_url, ping=0.2), _lease(leases, postgres_url)
    assert holder.acquire()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'mailhook imap"
                      " lease' AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')"
                      " AND pid <> pg_backend_pid() LIMIT 1")
    wait_until(lambda: not holder.held(), 5, "the holder noticing its session ended")
    assert waiting.acquire()
    assert not holder.acquire()


def test_a_restarted_database_ends_the_lease_and_grants_it_again_once_back(
    postgres_cluster: Cluster, postgres_url: str, leases: list[AdvisoryLease]
) -> None:
    lease = _lease(leases, postgres_url, ping=0.2)
    assert lease.acquire()
    postgres_cluster.stop()
    try:
        wait_until(lambda: not lease.held(), 5, "the lease lost with the database")
        with pytest.raises(RetryLater, match="database unreachable"):
            lease.acquire()
    finally:
        postgres_cluster.start()
    assert lease.acquire() and lease.held()
