"""A listening socket the workers share that accepts at most one connection per turn of the event loop.

asyncio's selector loop, woken by a readable listening socket, calls its
`accept()` until that raises `BlockingIOError` or the server's backlog (100
for the SMTP door, 511 for HTTP) is reached: a burst of connections queued at
once (a client's sessions opened together, MX traffic) all went to whichever
worker woke first, and that door ran on one core while the other worker idled.
As nginx's `multi_accept off`: once a worker has accepted its connection in a
turn, this socket answers as an empty queue would (`BlockingIOError`, which
asyncio takes as "nothing more") until the loop's next turn. Every worker's
epoll is level-triggered and woken by the same readiness, so the others take
the rest; a worker whose turns are long (a busy one) takes fewer, and one
with nothing else to do comes back for the next at once. The kernel's queue
is untouched: nothing is refused or lost, and the socket keeps the backlog
it came with (`PassedSocket`).
"""

from __future__ import annotations

import asyncio
import errno
import socket

from mailhook.systemd import PassedSocket

# Connections one worker accepts per turn of its event loop.
QUOTA = 1


class TakingTurns(PassedSocket):
    """An inherited listening socket whose `accept()` takes at most `quota` connections per event-loop turn.

    Used by asyncio's accept loop only: the quota is reset by a callback on
    the running loop, scheduled by the turn's first accept.
    """

    def __init__(self, *, fileno: int, quota: int = QUOTA) -> None:
        super().__init__(fileno=fileno)
        self.quota = quota
        self.taken = 0

    def accept(self) -> tuple[socket.socket, object]:
        """Accept one connection, or raise `BlockingIOError` when none waits or this turn's quota is taken."""
        if self.taken >= self.quota:
            raise BlockingIOError(errno.EAGAIN, "this worker took its share of this turn's connections")
        accepted = super().accept()  # BlockingIOError when the queue is empty: nothing counted
        if not self.taken:
            # Runs at the start of the loop's next turn, before that turn's readiness callbacks.
            asyncio.get_running_loop().call_soon(self._next_turn)
        self.taken += 1
        return accepted

    def _next_turn(self) -> None:
        self.taken = 0
