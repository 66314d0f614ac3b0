"""The parent's side of a worker's channel: a frame's deliveries committed as one job and answered in one frame."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from mailhook.errors import RetryLater
from mailhook.group import wire
from mailhook.group.channel import Channel
from mailhook.group.service import StoreService
from mailhook.metrics import Metrics
from mailhook.models import Delivery, Receipt
from mailhook.pipeline import Pipeline


def _delivery(n: int) -> Delivery:
    return Delivery("smtp", b"Subject: %d\r\n\r\nbody\r\n" % n, "2026-12-05T21:00:00.000000Z")


class _Jobs:
    """A writer that keeps what it is handed, answered by the test: `submit_many` unless `many` is False."""

    def __init__(self, *, many: bool = True, max_batch: int = 256) -> None:
        self.jobs: list[tuple[list[Any], Future[Any]]] = []
        self.handed = threading.Condition()
        self.max_batch = max_batch
        if not many:
            self.submit_many = None

    def submit_many(self, works: Sequence[Any]) -> Future[list[Receipt | RetryLater]]:  # type: ignore[no-redef]
        future: Future[list[Receipt | RetryLater]] = Future()
        self._keep(list(works), future)
        return future

    def submit(self, delivery: Delivery, found: object) -> Future[Receipt]:
        future: Future[Receipt] = Future()
        self._keep([(delivery, found)], future)
        return future

    def _keep(self, works: list[Any], future: Future[Any]) -> None:
        with self.handed:
            self.jobs.append((works, future))
            self.handed.notify_all()

    def wait(self, count: int) -> None:
        """Wait until `count` jobs were handed (the service's reader thread hands them)."""
        with self.handed:
            assert self.handed.wait_for(lambda: len(self.jobs) >= count, timeout=10)


def _serve(parent: Channel, writer: object, frames: list[list[tuple[Any, ...]]], worker: Channel,
           answer: Any) -> tuple[list[list[tuple[Any, ...]]], list[tuple[Delivery, Receipt | None]]]:
    """Send `frames` to a service over `writer`; let `answer(writer)` settle its jobs; return the answer frames."""
    told: list[tuple[Delivery, Receipt | None]] = []

    async def main() -> list[list[tuple[Any, ...]]]:
        loop = asyncio.get_running_loop()
        pipeline = Pipeline(writer)  # type: ignore[arg-type]
        pipeline.listeners.append(lambda delivery, receipt, _: told.append((delivery, receipt)))
        service = StoreService(parent, pipeline, loop, "worker-0", Metrics())
        service.start()
        for frame in frames:
            worker.send_all(frame)
        answered = await loop.run_in_executor(None, answer, writer)
        answers = [await loop.run_in_executor(None, worker.receive_all) for _ in range(answered)]
        worker.close()
        await asyncio.wait_for(service.ended, 10)
        return [frame for frame in answers if frame is not None]

    return asyncio.run(main()), told


def _submit(number: int, pending: bool = False) -> tuple[Any, ...]:
    rows = None if pending else (None,) * 5  # the writer here is the test's: any five values stand for rows
    return ("submit", number, wire.delivery_values(_delivery(number)), rows)


def test_a_frames_deliveries_go_to_the_writer_as_one_job_and_their_answers_in_one_frame_after_the_listeners(
    pair: tuple[Channel, Channel],
) -> None:
    worker, parent = pair

    def answer(writer: _Jobs) -> int:
        writer.wait(1)
        (works, future), = writer.jobs
        assert [delivery for delivery, _ in works] == [_delivery(n) for n in range(3)]
        future.set_result([Receipt(10, "stored"), RetryLater("disk full"), Receipt(12, "pending")])
        return 1

    answers, told = _serve(parent, _Jobs(), [[_submit(0), _submit(1), _submit(2, pending=True)]], worker, answer)
    assert answers == [[("receipt", 0, wire.receipt_values(Receipt(10, "stored"))), ("failed", 1, "disk full"),
                        ("receipt", 2, wire.receipt_values(Receipt(12, "pending")))]]
    # Stored pending: the backlog reports it once its events are stored, not the listeners now.
    assert told == [(_delivery(0), Receipt(10, "stored")), (_delivery(1), None)]


def test_a_frame_larger_than_a_commit_goes_in_parts_each_answered_when_committed(
    pair: tuple[Channel, Channel],
) -> None:
    worker, parent = pair

    def answer(writer: _Jobs) -> int:
        writer.wait(2)
        assert [len(works) for works, _ in writer.jobs] == [2, 1]
        for works, future in writer.jobs:
            future.set_result([Receipt(100 + int(delivery.raw[9:10]), "stored") for delivery, _ in works])
        return 2

    answers, _ = _serve(parent, _Jobs(max_batch=2), [[_submit(0), _submit(1), _submit(2)]], worker, answer)
    assert [[number for _, number, _ in frame] for frame in answers] == [[0, 1], [2]]


def test_a_store_without_submit_many_gets_a_frames_deliveries_one_by_one_answered_together_and_a_failure_whole(
    pair: tuple[Channel, Channel],
) -> None:
    worker, parent = pair

    def answer(writer: _Jobs) -> int:
        writer.wait(2)
        writer.jobs[1][1].set_result(Receipt(21, "stored"))
        writer.jobs[0][1].set_exception(OSError("gone"))  # not RetryLater: the frame fails whole, retryably
        return 1

    answers, told = _serve(parent, _Jobs(many=False), [[_submit(0), _submit(1)]], worker, answer)
    assert answers == [[("failed", 0, "storage error: OSError"), ("failed", 1, "storage error: OSError")]]
    assert told == [(_delivery(0), None), (_delivery(1), None)]
