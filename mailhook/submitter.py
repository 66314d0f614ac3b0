"""What the pipeline does from any thread: extract a delivery, queue it for a commit, report it once stored.

`Submitter.submit()` queues a delivery for the group-commit writer and
returns a future that resolves only after the delivery's one log line is
written and the listeners told; `submit_many()` does so for a chunk,
`complete()` and `complete_many()` for the events of deliveries stored
`pending`, and `ingest()` waits for one from a thread. `pipeline.Pipeline`
extends it with the event loop's way in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from mailhook.budget import ByteBudget
from mailhook.delivery_log import log_delivery
from mailhook.errors import RetryLater
from mailhook.extract import extract
from mailhook.handover import gathered
from mailhook.logs import HeldLines, after_lines
from mailhook.models import Delivery, Extraction, MailLimits, Receipt
from mailhook.store.interface import Storage
from mailhook.store.rows import Completion, Rows, Work

# Notifications are 2-4 KB; reading one inline costs less than handing it to a thread.
INLINE_LIMIT = 64 * 1024

Listener = Callable[[Delivery, Receipt | None, float], None]
# A delivery's extraction: as `extract` returns it, or as the rows to store (built in a worker process).
Found = Extraction | Rows
# Told the id and start time of each delivery stored `pending`, its events left for later.
PendingListener = Callable[[int, float], None]


@dataclass
class Submitter:
    """Queues deliveries for the group-commit writer from any thread; reports each one once it is stored.

    Its settings are the whole pipeline's, `Pipeline`'s included (the
    executor, the deferred channels and their listeners), so that the
    constructor takes them in one order.
    """

    # The store (store.writer.Writer for SQLite); named for what it does here: takes writes.
    writer: Storage
    subscriptions: Mapping[int, str] = field(default_factory=dict)
    executor: Executor | None = None
    listeners: list[Listener] = field(default_factory=list)
    # Channels acknowledged once their raw bytes are durable (`smtp.acknowledge = "received"`).
    deferred: frozenset[str] = frozenset()
    pending_listeners: list[PendingListener] = field(default_factory=list)
    limits: MailLimits = field(default_factory=MailLimits)
    budget: ByteBudget = field(default_factory=lambda: ByteBudget(16 * 1024 * 1024))
    # Makes a new `executor` when a worker of the old one died.
    new_executor: Callable[[], Executor] | None = None
    # The level of a delivery's log line when it is stored well (a backfill's are DEBUG); trouble is a warning.
    log_level: int = logging.INFO

    def __post_init__(self) -> None:
        writer: Any = self.writer
        if hasattr(writer, "answering"):
            # `report` writes a line per delivery in the writer's thread: a commit's lines in one write.
            writer.answering = HeldLines

    def submit(
        self, delivery: Delivery, found: Found | None = None, *, started: float | None = None
    ) -> Future[Receipt]:
        """Queue `delivery` for the next commit, extracted here unless `found` already holds its extraction.

        The one way into the store. The returned future resolves (or raises
        `RetryLater`) after the delivery's log line is written and every
        listener told, `started` (perf_counter) being when it arrived.
        """
        started = time.perf_counter() if started is None else started
        stored = self.writer.submit(delivery, self._extracted(delivery) if found is None else found)
        return self._reported(delivery, stored, started, on_failure=True)

    def submit_many(
        self, deliveries: Sequence[Delivery], found: Sequence[Found | None]
    ) -> Future[list[Receipt | RetryLater]]:
        """Queue `deliveries` for one commit together (a backfill's chunk), each with its extraction or None.

        None is extracted here. The one future resolves, once every delivery's
        log line is written and every listener told, with each delivery's
        receipt or `RetryLater`, in order; it never raises `RetryLater`. One
        future and one callback for the chunk, not two of each per delivery.
        """
        started = time.perf_counter()
        works: list[Work] = [(delivery, self._extracted(delivery) if extraction is None else extraction)
                             for delivery, extraction in zip(deliveries, found, strict=True)]
        many = getattr(self.writer, "submit_many", None)
        stored: Future[list[Receipt | RetryLater]] = many(works) if many is not None else gathered(
            [self.writer.submit(delivery, extraction) for delivery, extraction in works])  # type: ignore[misc]

        def report(results: list[Receipt | RetryLater]) -> None:
            elapsed = time.perf_counter() - started
            for delivery, result in zip(deliveries, results, strict=True):
                self.report(delivery, None if isinstance(result, RetryLater) else result, elapsed)

        return self._reported_many(stored, len(works), report)

    def _extracted(self, delivery: Delivery) -> Extraction:
        """Extract `delivery` in this thread, with the pipeline's subscriptions and limits."""
        return extract(delivery.raw, delivery.kind, self.subscriptions, content_type=delivery.content_type,
                       limits=self.limits)

    def complete(self, delivery: Delivery, completion: Completion, started: float) -> Future[Receipt]:
        """Store the events of a delivery stored `pending` before (the backlog's way in), and report it.

        A failure (`RetryLater`) is not reported: the backlog retries it, and
        the delivery gets its one log line once its events are stored.
        """
        return self._reported(delivery, self.writer.complete(completion), started, on_failure=False)

    def complete_many(
        self, found: Sequence[tuple[Delivery, Completion]], started: Sequence[float],
    ) -> Future[list[Receipt | RetryLater]]:
        """Store the events of deliveries stored `pending` (a backlog's chunk) in one commit, and report each stored.

        As `complete` for each, `started` holding each one's start, with one
        future for the chunk (it resolves with each receipt, or `RetryLater`,
        in order, and never raises `RetryLater`): no future and no wake-up of
        the loop per delivery. A failure is not reported: the backlog retries it.
        """
        completions = [completion for _, completion in found]
        many = getattr(self.writer, "submit_many", None)
        stored: Future[list[Receipt | RetryLater]] = many(completions) if many is not None else gathered(
            [self.writer.complete(completion) for completion in completions])

        def report(results: list[Receipt | RetryLater]) -> None:
            now = time.perf_counter()
            for (delivery, _), result, start in zip(found, results, started, strict=True):
                if not isinstance(result, RetryLater):
                    self.report(delivery, result, now - start)

        return self._reported_many(stored, len(completions), report)

    @staticmethod
    def _reported_many(
        stored: Future[list[Receipt | RetryLater]], count: int, report: Callable[[list[Receipt | RetryLater]], None],
    ) -> Future[list[Receipt | RetryLater]]:
        """Return the future of a chunk's `count` results, resolved once `report` told of them and their lines went.

        A chunk refused whole (`RetryLater`) counts as that refusal for each
        delivery; any other failure is handed on as it came, unreported.
        """
        reported: Future[list[Receipt | RetryLater]] = Future()

        def settled(done: Future[list[Receipt | RetryLater]]) -> None:
            try:
                results = done.result()
            except RetryLater as exc:
                results = [exc] * count
            except BaseException as exc:  # noqa: BLE001 - handed on to whoever waits, as it came
                after_lines(reported.set_exception, exc)
                return
            try:
                report(results)
            finally:
                after_lines(reported.set_result, results)

        stored.add_done_callback(settled)
        return reported

    def _reported(
        self, delivery: Delivery, stored: Future[Receipt], started: float, *, on_failure: bool
    ) -> Future[Receipt]:
        """Return a future that resolves as `stored` does, once the delivery has been reported."""
        reported: Future[Receipt] = Future()

        def report(done: Future[Receipt]) -> None:
            # The answer goes out once the line is written (`after_lines`: the writer holds a batch's lines).
            try:
                receipt = done.result()
            except RetryLater as exc:
                if on_failure:
                    self.report(delivery, None, time.perf_counter() - started)
                after_lines(reported.set_exception, exc)
                return
            except BaseException as exc:  # noqa: BLE001 - handed on to whoever waits, as it came
                after_lines(reported.set_exception, exc)
                return
            try:
                self.report(delivery, receipt, time.perf_counter() - started)
            finally:
                after_lines(reported.set_result, receipt)

        stored.add_done_callback(report)
        return reported

    def ingest(self, delivery: Delivery) -> Receipt:
        """Store one delivery and wait until it is durable; raises `RetryLater` on storage trouble."""
        started = time.perf_counter()
        size = len(delivery.raw)
        with self.budget.hold_blocking(size if size > INLINE_LIMIT else 0):
            return self.submit(delivery, started=started).result()

    def report(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        """Write a finished delivery's log line and tell the listeners (metrics, status counters)."""
        log_delivery(delivery, receipt, elapsed, level=self.log_level)
        for listener in self.listeners:
            listener(delivery, receipt, elapsed)
