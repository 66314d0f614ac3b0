"""A byte budget: how many bytes of deliveries may be extracted at once, across threads and worker processes.

Extraction holds far more memory than the bytes it reads (a parsed email or
document is Python objects: up to ~32x its size, measured on hostile shapes
within the parsing limits; docs/security.md). The doors and the backlog take a
delivery's size from the budget before extracting it and give it back after,
so what all extractions hold together stays within budget x that factor,
however many deliveries arrive at once. Waiters are served in arrival order;
one delivery larger than the whole budget runs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterator


class ByteBudget:
    """An asyncio semaphore counted in bytes, first come first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it serves: the one it is made on
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes (at most the whole budget) while the block runs."""
        self._loop = asyncio.get_running_loop()
        size = min(size, self.limit)
        await self._acquire(size)
        try:
            yield
        finally:
            self._release(size)

    @contextlib.contextmanager
    def hold_blocking(self, size: int) -> Iterator[None]:
        """Hold `size` bytes from a thread beside the event loop that uses the budget (IMAP's watchers).

        Without such a loop (`mailhook imap` alone, one thread per folder), or
        on the loop's own thread (which must not block), this holds nothing.
        """
        loop = self._loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if loop is None or on_loop or loop.is_closed() or not loop.is_running():
            yield
            return
        size = min(size, self.limit)
        asyncio.run_coroutine_threadsafe(self._acquire(size), loop).result()
        try:
            yield
        finally:
            loop.call_soon_threadsafe(self._release, size)

    async def _acquire(self, size: int) -> None:
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(size)  # granted just as it was cancelled: give it back
            else:
                self._waiters.remove((size, waiter))
                self._wake()
            raise

    def _release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            size, waiter = self._waiters.popleft()
            self.used += size
            waiter.set_result(None)
