"""Several `mailhook serve` nodes on one PostgreSQL: every acknowledged notification stored once, whatever fails.

Each test runs real nodes (subprocesses) against the throwaway cluster and
feeds them the same corpus through both at once, over SMTP and HTTP, with
clients that retry until acknowledged and move to the other node when one
refuses or is gone, as MTAs and load balancers do. The corpus is every
fixture plus distinct generated notifications (bench/distinct.py).
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nodes_support import (
    Feeder,
    Item,
    Node,
    acked,
    distinct_items,
    expected_keys,
    feed,
    fixture_items,
    join,
    reap,
    shuffled,
    split,
)
from postgres_support import Cluster
from process_support import read_all, wait_until


@pytest.fixture(autouse=True)
def _no_node_left() -> Iterator[None]:
    yield
    reap()


pytestmark = pytest.mark.slow

DEADLINE = 120.0
# What every store must agree on, event by event; and the figures analysts read.
# (An event without a time of its own takes the time it was received: the same rule, another moment.)
EVENTS = ("SELECT dedupe_key, event_type, final_result, CASE WHEN event_time = received_at THEN 'received' ELSE"
          " event_time END, from_e164, to_e164, resource_id, broadcast_id, duration, billed_amount FROM events")
TOTALS = "SELECT day, campaign_id, event_type, final_result, events, tries, duration FROM event_totals"


def _rows(db: str | Path, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(db, Path):
        with closing(sqlite3.connect(db)) as conn:
            return sorted((tuple(row) for row in conn.execute(sql)), key=repr)
    with psycopg.connect(db) as conn:
        return sorted((tuple(int(v) if isinstance(v, Decimal) else v for v in row)
                       for row in conn.execute(sql).fetchall()), key=repr)


def _has_totals(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('event_totals') IS NOT NULL").fetchone()
        return bool(row and row[0])


def _check(feeders: list[Feeder], items: list[Item]) -> None:
    for feeder in feeders:
        assert feeder.tally.unfinished == [], f"not acknowledged by the deadline: {feeder.tally}"
        assert feeder.tally.permanent == [], feeder.tally
        assert sorted(feeder.tally.acked) == sorted(i.key for i in feeder.items)


def _reference(tmp_path: Path, items: list[Item]) -> Path:
    """The same corpus through one node on SQLite, once."""
    db = tmp_path / "reference.db"
    node = Node("sqlite", str(db), tmp_path / "reference.log")
    node.start()
    deadline = time.monotonic() + DEADLINE
    feeders = [Feeder([node], [i for i in items if i.channel == channel], deadline) for channel in ("smtp", "http")]
    feed(feeders)
    join(feeders, deadline)
    assert node.terminate() == 0
    _check(feeders, items)
    return db


def _stored_once(url: str) -> None:
    """Every event once, nothing left pending, every delivery with its events or a reason."""
    with psycopg.connect(url) as conn:
        events, keys = conn.execute("SELECT count(*), count(DISTINCT dedupe_key) FROM events").fetchone() or (0, 0)
        assert events == keys
        assert conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone() == (0,)


def _both_ways(nodes: list[Node], items: list[Item], deadline: float) -> list[Feeder]:
    """Two clients per channel, each sending the whole corpus, one to each node first: every item arrives twice."""
    feeders = []
    for channel in ("smtp", "http"):
        mine = [i for i in items if i.channel == channel]
        feeders += [Feeder(nodes, shuffled(mine, 1), deadline, first=0), Feeder(nodes, shuffled(mine, 2), deadline,
                                                                                 first=1)]
    return feeders


def test_two_nodes_fed_the_same_corpus_store_each_notification_once_as_sqlite_does(
    tmp_path: Path, postgres_url: str
) -> None:
    items = fixture_items() + distinct_items(80, 80, seed=11)
    reference = _reference(tmp_path, items)
    nodes = [Node(name, postgres_url, tmp_path / f"{name}.log") for name in ("a", "b")]
    for node in nodes:
        node.start()
    deadline = time.monotonic() + DEADLINE
    feeders = _both_ways(nodes, items, deadline)
    feed(feeders)
    join(feeders, deadline)
    for node in nodes:
        assert node.terminate() == 0, node.tail()
    _check(feeders, items)
    # Both nodes took a share of the first tries.
    for node in nodes:
        assert "status=stored" in node.tail(10**9), f"node {node.name} stored nothing"
    _stored_once(postgres_url)
    assert _rows(postgres_url, EVENTS) == _rows(reference, EVENTS)
    assert _rows(postgres_url, "SELECT count(*) FROM attempts") == _rows(reference, "SELECT count(*) FROM attempts")
    quarantined = "SELECT message_id FROM deliveries WHERE status = 'quarantined' AND message_id IS NOT NULL"
    assert _rows(postgres_url, quarantined) == _rows(reference, quarantined)
    if _has_totals(postgres_url):
        assert _rows(postgres_url, TOTALS) == _rows(reference, TOTALS)


def _keys(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return sorted(row[0] for row in conn.execute("SELECT dedupe_key FROM events").fetchall())


def _wait_acked(feeders: list[Feeder], target: int, deadline: float) -> None:
    wait_until(lambda: acked(feeders) >= target or not any(f.is_alive() for f in feeders),
               max(1.0, deadline - time.monotonic()), f"{target} acknowledgements")


def _unhealthy(node: Node) -> dict[str, Any] | None:
    status, body = node.healthz()
    return body if status == 503 else None


@contextmanager
def _mid_data(node: Node) -> Iterator[socket.socket]:
    """Hold an SMTP session on `node` in the middle of a message's DATA (its end never sent)."""
    with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=30) as held:
        reader = held.makefile("rb")
        assert reader.readline().startswith(b"220")
        for command, code in ((b"HELO held", b"250"), (b"MAIL FROM:<notifications@callfire.com>", b"250"),
                              (b"RCPT TO:<ops@example.com>", b"250"), (b"DATA", b"354")):
            held.sendall(command + b"\r\n")
            assert reader.readline().startswith(code)
        held.sendall(b"Subject: held mid-DATA\r\n\r\nthe end of this message is never sent\r\n")
        yield held


