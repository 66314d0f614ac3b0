"""The pipeline every door calls: extract a delivery, then store it durably.

`Pipeline.submit()` is the one way into the store: every door's deliveries
(SMTP, HTTP, IMAP, files) go through it, and the future it returns resolves
only after the delivery's one log line is written and the listeners (metrics,
status counters) are told. `ingest()` waits for it from a thread,
`ingest_async()` from the event loop; a door never calls the writer itself.
For a channel in `deferred` (`smtp.acknowledge = "received"`),
`ingest_async()` stores only the raw bytes, as `pending`, and tells the
`pending` listeners (the backlog, `mailhook.backlog`); the backlog, a client
of the pipeline, later stores their events through `complete()`. The ways in
from any thread (`submit`, `complete`, `ingest`, their reports) are
`Submitter`'s (`submitter.py`); this module adds the event loop's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from mailhook.beside import extract_beside, refused_structure
from mailhook.errors import RetryLater
from mailhook.handover import Mailbox, settle
from mailhook.logs import after_lines
from mailhook.models import Delivery, Receipt
from mailhook.submitter import INLINE_LIMIT, Submitter

log = logging.getLogger("mailhook.ingest")


@dataclass
class Pipeline(Submitter):
    """Extracts deliveries and hands them to the group-commit writer; reports each one once it is stored.

    From an event loop, a delivery larger than INLINE_LIMIT is extracted only
    within the `budget` (bytes being extracted at once; shared with the
    backlog), beside the loop: in the `executor` (`serve` gives it a worker
    process, so a long parse in C, which holds the GIL, cannot stall the loop),
    or without one in a thread. Smaller ones are extracted on the loop.
    """

    # The health probe under way, shared by every check that arrives meanwhile.
    _probe: asyncio.Future[str | None] | None = field(default=None, init=False, repr=False)
    # Hands finished deliveries back to the event loop, a batch at a time (see `_on_loop`).
    _mailbox: Mailbox | None = field(default=None, init=False, repr=False)
    _tasks: set[asyncio.Future[Receipt]] = field(default_factory=set, init=False, repr=False)

    async def ingest_async(self, delivery: Delivery) -> Receipt:
        """Store one delivery from an event loop; the loop keeps serving while it is made durable.

        For a `deferred` channel only its raw bytes are stored now, as
        `pending`; the backlog stores its events and writes its log line.
        """
        started = time.perf_counter()
        if delivery.channel in self.deferred:
            return await self._accepted_on_loop(delivery, started)
        if len(delivery.raw) <= INLINE_LIMIT:
            return await self._stored_on_loop(delivery, started)
        if (refused := refused_structure(delivery, self.limits)) is not None:
            return await self._on_loop(self.submit(delivery, refused, started=started))
        # A large body can take seconds and many times its size in memory to read: only
        # `budget` bytes of them at once, held until its events are stored.
        async with self.budget.hold(len(delivery.raw)):
            found = await extract_beside(delivery, self.executor, self.subscriptions, self.limits,
                                         renew=self._renew_executor, inline=self._extracted)
            return await self._on_loop(self.submit(delivery, found, started=started))

    def ingest_soon(
        self, delivery: Delivery, outcome: asyncio.Future[Receipt] | None = None,
    ) -> asyncio.Future[Receipt]:
        """Start storing one delivery from the event loop; return a future of the loop that resolves as `ingest_async`.

        The common cases (a small delivery of a channel acknowledged once
        stored, extracted now; any delivery of a `deferred` channel, stored
        pending) cost no coroutine or task of their own: the SMTP door's
        per-message path in either mode. A large one runs `ingest_async` in a
        task. Given `outcome` (a pending future of the running loop), it
        resolves and returns that either way: the task's outcome is copied
        into it once the task is done.
        """
        if delivery.channel in self.deferred:
            return self._accepted_on_loop(delivery, time.perf_counter(), outcome)
        if len(delivery.raw) > INLINE_LIMIT:
            task = asyncio.ensure_future(self.ingest_async(delivery))
            if outcome is None:
                return task
            # Kept until done: the loop holds tasks weakly, and nothing else need hold this one.
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._copy_outcome, outcome))
            return outcome
        return self._stored_on_loop(delivery, time.perf_counter(), outcome)

    def _copy_outcome(self, outcome: asyncio.Future[Receipt], task: asyncio.Future[Receipt]) -> None:
        """Give `outcome` the outcome of a store's finished `task` (its exception retrieved here, whoever waits)."""
        self._tasks.discard(task)
        settle(outcome, task)

    def _stored_on_loop(
        self, delivery: Delivery, started: float, outcome: asyncio.Future[Receipt] | None = None,
    ) -> asyncio.Future[Receipt]:
        """Extract and queue `delivery`; return a future of the running loop that resolves once it is reported.

        As `_on_loop(submit(...))`, but the delivery is reported in the same
        callback of the writer's future that hands it to the loop: no second
        `concurrent.futures.Future` (a `Condition` and its lock) and no second
        callback per delivery. The report still comes first, as with `submit`.
        """
        stored = self.writer.submit(delivery, self._extracted(delivery))
        waiter, mailbox = self._waiter(outcome)
        stored.add_done_callback(functools.partial(self._report_to_loop, delivery, started, mailbox, waiter))
        return waiter

    def _report_to_loop(
        self, delivery: Delivery, started: float, mailbox: Mailbox, waiter: asyncio.Future[Receipt],
        done: Future[Receipt],
    ) -> None:
        """Report a stored (or refused) delivery as `_reported` does, then hand its outcome to the loop."""
        try:
            if done.cancelled():
                pass
            elif (exc := done.exception()) is None:
                self.report(delivery, done.result(), time.perf_counter() - started)
            elif isinstance(exc, RetryLater):
                self.report(delivery, None, time.perf_counter() - started)
        finally:
            after_lines(mailbox.put, waiter, done)

    def _waiter(self, outcome: asyncio.Future[Receipt] | None = None) -> tuple[asyncio.Future[Receipt], Mailbox]:
        """Return `outcome` or a new future of the running loop, and the mailbox that resolves it (on its loop)."""
        # An outcome's own loop, not `get_running_loop()`: in Python 3.11 that makes a getpid system call.
        loop = asyncio.get_running_loop() if outcome is None else outcome.get_loop()
        mailbox = self._mailbox
        if mailbox is None or mailbox.loop is not loop:
            mailbox = self._mailbox = Mailbox(loop)
        return loop.create_future() if outcome is None else outcome, mailbox

    def _on_loop(self, source: Future[Receipt]) -> asyncio.Future[Receipt]:
        """Return an asyncio future of the running loop that resolves as `source` does (`asyncio.wrap_future`).

        Resolved in batches: a group commit completes many deliveries at once
        in the writer's thread, and `wrap_future` wakes the loop (a write to its
        self-pipe, a `Handle`) once per delivery; this once per batch.
        """
        waiter, mailbox = self._waiter()
        source.add_done_callback(functools.partial(mailbox.put, waiter))
        return waiter

    def _accepted_on_loop(
        self, delivery: Delivery, started: float, outcome: asyncio.Future[Receipt] | None = None,
    ) -> asyncio.Future[Receipt]:
        """Store a delivery's raw bytes durably as `pending`; return a future of the running loop for its receipt.

        The pending listeners (the backlog) are told on the loop, before the
        future resolves; a delivery not stored (`RetryLater`) gets its log line.
        """
        stored = self.writer.submit(delivery, None)
        waiter, mailbox = self._waiter(outcome)
        stored.add_done_callback(functools.partial(self._report_accepted, delivery, started, mailbox, waiter))
        return waiter

    def _report_accepted(
        self, delivery: Delivery, started: float, mailbox: Mailbox, waiter: asyncio.Future[Receipt],
        done: Future[Receipt],
    ) -> None:
        """Log a delivery that could not be stored pending; hand the outcome to the loop, which tells the backlog."""
        then = None
        try:
            if done.cancelled():
                pass
            elif (exc := done.exception()) is None:
                if self.pending_listeners:
                    then = functools.partial(self._tell_pending, done.result().delivery_id, started)
            elif isinstance(exc, RetryLater):
                self.report(delivery, None, time.perf_counter() - started)
        finally:
            after_lines(mailbox.put, waiter, done, then)

    def _tell_pending(self, delivery_id: int, started: float) -> None:
        for listener in self.pending_listeners:
            listener(delivery_id, started)

    def _renew_executor(self, broken: Executor) -> Executor | None:
        """Replace a broken process pool (once, whoever notices first); None when none can start."""
        if self.executor is broken and isinstance(broken, ProcessPoolExecutor):
            log.error("an extraction worker died; starting a new one")
            broken.shutdown(wait=False, cancel_futures=True)
            try:
                self.executor = self.new_executor() if self.new_executor else None
            except OSError:
                self.executor = None
        return self.executor

    async def check(self) -> None:
        """Raise `RetryLater` saying in words ("disk full", "database locked", ...) why the store refuses writes."""
        if self._probe is None or self._probe.done():
            # A /healthz flood (or a probe waiting a second on a held lock) then costs one
            # probe at a time and one thread, never a thread per request.
            self._probe = asyncio.get_running_loop().run_in_executor(None, self.writer.health)
        reason = await asyncio.shield(self._probe)
        if reason is not None:
            raise RetryLater(reason)
