"""Tests for the hand-over of stores' outcomes to the loop (mailhook/handover.py)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from mailhook.handover import Mailbox, Outcome
from mailhook.models import Receipt


def _receipt() -> Receipt:
    return Receipt(delivery_id=1, status="stored")


def test_an_outcome_settled_on_the_loop_calls_its_then_in_that_turn_before_callbacks_already_due() -> None:
    # The order the loop gives: a callback made due (call_soon) before the answer is read runs in the next turn;
    # `then` (the SMTP reply written at once) runs before it, in the turn that reads the answer.
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        outcome = Outcome(loop=loop)
        outcome.when_done(lambda o: order.append(f"then {o.result().delivery_id}"))
        source: Future[Receipt] = Future()
        source.set_result(_receipt())
        loop.call_soon(order.append, "next turn")
        Mailbox(loop).put(outcome, source)  # on the loop's thread, as a worker reads its answers
        order.append("answer read")
        await asyncio.sleep(0)
        return order

    assert asyncio.run(main()) == ["then 1", "answer read", "next turn"]


def test_an_outcome_settled_from_the_writers_thread_calls_then_once_on_the_loop() -> None:
    async def main() -> list[tuple[int, bool]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[int, bool]] = []
        outcome = Outcome(loop=loop)
        outcome.when_done(lambda o: seen.append((o.result().delivery_id, threading.get_ident() == loop_thread)))
        loop_thread = threading.get_ident()
        mailbox = Mailbox(loop)
        source: Future[Receipt] = Future()
        source.set_result(_receipt())
        writer = threading.Thread(target=mailbox.put, args=(outcome, source))
        writer.start()
        await loop.run_in_executor(None, writer.join)
        await outcome
        return seen

    assert asyncio.run(main()) == [(1, True)]


def test_a_dropped_outcome_calls_then_cancelled_and_one_already_done_calls_it_a_turn_later() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        dropped = Outcome(loop=loop)
        dropped.when_done(lambda o: order.append(f"dropped cancelled={o.cancelled()}"))
        dropped.drop()
        done = Outcome(loop=loop)
        done.set_result(_receipt())
        done.when_done(lambda o: order.append("done"))
        order.append("registered")
        await asyncio.sleep(0)
        return order

    assert asyncio.run(main()) == ["dropped cancelled=True", "registered", "done"]
