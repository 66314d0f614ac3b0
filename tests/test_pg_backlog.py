"""The extraction backlog on PostgreSQL: backlogs of several nodes share the pending deliveries, each extracted once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg
import pytest
from smtp_support import notification

from mailhook.backlog import Backlog
from mailhook.models import Delivery, utcnow
from mailhook.pending_extraction import close_readers, extract_pending
from mailhook.pipeline import Pipeline
from mailhook.store.pg.writer import PgWriter
from mailhook.store.rows import Completion
from mailhook.store.target import PostgresTarget

pytestmark = pytest.mark.slow

COUNT = 120


def _store_pending(url: str) -> None:
    writer = PgWriter(PostgresTarget(url, None))
    try:
        futures = [writer.submit(Delivery(channel="smtp", raw=notification(5_000_000 + n), received_at=utcnow(),
                                          kind="email", envelope_from="a@b.c", envelope_to=("ops@example.com",)),
                                 None) for n in range(COUNT)]
        for future in futures:
            assert future.result(timeout=60).status == "pending"
    finally:
        writer.close()


def test_two_nodes_backlogs_extract_every_pending_delivery_once_between_them(postgres_url: str) -> None:
    _store_pending(postgres_url)
    extracted: dict[str, list[int]] = {"a": [], "b": []}
    lock = threading.Lock()

    def counting(node: str):  # type: ignore[no-untyped-def]
        def extract(source: Path | str, ids: Sequence[int],
                    subscriptions: Mapping[int, str]) -> list[tuple[Delivery, Completion]]:
            found = extract_pending(source, ids, subscriptions)
            time.sleep(0.05)  # as a real extraction takes a while: the other node claims meanwhile
            with lock:
                extracted[node] += [completion.delivery_id for _, completion in found]
            return found
        return extract

    async def main() -> list[float]:
        writers = [PgWriter(PostgresTarget(postgres_url, None)) for _ in range(2)]
        backlogs = [Backlog(Pipeline(writer), extract=counting(node)) for writer, node in zip(writers, "ab",
                                                                                              strict=True)]
        try:
            assert all(backlog.queue.shared for backlog in backlogs)
            for backlog in backlogs:
                backlog.start()
            while sum(len(ids) for ids in extracted.values()) < COUNT:
                await asyncio.sleep(0.05)
            # Each counts again within a rescan (`pending()` never queries from the loop): nothing left.
            for _ in range(100):
                if [backlog.pending() for backlog in backlogs] == [0.0, 0.0]:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.5)  # and a rescan each finds nothing more to take
            return [backlog.pending() for backlog in backlogs]
        finally:
            for backlog in backlogs:
                await backlog.close(10)
            for writer in writers:
                writer.close()
            close_readers()  # extract_pending's readers live as long as their (worker) process: here, this test's

    pending = asyncio.run(asyncio.wait_for(main(), 60))
    a, b = extracted["a"], extracted["b"]
    assert a and b, "one backlog took everything: they did not run side by side"
    assert not set(a) & set(b), "a pending delivery was extracted by both nodes"
    assert len(a) + len(b) == COUNT
    assert pending == [0.0, 0.0]
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FROM deliveries"
                            ).fetchone() == (0, COUNT)
        assert conn.execute("SELECT count(*), count(DISTINCT dedupe_key) FROM events").fetchone() == (COUNT, COUNT)
