"""The backlog's claims on PostgreSQL: no two nodes extract the same pending delivery, and a dead node lets go."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from postgres_support import Cluster
from process_support import wait_until

from mailhook.errors import RetryLater
from mailhook.store.pg.connection import open_database
from mailhook.store.pg.pending import PgPendingQueue, PgPendingReader
from mailhook.store.target import PostgresTarget

pytestmark = pytest.mark.slow

HOLDER = """
import sys, time
from mailhook.store.pg.pending import PgPendingQueue
queue = PgPendingQueue(sys.argv[1])
print(",".join(str(i) for i, _ in queue.claim(0, 5)), flush=True)
time.sleep(600)
"""


@pytest.fixture
def pending(postgres_url: str) -> list[int]:
    """A migrated database with 20 deliveries stored `pending` and one stored; yields the pending ids."""
    conn = open_database(PostgresTarget(postgres_url, None))
    with conn.transaction():
        ids = [conn.execute(
            "INSERT INTO deliveries (channel, received_at, status, envelope_from, envelope_to, size, sha256, raw,"
            " remote_addr, event_count, duplicate_count) VALUES ('smtp', %s, %s, 'a@b.c', '[\"ops@example.com\"]',"
            " %s, 'x', %s, '127.0.0.1', 0, 0) RETURNING id",
            (f"2026-12-04T10:00:{n:02d}.000Z", "stored" if n == 3 else "pending", 100 + n, b"raw %d" % n),
        ).fetchone()[0] for n in range(21)]
    conn.close()
    return [i for n, i in enumerate(ids) if n != 3]


@pytest.fixture
def queues(postgres_url: str) -> Iterator[list[PgPendingQueue]]:
    made: list[PgPendingQueue] = []
    yield made
    for queue in made:
        queue.close()


def _queue(made: list[PgPendingQueue], url: str) -> PgPendingQueue:
    made.append(PgPendingQueue(url))
    return made[-1]


def test_two_nodes_never_claim_the_same_pending_delivery(postgres_url: str, pending: list[int],
                                                         queues: list[PgPendingQueue]) -> None:
    one, two = _queue(queues, postgres_url), _queue(queues, postgres_url)
    first = one.claim(0, 8)
    assert [i for i, _ in first] == pending[:8]
    # Windows of 4 that `one` holds whole are passed: `two` gets the first 4 free ones, not nothing.
    assert [i for i, _ in two.claim(0, 4)] == pending[8:12]
    second = two.claim(0, 100)
    assert [i for i, _ in second] == pending[12:]  # the stored one is not pending; claims are skipped
    assert one.claim(0, 100) == []  # not even its own claims twice
    assert one.count() == two.count() == 20
    one.release([i for i, _ in first[:3]])
    assert [i for i, _ in two.claim(0, 100)] == pending[:3]


def test_a_node_that_closes_or_is_killed_lets_its_claims_go(postgres_url: str, pending: list[int],
                                                            queues: list[PgPendingQueue]) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, postgres_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        held = [int(i) for i in holder.stdout.readline().strip().split(",")]
        assert held == pending[:5]
        other = _queue(queues, postgres_url)
        assert [i for i, _ in other.claim(0, 100)] == pending[5:]
        holder.kill()
        holder.wait()
        started = time.monotonic()
        assert wait_until(lambda: [i for i, _ in other.claim(0, 100)], 5, "the killed node's claims") == held
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    closing = _queue(queues, postgres_url)
    other.close()
    assert [i for i, _ in closing.claim(0, 100)] == pending


def test_a_claimed_delivery_is_read_back_as_received_while_still_pending(postgres_url: str, pending: list[int],
                                                                        queues: list[PgPendingQueue]) -> None:
    reader = PgPendingReader(postgres_url)
    try:
        found = reader.read([*pending[:2], pending[-1] + 1000])
        assert [i for i, _ in found] == pending[:2]
        delivery = found[0][1]
        assert (delivery.channel, delivery.raw, delivery.kind, delivery.envelope_to, delivery.received_at) == (
            "smtp", b"raw 0", "email", ("ops@example.com",), "2026-12-04T10:00:00.000Z")
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("UPDATE deliveries SET status = 'stored' WHERE id = %s", (pending[0],))
        assert [i for i, _ in reader.read(pending[:2])] == pending[1:2]  # completed meanwhile: not extracted again
    finally:
        reader.close()


def test_claims_fail_for_now_while_the_database_is_down_and_work_again_after(
    postgres_cluster: Cluster, postgres_url: str, pending: list[int], queues: list[PgPendingQueue]
) -> None:
    queue = _queue(queues, postgres_url)
    assert len(queue.claim(0, 4)) == 4
    postgres_cluster.stop()
    try:
        with pytest.raises(RetryLater, match="database unreachable"):
            queue.claim(0, 100)
        with pytest.raises(RetryLater):
            queue.count()
    finally:
        postgres_cluster.start()
    # The session ended with the server, and its claims with it: all are claimable again.
    assert [i for i, _ in queue.claim(0, 100)] == pending
