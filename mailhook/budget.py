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
import ctypes
import ctypes.util
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from mailhook.logs import Summary

log = logging.getLogger("mailhook.budget")


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


class InflightBudget:
    """Bytes of messages still being received, across both doors: taken as they arrive, never waited for.

    A message's bytes are held from their arrival until its reply is sent (it
    is stored, or refused); a chunk that would take the total past the limit
    is refused at once, and the door answers "try again later" (SMTP 452
    4.3.1, HTTP 503) instead of holding it. Unlike `ByteBudget` nobody waits:
    a client that is sending cannot be paused, only refused.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refusals: Summary | None = None

    def hold(self) -> InflightHold:
        """Start counting one message's bytes."""
        return InflightHold(self)

    def refused(self, channel: str, peer: str, received: int) -> None:
        """Log a message refused for want of room: the first at once, then one summary line a minute."""
        if self.refusals is None:
            self.refusals = Summary(log, logging.WARNING, "messages refused: in-flight budget spent")
        self.refusals.note("message refused channel=%s peer=%s: in-flight budget of %d bytes spent "
                           "after %d bytes of it (try again later)", channel, peer, self.limit, received)


class InflightHold:
    """One message's share of an `InflightBudget`; `close()` gives it all back."""

    __slots__ = ("budget", "received", "refused", "size")

    def __init__(self, budget: InflightBudget) -> None:
        self.budget = budget
        self.size = 0
        self.received = 0  # bytes counted before a refusal (for the log line)
        self.refused = False

    def grow(self, size: int) -> bool:
        """Count `size` more bytes of this message; False (counting nothing) when that is past the budget."""
        budget = self.budget
        if budget.used + size > budget.limit:
            self.refused = True
            self.received = self.size
            return False
        budget.used += size
        self.size += size
        budget.peak = max(budget.peak, budget.used)
        return True

    def close(self) -> None:
        """Give back every byte this message held (its bytes are stored, refused or dropped)."""
        size, self.size = self.size, 0
        self.budget.used -= size
        if size >= TRIM_AFTER:
            trim_soon()

    def __enter__(self) -> InflightHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# After a message of this many bytes is freed, ask the C allocator to return free memory to the system.
TRIM_AFTER = 1024 * 1024
TRIM_DELAY = 1.0
_trim: asyncio.TimerHandle | None = None


def trim_soon() -> None:
    """Return freed heap memory to the system shortly (once for many messages freed together).

    Python frees a big message's buffers, but glibc keeps freed heap memory
    (its mmap threshold grows after the first big free), so RSS would stay at
    its peak after a burst of large messages; `malloc_trim(0)` gives it back.
    """
    global _trim
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop: at once
        release_memory()
        return
    if _trim is not None and not _trim.cancelled() and _trim.when() >= loop.time():
        return  # one is due soon, and covers this message too
    _trim = loop.call_later(TRIM_DELAY, release_memory)


def release_memory() -> None:
    """Give free heap memory back to the system (glibc's malloc_trim; nothing elsewhere)."""
    global _trim
    _trim = None
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# Allocations at least this big get pages of their own from the system, returned the moment they are freed.
MMAP_THRESHOLD = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def return_big_frees() -> None:
    """Make glibc hand every allocation of 1 MiB or more straight back to the system when it is freed.

    By default glibc raises its mmap threshold (up to 32 MiB) the first time
    such a block is freed, so message-sized buffers afterwards come from the
    heap and stay in the process once freed; wherever they are freed (the
    doors, the writer's thread, the backlog), the server's RSS would stay at
    its peak. A fixed threshold stops that. Nothing happens without glibc.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _LIBC.append(libc)
        except (OSError, AttributeError):
            _LIBC.append(None)  # not glibc (musl, macOS): nothing to trim
    return _LIBC[0]