def _cut(held: socket.socket) -> bool:
    """Say whether the server closed `held` (EOF or reset) without accepting its message, within its timeout."""
    try:
        said = read_all(held)
    except TimeoutError:
        return False
    return not said.startswith(b"250")


def test_a_node_killed_with_9_under_load_loses_nothing_it_acknowledged(tmp_path: Path, postgres_url: str) -> None:
    # acknowledge = received: the killed node leaves deliveries pending; the other node's backlog takes them up.
    items = distinct_items(300, 150, seed=21)
    expected = expected_keys(items)
    nodes = [Node(name, postgres_url, tmp_path / f"{name}.log", acknowledge="received") for name in ("a", "b")]
    for node in nodes:
        node.start()
    deadline = time.monotonic() + DEADLINE
    feeders = split(items, nodes, deadline)
    feed(feeders)
    _wait_acked(feeders, len(items) // 4, deadline)
    # The kill must find a client mid-stream on node a: one held in the middle of its message's DATA for certain
    # (a feeder may just have moved on to node b after a refusal under load), and feeders sending to it if any.
    wait_until(lambda: any(f.is_alive() and f.at % len(nodes) == 0 for f in feeders), 30,
               "a client still sending to node a")
    with _mid_data(nodes[0]) as held:
        nodes[0].kill()
        assert _cut(held), "the kill cut no session: the one held mid-DATA on node a still answers"
    before = acked(feeders)
    # The survivor takes the load alone, and extracts what the dead node acknowledged but left pending.
    _wait_acked(feeders, before + len(items) // 4, deadline)
    nodes[0].start()
    join(feeders, deadline)
    for node in nodes:
        assert node.terminate() == 0, node.tail()
    _check(feeders, items)
    _stored_once(postgres_url)
    assert _keys(postgres_url) == sorted(expected)


def test_postgresql_stopped_under_load_is_answered_451_and_503_and_every_node_recovers_by_itself(
    tmp_path: Path, postgres_cluster: Cluster, postgres_url: str
) -> None:
    items = distinct_items(300, 150, seed=31)
    expected = expected_keys(items)
    nodes = [Node(name, postgres_url, tmp_path / f"{name}.log") for name in ("a", "b")]
    for node in nodes:
        node.start()
    pids = [node.proc.pid for node in nodes if node.proc]
    deadline = time.monotonic() + DEADLINE
    feeders = split(items, nodes, deadline)
    feed(feeders)
    _wait_acked(feeders, len(items) // 4, deadline)
    postgres_cluster.stop("fast")
    try:
        for node in nodes:
            body = wait_until(lambda n=node: _unhealthy(n), 15, f"node {node.name}'s /healthz saying 503")
            assert "database" in body["reason"], body
        stalled = acked(feeders)
        time.sleep(2)
        assert acked(feeders) - stalled <= len(feeders), "acknowledged while the database was down"
    finally:
        postgres_cluster.start()
    for node in nodes:
        wait_until(lambda n=node: n.healthz()[0] == 200, 30, f"node {node.name} healthy again")
    join(feeders, deadline)
    assert [node.proc.pid for node in nodes if node.proc] == pids and all(n.alive() for n in nodes)
    for node in nodes:
        assert node.terminate() == 0, node.tail()
    _check(feeders, items)
    refusals = {code for f in feeders for code in f.tally.temporary}
    assert any(code.startswith("451") for code in refusals), refusals
    assert "503" in refusals, refusals
    _stored_once(postgres_url)
    assert _keys(postgres_url) == sorted(expected)
