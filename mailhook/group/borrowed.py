"""What a worker borrows from the parent: one extraction budget, pool and metrics registry for the whole group.

A worker of `serve --workers N` holds these through its `RemoteStorage`
rather than keeping its own, so N workers extract, hold memory and count
as one process would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from typing import Any

from mailhook.budget import ByteBudget
from mailhook.errors import RetryLater
from mailhook.group.remote import ASK_TIMEOUT, RemoteStorage
from mailhook.metrics import Metrics


class SharedBudget(ByteBudget):
    """The parent's extraction budget, held from a worker: one budget for the whole group, as in one process.

    Each worker's share of a byte budget would let N deliveries larger than a
    share be extracted at once (one per worker) where one process extracts
    one; holding the parent's budget keeps `parsing.extraction_budget` whole.
    """

    def __init__(self, storage: RemoteStorage, limit: int) -> None:
        super().__init__(limit)
        self.storage = storage

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes of the parent's budget while the block runs."""
        number, granted = self.storage.ask("hold", size)
        try:
            await asyncio.wrap_future(granted)
            yield
        finally:
            # Also when cancelled while waiting: the parent then gives the bytes back as soon as they are granted.
            self.storage.tell("release", number)


class RemoteExtraction(Executor):
    """The parent's extraction processes, used from a worker for deliveries larger than INLINE_LIMIT.

    The pipeline submits only `beside.extract_rows` to its executor. One
    pool for the whole group (the parent's, one process per core beside the
    loop) keeps the memory of large extractions what it is in one process:
    N pools would each keep the heap of the largest parse they ever made.
    """

    def __init__(self, storage: RemoteStorage) -> None:
        self.storage = storage

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Send the extraction's arguments to the parent; the future resolves with its rows."""
        assert fn.__name__ == "extract_rows" and not kwargs, "only the pipeline's extract_rows runs remotely"
        return self.storage.ask("extract", args)[1]


class GroupMetrics(Metrics):
    """A worker's metrics: `GET /metrics` answers with the parent's registry, which counts the whole group.

    The parent counts every delivery (it sees each one's receipt), every
    commit and the writer's queue; a worker tells it each request its doors
    refuse, and its open SMTP sessions with each heartbeat. The counters
    live in the parent, which outlives every worker: a scrape on any worker
    gives the same totals, and a worker's restart neither resets nor doubles them.
    """

    def __init__(self, storage: RemoteStorage) -> None:
        super().__init__()
        self.storage = storage

    def on_rejected(self, channel: str, reason: str) -> None:
        """Count a refusal in the parent's registry (no answer awaited)."""
        self.storage.tell("rejected", 0, channel, reason)

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """Return the parent's exposition of the group's metrics; raises `RetryLater` if it does not answer."""
        try:
            answer: tuple[bytes, str] = await asyncio.wait_for(
                asyncio.wrap_future(self.storage.ask("metrics", accept)[1]), ASK_TIMEOUT)
        except TimeoutError:
            raise RetryLater("the mailhook supervisor process does not answer") from None
        return answer
