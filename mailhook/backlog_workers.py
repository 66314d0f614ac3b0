"""The backlog's extraction in worker processes: a chunk extracted beside the loop, and a worker's death survived.

`mailhook.backlog.Backlog` (which sets these attributes and schedules the
chunks) extends `BacklogWorkers`; what the worker processes run is
`mailhook.pending_extraction`'s.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from mailhook.backoff import Backoff
from mailhook.errors import RetryLater
from mailhook.models import Delivery, Extraction
from mailhook.pending_extraction import Extract
from mailhook.store.reads import open_pending_reader
from mailhook.store.rows import Completion
from mailhook.workers import worker_pool

log = logging.getLogger("mailhook.backlog")


class BacklogWorkers:
    """Extracts chunks of pending deliveries in a worker pool, replacing a pool whose worker died.

    A chunk that cannot be extracted now is left to `_retry`, which backs off
    and has the backlog look again from its first delivery.
    """

    pool: Executor | None
    workers: int
    extract: Extract
    path: Path | str
    subscriptions: dict[int, str]
    _backoff: Backoff
    _retry_from: int | None

    async def _extract_in_worker(
        self, ids: list[int], *, suspect: bool = False
    ) -> list[tuple[Delivery, Completion]] | None:
        """Extract `ids` in a worker; None when they must be retried later.

        A worker that dies (killed, out of memory, crashed by an input) is
        replaced, and the chunk it died on is tried again one delivery at a
        time: a delivery that kills a fresh worker on its own is quarantined
        (not retried for ever), and the others are stored.
        """
        pool = self.pool
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(pool, self.extract, self.path, ids, self.subscriptions)
        except BrokenProcessPool:  # it broke before this chunk was given to it
            await self._renew(pool)
            return await self._extract_in_worker(ids, suspect=suspect)
        try:
            return await future
        except BrokenProcessPool:
            await self._renew(pool)
            if self.pool is None:  # no worker can start: extract in this process from now on
                return await self._extract_in_worker(ids)
            if suspect and len(ids) == 1:
                return await self._crashed(ids[0])
            found: list[tuple[Delivery, Completion]] = []
            for one in ids:
                alone = await self._extract_in_worker([one], suspect=True)
                if alone is None:
                    return None
                found += alone
            return found
        except Exception as exc:  # noqa: BLE001 - the read failed (locked, I/O): retried, never lost
            self._retry(ids, f"extraction of deliveries {ids[0]}-{ids[-1]} failed: {exc!r}")
            return None

    async def _renew(self, broken: Executor | None) -> None:
        """Replace a broken worker pool (once, whoever notices first), or fall back to a thread."""
        if self.pool is broken and isinstance(broken, ProcessPoolExecutor):
            log.error("an extraction worker died; starting a new one")
            broken.shutdown(wait=False, cancel_futures=True)
            self.pool = worker_pool(self.workers)
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, int)
            except BrokenProcessPool:
                log.error("extraction workers cannot be started; extracting in a thread from now on")
                self.pool = None

    async def _crashed(self, delivery_id: int) -> list[tuple[Delivery, Completion]] | None:
        """Quarantine a delivery whose extraction killed its worker (its bytes stay, for `reprocess`)."""
        reader = open_pending_reader(self.path)  # a connection of its own, for this one read
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, reader.read, [delivery_id])
        except RetryLater as exc:
            self._retry([delivery_id], f"delivery {delivery_id} cannot be read: {exc}")
            return None
        finally:
            reader.close()
        reason = "extraction crashed its worker process"
        log.error("delivery %d: %s; quarantined", delivery_id, reason)
        return [(delivery, Completion(delivery_id, delivery.sha256, Extraction(reason=reason)))
                for _, delivery in found]

    def _retry(self, ids: list[int], reason: str) -> None:
        log.warning("%s; retrying in %.0f s", reason, self._backoff.upcoming())
        first = ids[0] - 1
        self._retry_from = first if self._retry_from is None else min(self._retry_from, first)
