"""The channel between `serve`'s parent and a worker: one frame for a loop turn's deliveries, one for their answers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from smtp_support import notification

from mailhook.errors import RetryLater
from mailhook.extract import extract
from mailhook.group import wire
from mailhook.group.channel import Channel
from mailhook.group.remote import RemoteStorage
from mailhook.group.service import StoreService
from mailhook.metrics import Metrics
from mailhook.models import Delivery, Receipt
from mailhook.pipeline import Pipeline
from mailhook.store.rows import worker_rows
from mailhook.store.writer import Writer


def _delivery(text_id: int) -> Delivery:
    return Delivery("smtp", notification(text_id), "2026-12-04T21:00:00.000000Z", envelope_from="a@example.com",
                    envelope_to=("ops@example.com",), remote_addr="127.0.0.1")


def test_messages_sent_together_arrive_together_in_order_and_one_alone_as_before(
    pair: tuple[Channel, Channel],
) -> None:
    worker, parent = pair
    worker.send_all([("submit", 0, "a"), ("rejected", 0, "smtp", "size"), ("submit", 1, "b")])
    worker.send(("pong", 7, 0.0))
    assert parent.receive_all() == [("submit", 0, "a"), ("rejected", 0, "smtp", "size"), ("submit", 1, "b")]
    assert parent.receive_all() == [("pong", 7, 0.0)]
    worker.close()
    assert parent.receive_all() is None


def test_the_deliveries_of_one_loop_turn_reach_the_parent_in_one_frame(pair: tuple[Channel, Channel]) -> None:
    worker, parent = pair

    async def main() -> list[Receipt]:
        loop = asyncio.get_running_loop()
        storage = RemoteStorage(worker, on_ping=lambda _: None, on_lost=lambda: None, loop=loop)
        # The loop reads the answers itself: no thread of the worker's waits on the channel.
        assert "mailhook-remote-store" not in {thread.name for thread in threading.enumerate()}
        stored = [storage.submit(_delivery(n), None) for n in range(3)]  # one turn of the loop
        frame = await loop.run_in_executor(None, parent.receive_all)
        assert frame is not None
        assert [(kind, number) for kind, number, *_ in frame] == [("submit", 0), ("submit", 1), ("submit", 2)]
        # The delivery as its values (group.wire), the rows as theirs (None here: stored pending).
        assert [wire.delivery(values) for _, _, values, _ in frame] == [_delivery(n) for n in range(3)]
        assert [found for *_, found in frame] == [None, None, None]
        parent.send_all([("receipt", number, wire.receipt_values(Receipt(100 + number, "pending")))
                         for _, number, *_ in frame])
        receipts = await asyncio.gather(*(asyncio.wrap_future(future) for future in stored))
        storage.close()
        return receipts

    assert [receipt.delivery_id for receipt in asyncio.run(main())] == [100, 101, 102]


def test_a_request_the_worker_could_not_send_fails_with_retry_later(pair: tuple[Channel, Channel]) -> None:
    worker, parent = pair
    parent.close()

    async def main() -> None:
        storage = RemoteStorage(worker, on_ping=lambda _: None, on_lost=lambda: None, loop=asyncio.get_running_loop())
        with pytest.raises(RetryLater):
            await asyncio.wait_for(asyncio.wrap_future(storage.submit(_delivery(1), None)), 10)

    asyncio.run(main())


def test_a_frames_deliveries_are_answered_in_one_frame_once_committed_and_the_backlog_woken_for_each(
    pair: tuple[Channel, Channel], tmp_path: Path,
) -> None:
    worker, parent = pair
    writer = Writer(tmp_path / "m.db", checkpoint_interval=0)
    woken: list[int] = []

    async def main() -> list[tuple[object, ...]]:
        loop = asyncio.get_running_loop()
        pipeline = Pipeline(writer)
        pipeline.pending_listeners.append(lambda delivery_id, _: woken.append(delivery_id))
        service = StoreService(parent, pipeline, loop, "worker-0", Metrics())
        service.start()
        extracted = [_delivery(n) for n in (1, 2)]
        frame = [("submit", n, wire.delivery_values(delivery),
                  wire.found_values(worker_rows(extract(delivery.raw, "email", {}), len(delivery.raw))))
                 for n, delivery in enumerate(extracted)]
        frame.append(("submit", 2, wire.delivery_values(_delivery(3)), None))  # stored pending: the backlog extracts it
        worker.send_all(frame)
        answers = await loop.run_in_executor(None, worker.receive_all)
        assert answers is not None
        deadline = time.monotonic() + 10
        while not woken and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        worker.close()
        await asyncio.wait_for(service.ended, 10)
        return answers

    try:
        answers = asyncio.run(main())
    finally:
        writer.close()
    receipts = {number: wire.receipt(values) for kind, number, values in answers if kind == "receipt"}
    assert sorted((number, receipt.status) for number, receipt in receipts.items()) == [
        (0, "stored"), (1, "stored"), (2, "pending")]
    with closing(sqlite3.connect(tmp_path / "m.db")) as db:
        stored = dict(db.execute("SELECT id, status FROM deliveries").fetchall())
    ids = {receipt.delivery_id: receipt.status for receipt in receipts.values()}
    assert stored == ids
    assert woken == [id_ for id_, status in ids.items() if status == "pending"]


def test_requests_from_another_thread_are_sent_at_once(pair: tuple[Channel, Channel]) -> None:
    worker, parent = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        storage = RemoteStorage(worker, on_ping=lambda _: None, on_lost=lambda: None, loop=loop)
        asked = threading.Thread(target=lambda: storage.ask("totals"))
        asked.start()
        asked.join()
        frame = await loop.run_in_executor(None, parent.receive_all)
        assert frame == [("totals", 0)]
        parent.close()
        storage.close()

    asyncio.run(main())
