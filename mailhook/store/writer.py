"""The group-commit writer: one thread that owns the store and commits what producers queue.

Producers (every door, through `Pipeline`) call `submit()` from any thread
and get a future; the thread gathers everything queued while the previous
transaction was being made durable and commits it together, then answers
each future. The SQL itself lives in `store.write` (`Store`); this is the SQLite `store.interface.Storage`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mailhook import health
from mailhook.errors import RetryLater
from mailhook.models import Delivery, Extraction, FolderPosition, Receipt
from mailhook.privileges import FILE_MODE
from mailhook.store.checkpointer import Checkpointer
from mailhook.store.jobs import Job, delivery_outcome
from mailhook.store.local import LocalPendingQueue, SoleLease
from mailhook.store.reads import committed_position, quarantined_sources, totals
from mailhook.store.rows import Completion, Rows, Work
from mailhook.store.wal_index import WalIndex
from mailhook.store.write import CHECKPOINTER_FACTOR, NET_FACTOR, Store, WalCheckpoint, checkpoint_pages
from mailhook.thread_names import NamedThread

log = logging.getLogger("mailhook.writer")


Observer = Callable[[int, float], None]
_STOP = object()


class Writer:
    """The single writer thread: gathers queued deliveries and commits them together.

    `submit()` is thread-safe and returns at once; its future resolves after
    the commit, with a `Receipt`, or with `RetryLater` when storage failed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 5.0,
        max_batch: int = 256,
        observer: Observer | None = None,
        checkpoint_interval: float = 60.0,
        mode: int = FILE_MODE,
        phone_region: str = "US",
        store: Store | None = None,
    ) -> None:
        # Another backend (store.pg.writer) hands in its own store, which `write`s batches the same way.
        self.store = store if store is not None else Store(
            path, busy_timeout=busy_timeout, mode=mode, phone_region=phone_region)
        self.max_batch = max_batch
        self.observer = observer
        self.checkpoint_interval = checkpoint_interval
        self.last_checkpoint: WalCheckpoint | None = None
        # The most recent failed commit, until one succeeds; and when the commit under way began.
        self.last_failure: health.Failure | None = None
        self._busy_since: float | None = None
        self._stall = max(30.0, 3 * busy_timeout)
        self._probing = threading.Lock()
        self._queue: queue.SimpleQueue[Job | object] = queue.SimpleQueue()
        # Around answering a commit of more than one delivery. The pipeline, whose callbacks write a line
        # per delivery in this thread, sets it to hold those lines for one write (logs.HeldLines).
        self.answering: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
        self._closed = False
        # A job taken from the queue that would have made a commit larger than max_batch: the next one's first.
        self._carried: Job | None = None
        # SQLite only: PostgreSQL's server has no WAL for us to copy.
        self.checkpointer = self._checkpointer(busy_timeout, mode) if store is None else None
        self._thread = NamedThread(target=self._run, name="mailhook-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Return how many deliveries wait for the next commit (a backfill's chunk, `submit_many`, counts once)."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        """Say whether the writer thread is still running."""
        return self._thread.is_alive()

    def submit(self, delivery: Delivery, extraction: Extraction | Rows | None) -> Future[Receipt]:
        """Queue a delivery for the next group commit: with its extraction (or rows), or None to store it pending."""
        return self._submit((delivery, extraction))

    def submit_many(self, works: Sequence[Work]) -> Future[list[Receipt | RetryLater]]:
        """Queue up to `max_batch` deliveries for one group commit together, answered by one future.

        It resolves after the commit with each item's receipt, or `RetryLater`
        for an item that could not be stored; it raises `RetryLater` when the
        whole commit failed. A backfill's hand-over: no future per delivery.
        """
        if len(works) > self.max_batch:
            raise ValueError(f"{len(works)} deliveries at once, more than max_batch ({self.max_batch})")
        return self._queued(Job(None, Future(), works=works))

    def complete(self, completion: Completion) -> Future[Receipt]:
        """Queue the events of a delivery stored pending for the next group commit."""
        return self._submit(completion)

    def _submit(self, work: Work) -> Future[Receipt]:
        return self._queued(Job(work, Future()))

    def _queued(self, job: Job) -> Future[Any]:
        """Queue `job` for the next commit and return its future (failed at once once the writer is closed)."""
        if self._closed:
            job.future.set_exception(RetryLater("mailhook is shutting down"))
        else:
            self._queue.put(job)
        return job.future

    def check(self) -> Future[None]:
        """Return a future that resolves once the writer proved it can start a write transaction."""
        future: Future[None] = Future()
        self._queue.put(Job(None, future))
        return future

    def health(self) -> str | None:
        """Say in words why the store refuses writes now ("disk full", "database locked", ...), or None.

        Blocking (up to about a second): call it from a thread. It never waits
        behind the writer's queue, so a writer stuck on a lock cannot make it late.
        """
        if not self.alive:
            return health.UNAVAILABLE
        with self._probing:  # one probe at a time
            failure = self.last_failure
            reason = health.verdict(self.store.path, failure, busy_since=self._busy_since, stall=self._stall)
            if reason is None and failure is not None and self.last_failure is failure:
                log.info("storage accepts writes again (after %s)", failure.reason)
                self.last_failure = None
        return reason

    def committed_position(self, account: str, folder: str) -> FolderPosition | None:
        """Return the committed IMAP position of `folder`, read apart from any open write transaction."""
        return committed_position(self.store.path, account, folder)

    def quarantined_sources(self, sources: Sequence[str]) -> set[str]:
        """Return which of `sources` (deliveries.source) were stored as quarantined and are still so."""
        return quarantined_sources(self.store.path, sources)

    def lease(self, account: str, folder: str) -> SoleLease:
        """Return the lease of an IMAP folder: one node (this one) writes a SQLite file, so always granted."""
        return SoleLease()

    def pending_queue(self) -> LocalPendingQueue:
        """Return a queue of the file's pending deliveries, read on a read-only connection of its own."""
        return LocalPendingQueue(self.store.path)

    def totals(self) -> tuple[int, int, int]:
        """Return how many deliveries the database holds, how many are quarantined, and how many events."""
        return totals(self.store.path)

    def checkpoint(self) -> Future[WalCheckpoint]:
        """Return a future for a WAL checkpoint made by the writer thread after what is queued now."""
        future: Future[WalCheckpoint] = Future()
        self._queue.put(Job(None, future, checkpoint=True))
        return future

    def close(self) -> None:
        """Commit everything queued so far, then stop the threads and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if self.checkpointer is not None:
            # First, so that the writer's connection is the last and SQLite's closing checkpoint is its own as before.
            self.checkpointer.close()
        self.store.close()

    def _checkpointer(self, busy_timeout: float, mode: int) -> Checkpointer | None:
        """Start the checkpointer thread and raise the writer's own auto-checkpoint to its net; None if it cannot."""
        index = WalIndex.open(self.store.path, self.store.page_size)
        if index is None:
            log.info("WAL index unreadable: the writer checkpoints the WAL itself")
            return None
        pages = checkpoint_pages(self.store.page_size)
        try:
            checkpointer = Checkpointer(self.store.path, index, pages=CHECKPOINTER_FACTOR * pages,
                                        busy_timeout=busy_timeout, mode=mode)
        except (RetryLater, sqlite3.Error) as exc:
            log.warning("no checkpointer thread (%s): the writer checkpoints the WAL itself", exc)
            return None
        self.store.checkpoint_at(NET_FACTOR * pages)
        return checkpointer

    def _run(self) -> None:
        interval = self.checkpoint_interval
        due = time.monotonic() + interval
        while True:
            try:
                first = self._carried or self._queue.get(timeout=max(0.0, due - time.monotonic()) if interval else None)
            except queue.Empty:
                # Idle: SQLite only checkpoints on commit, so without this a WAL that readers
                # kept from shrinking would stay large until the next delivery.
                self._checkpoint()
                due = time.monotonic() + interval
                continue
            if first is _STOP:
                return
            self._carried = None
            batch: list[Job] = [first]  # type: ignore[list-item]
            size = batch[0].size
            stop = False
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                job: Job = item  # type: ignore[assignment]
                if size + job.size > self.max_batch:
                    self._carried = job
                    break
                batch.append(job)
                size += job.size
            self._commit(batch)
            if interval and time.monotonic() >= due:
                self._periodic()
                due = time.monotonic() + interval
            if stop:
                if self._carried is not None:
                    self._commit([self._carried])
                return

    def _failed(self, exc: BaseException, works: list[Work]) -> None:
        size = sum(len(work[0].raw) for work in works if not isinstance(work, Completion))
        self.last_failure = health.Failure(health.in_words(exc), size, time.monotonic())

    def _periodic(self) -> None:
        """Make the periodic checkpoint between two commits: the copying on the checkpointer's thread if there is one.

        Half its threshold waits on average: copied here, it would stall the
        deliveries as SQLite's auto-checkpoint did. The planner's statistics
        stay the writer's (ANALYZE writes); the WAL emptied to 0 bytes only idle.
        """
        if self.checkpointer is None:
            self._checkpoint()
            return
        try:
            self.store.analyze_if_grown()
        except sqlite3.Error as exc:
            log.warning("statistics not refreshed: %s", exc)
        self.checkpointer.wake()

    def _checkpoint(self) -> WalCheckpoint | None:
        try:
            result = self.store.checkpoint_wal()
        except RetryLater as exc:
            log.warning("WAL checkpoint failed: %s", exc)
            return None
        if result.busy or result.copied < result.frames:
            log.debug("WAL checkpoint incomplete (a reader holds old data): %s", result)
        self.last_checkpoint = result
        return result

    def _commit(self, batch: list[Job]) -> None:
        for job in batch:
            job.claim()
        checks = [job for job in batch if job.work is None and job.works is None and not job.checkpoint]
        jobs = [job for job in batch if job.work is not None or job.works is not None]
        if len(jobs) > 1 or (jobs and jobs[0].size > 1):
            with self.answering():
                self._write(checks, jobs)
        else:
            self._write(checks, jobs)
        if jobs and self.checkpointer is not None:
            self.checkpointer.committed()
        for job in batch:
            if job.checkpoint:
                job.resolve(self._checkpoint())

    def _write(self, checks: list[Job], jobs: list[Job]) -> None:
        for job in checks:
            try:
                self.store.check_writable()
            except RetryLater as exc:
                job.fail(exc)
            else:
                job.resolve(None)
        if not jobs:
            return
        works: list[Work] = []
        for job in jobs:
            if job.works is not None:
                works.extend(job.works)
            else:
                works.append(job.work)  # type: ignore[arg-type]
        started = time.perf_counter()
        self._busy_since = time.monotonic()
        try:
            results = self.store.write(works)
        except RetryLater as exc:
            self._failed(exc, works)
            log.warning("%s; %d deliveries answered with a temporary failure", exc, len(works))
            for job in jobs:
                job.fail(RetryLater(str(exc)))
            return
        except Exception as exc:
            self._failed(exc, works)
            log.exception("unexpected storage error")
            for job in jobs:
                job.fail(RetryLater(f"storage error: {type(exc).__name__}"))
            return
        finally:
            self._busy_since = None
        self.last_failure = None
        elapsed = time.perf_counter() - started
        if self.observer is not None:
            self.observer(len(works), elapsed)
        at = 0
        for job in jobs:
            if job.works is None:
                outcome = delivery_outcome(results[at])
                at += 1
                if isinstance(outcome, RetryLater):
                    job.fail(outcome)
                else:
                    job.resolve(outcome)
                continue
            job.resolve([delivery_outcome(result) for result in results[at : at + len(job.works)]])
            at += len(job.works)
