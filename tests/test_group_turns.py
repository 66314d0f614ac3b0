"""A worker's listening socket takes one connection per turn of its event loop; the rest wait for the others."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, closing

import pytest

from mailhook.group.turns import TakingTurns
from mailhook.systemd import PassedSocket


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1000)
        yield sock


def _pending(listener: socket.socket, count: int, stack: ExitStack) -> None:
    """Connect `count` clients: the kernel completes each handshake, so each waits in the accept queue."""
    for _ in range(count):
        stack.enter_context(socket.create_connection(listener.getsockname(), timeout=5))


class _Turns:
    """Counts the event loop's turns: a callback that schedules itself again runs once in each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.number = loop, 0
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.number += 1
        self.loop.call_soon(self._tick)


async def _accepted_in_turns(sock: socket.socket, expected: int) -> list[int]:
    """Serve `sock` until `expected` connections are made; return the loop turn each was accepted in."""
    loop = asyncio.get_running_loop()
    turns = _Turns(loop)
    made: list[int] = []
    transports: list[asyncio.BaseTransport] = []

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(turns.number)
            transports.append(transport)

    server = await loop.create_server(Recorder, sock=sock)
    try:
        for _ in range(1000):
            if len(made) >= expected:
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # and nothing more comes
    finally:
        server.close()
        for transport in transports:
            transport.close()
        await asyncio.sleep(0)
    return made


def test_three_pending_connections_are_accepted_one_a_turn_and_none_is_lost(listener: socket.socket) -> None:
    with ExitStack() as clients:
        _pending(listener, 3, clients)
        made = asyncio.run(_accepted_in_turns(TakingTurns(fileno=os.dup(listener.fileno())), 3))
    assert len(made) == 3
    assert len(set(made)) == 3, f"accepted in turns {made}: more than one in a turn"
    assert made == sorted(made)


def test_asyncio_alone_accepts_every_pending_connection_in_one_turn(listener: socket.socket) -> None:
    """What the quota changes: asyncio's accept loop takes all that wait (up to the server's backlog) at once."""
    with ExitStack() as clients:
        _pending(listener, 3, clients)
        made = asyncio.run(_accepted_in_turns(PassedSocket(fileno=os.dup(listener.fileno())), 3))
    assert len(made) == 3
    assert len(set(made)) == 1


def test_the_quota_is_taken_by_an_accepted_connection_only_and_given_back_at_the_next_turn(
    listener: socket.socket,
) -> None:
    async def check() -> None:
        sock = TakingTurns(fileno=os.dup(listener.fileno()))
        sock.setblocking(False)
        with closing(sock), ExitStack() as clients:
            # An empty queue answers BlockingIOError, as before, and takes nothing from the quota.
            with pytest.raises(BlockingIOError):
                sock.accept()
            assert sock.taken == 0
            _pending(listener, 2, clients)
            first, _ = sock.accept()
            first.close()
            with pytest.raises(BlockingIOError):
                sock.accept()  # one still waits, but this turn's share is taken
            await asyncio.sleep(0)
            second, _ = sock.accept()
            second.close()
            await asyncio.sleep(0)
            with pytest.raises(BlockingIOError):
                sock.accept()  # the queue is empty now
            assert sock.taken == 0

    asyncio.run(check())


def test_several_a_turn_with_a_larger_quota(listener: socket.socket) -> None:
    with ExitStack() as clients:
        _pending(listener, 5, clients)
        made = asyncio.run(_accepted_in_turns(TakingTurns(fileno=os.dup(listener.fileno()), quota=2), 5))
    assert len(made) == 5
    assert sorted(made.count(turn) for turn in set(made)) == [1, 2, 2]


@pytest.mark.needs("ss", "iproute2")
def test_the_socket_keeps_the_backlog_it_came_with_when_asyncio_serves_it(listener: socket.socket) -> None:
    """asyncio's server calls listen(100) on a socket it is given; the parent's (or systemd's) backlog stays."""
    port = listener.getsockname()[1]

    async def served() -> int:
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, sock=TakingTurns(fileno=os.dup(listener.fileno())))
        try:
            shown = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
            (line,) = shown.stdout.splitlines()
            return int(line.split()[2])
        finally:
            server.close()

    assert asyncio.run(served()) == 1000
