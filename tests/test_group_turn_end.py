"""A worker's loop sends a turn's writes as the turn ends, before it waits for I/O: no turn of the loop for the send."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from mailhook.errors import RetryLater
from mailhook.group.channel import Channel
from mailhook.group.remote import RemoteStorage
from mailhook.group.turn_end import TurnEndSelector, new_loop
from mailhook.models import Delivery


def _delivery(n: int) -> Delivery:
    return Delivery("smtp", b"Subject: %d\r\n\r\nbody\r\n" % n, "2026-12-05T21:00:00.000000Z")


def test_a_hook_runs_once_at_the_next_select_and_one_that_scheduled_work_keeps_the_select_from_waiting() -> None:
    selector = TurnEndSelector()
    ran: list[str] = []

    def quiet() -> bool:
        ran.append("quiet")
        return False

    def scheduled() -> bool:
        ran.append("scheduled")
        return True

    try:
        selector.at_turn_end(quiet)
        assert selector.select(0) == []
        assert selector.select(0) == []
        assert ran == ["quiet"]
        # Told that a callback is due, the select does not wait (with nothing registered it would wait forever).
        selector.at_turn_end(scheduled)
        assert selector.select(None) == []
        assert ran == ["quiet", "scheduled"]
    finally:
        selector.close()


def test_a_failing_hook_is_logged_and_the_select_does_not_wait(caplog: pytest.LogCaptureFixture) -> None:
    selector = TurnEndSelector()

    def failing() -> bool:
        raise ValueError("broken")

    try:
        selector.at_turn_end(failing)
        with caplog.at_level(logging.ERROR, logger="mailhook.group"):
            assert selector.select(None) == []
        assert "error at the end of an event-loop turn" in caplog.text
    finally:
        selector.close()


def test_a_turns_writes_reach_the_parent_in_one_frame_before_the_next_turns_first_callback(
    pair: tuple[Channel, Channel],
) -> None:
    worker, parent = pair
    selector = TurnEndSelector()
    loop = new_loop(selector)
    arrived: list[bytes] = []

    def submit_three() -> None:
        # Scheduled first, so it runs first in the next turn: a send in a callback of that turn comes after it.
        loop.call_soon(lambda: arrived.append(_waiting(parent.sock)))
        for n in range(3):
            storage.submit(_delivery(n), None)
        loop.call_soon(loop.stop)

    try:
        storage = RemoteStorage(worker, on_ping=lambda _: None, on_lost=lambda: None, loop=loop, turn_end=selector)
        loop.call_soon(submit_three)
        loop.run_forever()
        assert arrived and arrived[0]  # sent as the submitting turn ended
        frame = parent.receive_all()
        assert frame is not None
        assert [(kind, number) for kind, number, *_ in frame] == [("submit", 0), ("submit", 1), ("submit", 2)]
        storage.close()
    finally:
        loop.close()


def test_writes_that_cannot_be_sent_at_a_turns_end_fail_with_retry_later_on_the_next_turn(
    pair: tuple[Channel, Channel],
) -> None:
    worker, parent = pair
    parent.close()
    selector = TurnEndSelector()
    loop = new_loop(selector)

    async def main() -> None:
        storage = RemoteStorage(worker, on_ping=lambda _: None, on_lost=lambda: None, loop=loop, turn_end=selector)
        with pytest.raises(RetryLater):
            await asyncio.wait_for(asyncio.wrap_future(storage.submit(_delivery(1), None)), 10)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def _waiting(sock: socket.socket) -> bytes:
    """Return what waits to be read on `sock` now (peeked, not taken), b"" if nothing."""
    try:
        return sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""
