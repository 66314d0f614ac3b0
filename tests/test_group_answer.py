"""A worker loop's writes get an `Answer`, a future without locks, settled on that loop: it behaves as a Future."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future, InvalidStateError

import pytest
from smtp_support import notification

from mailhook.errors import RetryLater
from mailhook.group import wire
from mailhook.group.answer import Answer
from mailhook.group.channel import Channel
from mailhook.group.remote import RemoteStorage
from mailhook.models import Delivery, Receipt


def _delivery(text_id: int) -> Delivery:
    return Delivery("smtp", notification(text_id), "2026-12-05T19:00:00.000000Z", envelope_from="a@example.com",
                    envelope_to=("ops@example.com",), remote_addr="127.0.0.1")


def test_callbacks_run_when_the_answer_is_set_and_at_once_when_added_after() -> None:
    answer: Answer[int] = Answer()
    seen: list[tuple[str, int]] = []
    answer.add_done_callback(lambda done: seen.append(("before", done.result())))
    assert not answer.done() and seen == []
    answer.set_result(7)
    assert seen == [("before", 7)]
    answer.add_done_callback(lambda done: seen.append(("after", done.result())))
    assert seen == [("before", 7), ("after", 7)]
    assert answer.done() and not answer.cancelled() and answer.exception() is None


def test_a_failed_answer_raises_its_exception_and_names_it() -> None:
    answer: Answer[int] = Answer()
    answer.set_exception(RetryLater("the disk is full"))
    assert isinstance(answer.exception(), RetryLater)
    with pytest.raises(RetryLater, match="the disk is full"):
        answer.result()


def test_an_answer_cannot_be_read_before_it_comes_set_twice_or_cancelled() -> None:
    answer: Answer[int] = Answer()
    with pytest.raises(InvalidStateError):
        answer.result()
    with pytest.raises(InvalidStateError):
        answer.exception()
    assert answer.cancel() is False and not answer.cancelled()
    answer.set_result(1)
    with pytest.raises(InvalidStateError):
        answer.set_result(2)
    with pytest.raises(InvalidStateError):
        answer.set_exception(RetryLater("late"))
    assert answer.result() == 1


def test_a_failing_callback_is_logged_and_the_others_still_called(caplog: pytest.LogCaptureFixture) -> None:
    answer: Answer[int] = Answer()
    seen: list[int] = []

    def broken(_: Future[int]) -> None:
        raise ValueError("a bug in a callback")

    answer.add_done_callback(broken)
    answer.add_done_callback(lambda done: seen.append(done.result()))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        answer.set_result(3)
    assert seen == [3]
    assert "exception calling callback" in caplog.text


def test_asyncio_awaits_an_answer_as_it_awaits_a_future() -> None:
    async def main() -> int:
        answer: Answer[int] = Answer()
        asyncio.get_running_loop().call_soon(answer.set_result, 5)
        return await asyncio.wrap_future(answer)

    assert asyncio.run(main()) == 5


def test_the_loops_writes_get_answers_and_another_threads_get_futures(pair: tuple[Channel, Channel]) -> None:
    worker, parent = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        storage = RemoteStorage(worker, on_ping=lambda _: None, on_lost=lambda: None, loop=loop)
        on_loop = storage.submit(_delivery(1), None)
        elsewhere: list[Future[Receipt]] = []
        thread = threading.Thread(target=lambda: elsewhere.append(storage.submit(_delivery(2), None)))
        thread.start()
        thread.join()
        assert type(on_loop) is Answer
        assert type(elsewhere[0]) is Future
        frames = [await loop.run_in_executor(None, parent.receive_all) for _ in range(2)]
        numbers = sorted(message[1] for frame in frames if frame for message in frame)
        parent.send_all([("receipt", number, wire.receipt_values(Receipt(10 + number, "pending")))
                         for number in numbers])
        receipts = await asyncio.gather(asyncio.wrap_future(on_loop), asyncio.wrap_future(elsewhere[0]))
        assert sorted(receipt.delivery_id for receipt in receipts) == [10, 11]
        storage.close()

    asyncio.run(main())


def test_writes_waiting_when_the_parent_goes_fail_with_retry_later(pair: tuple[Channel, Channel]) -> None:
    worker, parent = pair
    lost = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        storage = RemoteStorage(worker, on_ping=lambda _: None, on_lost=lost.set, loop=loop)
        waiting = [storage.submit(_delivery(n), None) for n in range(3)]
        frame = await loop.run_in_executor(None, parent.receive_all)
        assert frame is not None and len(frame) == 3
        parent.close()  # the parent died with the three uncommitted
        for answer in waiting:
            with pytest.raises(RetryLater):
                await asyncio.wait_for(asyncio.wrap_future(answer), 10)
        assert not storage.alive and storage.waiting == 0
        storage.close()

    asyncio.run(main())
    assert lost.is_set()
