"""The extraction backlog: events for deliveries acknowledged as soon as their raw bytes were durable.

With `smtp.acknowledge = "received"` the SMTP door answers 250 once a
delivery's raw bytes are committed with status `pending`. The backlog reads
pending deliveries back from the database, extracts them in worker processes
(beside the event loop, on other cores) and commits their events and final
status through the same writer. The database is the queue: a delivery
acknowledged just before a crash or a stop is extracted after the restart.
On a database several nodes share, each node's backlog claims what it
extracts (`Storage.pending_queue()`), so no two nodes extract the same
delivery, and looks again every `RESCAN` seconds for deliveries other nodes
stored, or claimed and then left behind when they died.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from mailhook.backlog_workers import BacklogWorkers
from mailhook.backoff import Backoff
from mailhook.errors import RetryLater
from mailhook.pending_extraction import Extract, extract_pending
from mailhook.store.interface import PendingQueue

if TYPE_CHECKING:
    from mailhook.pipeline import Pipeline

log = logging.getLogger("mailhook.backlog")

# Small enough that a chunk's events add little to the commit acknowledging new mail.
CHUNK = 16
# After a wake-up, let more deliveries arrive first: one worker round trip and one
# commit then carry many, instead of each delivery costing the disk a second fsync.
LINGER = 0.05
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
# On a shared database: seconds between looks for pending deliveries no wake-up announced.
RESCAN = 2.0


class Backlog(BacklogWorkers):
    """Extracts pending deliveries, oldest first, and stores their events through the writer.

    `accepted()` wakes it after each delivery stored pending; on `start()` it
    also takes up whatever an earlier run left pending. A chunk holds its
    deliveries' bytes of the `budget` (shared with the doors) from before it is
    extracted until its events are stored, and holds at most the whole budget
    (or a single delivery larger than that).
    """

    def __init__(
        self, pipeline: Pipeline, *, pool: Executor | None = None, workers: int = 1, extract: Extract | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.writer = pipeline.writer
        # Pending deliveries come from the store's queue; worker processes read their bytes from `path`.
        self.queue: PendingQueue = pipeline.writer.pending_queue()
        self.path = self.queue.source
        self.subscriptions = dict(pipeline.subscriptions)
        self.pool = pool
        self.workers = workers
        self.extract = extract or functools.partial(extract_pending, limits=pipeline.limits)
        self.budget = pipeline.budget
        self._accepted: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._retry_from: int | None = None
        self._backoff = Backoff(RETRY_FIRST, RETRY_MAX, jitter=False)
        self._task: asyncio.Task[None] | None = None
        self._counted = math.nan  # on a shared database: pending deliveries at the last count, and when
        self._counted_at = -math.inf

    def start(self) -> None:
        """Start taking up pending deliveries on the running loop."""
        self._task = asyncio.create_task(self._run(), name="mailhook-backlog")

    def pending(self) -> float:
        """Return how many deliveries wait for their events in the database (NaN if it cannot be read).

        On a shared database this is the count the backlog last took (every `RESCAN` seconds, beside
        the loop): `/metrics` asks from the event loop, which must not wait on the network.
        """
        if self.queue.shared:
            return self._counted
        try:
            return self.queue.count()
        except RetryLater:
            return math.nan

    def _count(self) -> None:
        """Count the pending deliveries of a shared database for `pending()` (blocking: runs beside the loop)."""
        self._counted_at = time.monotonic()
        try:
            self._counted = float(self.queue.count())
        except RetryLater:
            self._counted = math.nan

    def accepted(self, delivery_id: int, started: float) -> None:
        """Note that a delivery was just stored pending (at `started`, perf_counter), and wake the backlog."""
        if len(self._accepted) < 100_000:  # only for the log line's milliseconds; bounded whatever happens
            self._accepted[delivery_id] = started
        self._wake.set()

    async def close(self, grace: float) -> None:
        """Extract what is pending for up to `grace` seconds, then stop; the rest waits for the next start."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            log.warning("stopping with deliveries still pending; they are extracted at the next start")
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.workers)
        in_flight: set[asyncio.Task[None]] = set()
        cursor = 0
        if self.pool is not None:
            # Start the worker now rather than when the first delivery waits for it.
            await loop.run_in_executor(self.pool, int)
        try:
            while True:
                self._wake.clear()  # before looking, so an arrival during the look wakes the next wait
                if self._retry_from is not None and not in_flight:
                    # Back off before looking again: a full disk fails at once, and must not spin.
                    await asyncio.sleep(self._backoff.next())
                    cursor, self._retry_from = self._retry_from, None
                if self.queue.shared and time.monotonic() - self._counted_at >= RESCAN:
                    await loop.run_in_executor(None, self._count)
                try:
                    ids = await loop.run_in_executor(None, self.queue.claim, cursor, CHUNK * self.workers)
                except RetryLater as exc:
                    self._retry([cursor + 1], f"pending deliveries cannot be read: {exc}")
                    ids = []
                except Exception as exc:  # a bug must not stop the backlog for good: log it, back off, retry
                    log.exception("pending deliveries cannot be claimed")
                    self._retry([cursor + 1], f"pending deliveries cannot be claimed: {type(exc).__name__}")
                    ids = []
                if ids:
                    cursor = ids[-1][0]
                    for chunk, size in self._chunks(ids):
                        await slots.acquire()
                        task = asyncio.create_task(self._extract(chunk, size, slots))
                        in_flight.add(task)
                        task.add_done_callback(self._finished(in_flight))
                    continue
                if self._closing and not in_flight and self._retry_from is None:
                    return
                if self._retry_from is not None and not in_flight:
                    continue  # to the back-off above
                if not self.queue.shared:
                    await self._wake.wait()
                elif not await self._woken(RESCAN):
                    cursor = 0  # others' deliveries, and claims a dead node let go, may lie behind the cursor
                    continue
                if not self._closing:
                    await asyncio.sleep(LINGER)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await loop.run_in_executor(None, self.queue.close)

    async def _woken(self, timeout: float) -> bool:
        """Wait for a wake-up for up to `timeout` seconds; say whether one came."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _chunks(self, ids: list[tuple[int, int]]) -> Iterator[tuple[list[int], int]]:
        """Split pending (id, size) pairs into chunks of at most CHUNK deliveries and the budget's bytes."""
        chunk: list[int] = []
        size = 0
        for delivery_id, delivery_size in ids:
            if chunk and (len(chunk) == CHUNK or size + delivery_size > self.budget.limit):
                yield chunk, size
                chunk, size = [], 0
            chunk.append(delivery_id)
            size += delivery_size
        if chunk:
            yield chunk, size

    async def _extract(self, ids: list[int], size: int, slots: asyncio.Semaphore) -> None:
        held = True

        def free_slot() -> None:  # once the worker is done, or if this is cancelled before it is
            nonlocal held
            if held:
                held = False
                slots.release()

        try:
            async with self.budget.hold(size):
                await self._extract_and_store(ids, free_slot)
        finally:
            free_slot()
            # Done or to be retried: either way another node (or this one, later) may take them now.
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.queue.release, ids)
            except RetryLater as exc:  # the session is gone, and its claims with it
                log.debug("claims not released: %s", exc)

    async def _extract_and_store(self, ids: list[int], free_slot: Callable[[], None]) -> None:
        picked_up = time.perf_counter()
        try:
            found = await self._extract_in_worker(ids)
        finally:
            free_slot()
        if found is None:
            return
        # The chunk's events in one commit, answered together: one wake-up of this loop, not one per delivery.
        started = [self._accepted.get(completion.delivery_id, picked_up) for _, completion in found]
        results = await asyncio.wrap_future(self.pipeline.complete_many(found, started))
        for (_, completion), result in zip(found, results, strict=True):
            if isinstance(result, RetryLater):
                self._retry([completion.delivery_id],
                            f"events of delivery {completion.delivery_id} not stored: {result}")
                continue
            self._backoff.reset()
            self._accepted.pop(completion.delivery_id, None)

    def _finished(self, in_flight: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            self._wake.set()  # a stop may be waiting for the last chunk

        return done
