"""The pipeline every door calls: extract a delivery, then store it durably.

`Pipeline.submit()` is the one ingest function. Doors build a `Delivery`,
submit it, and answer their client only when the returned future resolves:
by then the raw bytes and the extracted events are committed together.
`Pipeline.accept_async()` is its variant for a pipeline with a backlog: it
answers once the raw bytes are committed, and the backlog stores the events
moments later (see `mailhook.backlog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from mailhook.backlog import Backlog
from mailhook.budget import ByteBudget
from mailhook.errors import RetryLater, Unreadable
from mailhook.extract import extract
from mailhook.extract.mail import check_structure
from mailhook.logs import logfmt
from mailhook.models import Delivery, Extraction, Kind, MailLimits, Receipt
from mailhook.store import Rows, Store, worker_rows
from mailhook.writer import Writer

log = logging.getLogger("mailhook.ingest")

# Notifications are 2-4 KB; reading one inline costs less than handing it to a thread.
INLINE_LIMIT = 64 * 1024

Listener = Callable[[Delivery, Receipt | None, float], None]


@dataclass
class Pipeline:
    """Extracts deliveries and hands them to the group-commit writer.

    From an event loop, a delivery larger than INLINE_LIMIT is extracted only
    within the `budget` (bytes being extracted at once; shared with the
    backlog), beside the loop: in the `executor` (`serve` gives it a worker
    process, so a long parse in C, which holds the GIL, cannot stall the loop),
    or without one in a thread. Smaller ones are extracted on the loop.
    """

    writer: Writer
    subscriptions: Mapping[int, str] = field(default_factory=dict)
    executor: Executor | None = None
    listeners: list[Listener] = field(default_factory=list)
    backlog: Backlog | None = None
    # The health probe under way, shared by every check that arrives meanwhile.
    _probe: asyncio.Future[str | None] | None = field(default=None, init=False, repr=False)
    limits: MailLimits = field(default_factory=MailLimits)
    budget: ByteBudget = field(default_factory=lambda: ByteBudget(16 * 1024 * 1024))
    # Makes a new `executor` when a worker of the old one died.
    new_executor: Callable[[], Executor] | None = None

    def submit(self, delivery: Delivery) -> Future[Receipt]:
        """Extract `delivery` in this thread and queue it for the next commit."""
        extraction = extract(delivery.raw, delivery.kind, self.subscriptions, content_type=delivery.content_type,
                             limits=self.limits)
        return self.writer.submit(delivery, extraction)

    def ingest(self, delivery: Delivery) -> Receipt:
        """Store one delivery and wait until it is durable; raises `RetryLater` on storage trouble."""
        started = time.perf_counter()
        size = len(delivery.raw)
        try:
            with self.budget.hold_blocking(size if size > INLINE_LIMIT else 0):
                receipt = self.submit(delivery).result()
        except RetryLater:
            self._notify(delivery, None, started)
            raise
        self._notify(delivery, receipt, started)
        return receipt

    async def ingest_async(self, delivery: Delivery) -> Receipt:
        """Store one delivery from an event loop; the loop keeps serving while it is made durable."""
        started = time.perf_counter()
        try:
            if len(delivery.raw) <= INLINE_LIMIT:
                extraction = extract(delivery.raw, delivery.kind, self.subscriptions,
                                     content_type=delivery.content_type, limits=self.limits)
                receipt = await asyncio.wrap_future(self.writer.submit(delivery, extraction))
            elif (refused := self._refused_structure(delivery)) is not None:
                receipt = await asyncio.wrap_future(self.writer.submit(delivery, refused))
            else:
                # A large body can take seconds and many times its size in memory to read: only
                # `budget` bytes of them at once, held until its events are stored.
                async with self.budget.hold(len(delivery.raw)):
                    found = await self._extract_beside(delivery)
                    receipt = await asyncio.wrap_future(self.writer.submit(delivery, found))
        except RetryLater:
            self._notify(delivery, None, started)
            raise
        self._notify(delivery, receipt, started)
        return receipt

    def _refused_structure(self, delivery: Delivery) -> Extraction | None:
        """Return the quarantine of an email over a structure limit, found by counting its bytes (ms), else None.

        Such an email is refused without waiting for the budget or a worker; the
        reason is the one `extract` would give.
        """
        if delivery.kind != "email":
            return None
        try:
            check_structure(delivery.raw, self.limits)
        except Unreadable as exc:
            return Extraction(reason=str(exc))
        return None

    async def _extract_beside(self, delivery: Delivery) -> Extraction | Rows:
        """Extract a large delivery beside the loop: in the executor's worker process, else in a thread."""
        loop = asyncio.get_running_loop()
        pool = self.executor
        if pool is None:
            # In a thread the loop keeps serving (the GIL is handed over every few ms, if not in C).
            return await loop.run_in_executor(None, functools.partial(
                extract, delivery.raw, delivery.kind, self.subscriptions, content_type=delivery.content_type,
                limits=self.limits,
            ))
        subscriptions = dict(self.subscriptions)
        for _ in range(2):  # a second time on a new worker: the one before may be what killed it
            try:
                # Rows (strings, bounded by the payload ratio) cost far less to send back than Events.
                return await loop.run_in_executor(
                    pool, extract_rows, delivery.raw, delivery.kind, subscriptions, self.limits, delivery.content_type
                )
            except BrokenProcessPool:
                # Its worker died (out of memory, killed, crashed by an input: this one or the one before).
                pool = self._renew_executor(pool)
                if pool is None:
                    return extract(delivery.raw, delivery.kind, subscriptions, content_type=delivery.content_type,
                                   limits=self.limits)
        log.error("an extraction worker died twice on one delivery; quarantined")
        return Extraction(reason="extraction crashed its worker process")

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

    async def accept_async(self, delivery: Delivery) -> Receipt:
        """Store one delivery's raw bytes durably as `pending` and leave its events to the backlog.

        Without a backlog this is `ingest_async`. The receipt says `pending`;
        the delivery's log line is written once its events are stored.
        """
        if self.backlog is None:
            return await self.ingest_async(delivery)
        started = time.perf_counter()
        try:
            receipt = await asyncio.wrap_future(self.writer.submit(delivery, None))
        except RetryLater:
            self._notify(delivery, None, started)
            raise
        self.backlog.accepted(receipt.delivery_id, started)
        return receipt

    async def check(self) -> None:
        """Raise `RetryLater` saying in words ("disk full", "database locked", ...) why the store refuses writes."""
        if self._probe is None or self._probe.done():
            # A /healthz flood (or a probe waiting a second on a held lock) then costs one
            # probe at a time and one thread, never a thread per request.
            self._probe = asyncio.get_running_loop().run_in_executor(None, self.writer.health)
        reason = await asyncio.shield(self._probe)
        if reason is not None:
            raise RetryLater(reason)

    def _notify(self, delivery: Delivery, receipt: Receipt | None, started: float) -> None:
        self.report(delivery, receipt, time.perf_counter() - started)

    def report(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        """Write a finished delivery's log line and tell the listeners (metrics, status counters)."""
        log_delivery(delivery, receipt, elapsed)
        for listener in self.listeners:
            listener(delivery, receipt, elapsed)


def extract_rows(
    raw: bytes, kind: Kind, subscriptions: Mapping[int, str], limits: MailLimits, content_type: str | None = None
) -> Extraction | Rows:
    """Extract a delivery as the rows to store, bounded by the payload ratio (runs in a worker process)."""
    return worker_rows(extract(raw, kind, subscriptions, content_type=content_type, limits=limits), len(raw))


def extraction_pool(workers: int | None = None) -> Executor | None:
    """Start a pool of extraction processes, one per usable core, or return None on a single core.

    Call it before any other thread starts: the workers are forked, and a fork
    copies only the calling thread, so no worker may inherit a lock held mid-use.
    """
    count = workers if workers is not None else len(os.sched_getaffinity(0))
    if count < 2:
        return None
    pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init)
    for future in [pool.submit(int) for _ in range(count)]:
        future.result()  # fork every worker now, from this thread
    return pool


def _worker_init() -> None:
    # A worker must not outlive mailhook when it is killed (kill -9 leaves no chance to stop the pool).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(0)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def log_delivery(delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
    """Write the one log line a delivery gets: channel, peer, message id, outcome, events, milliseconds."""
    level = logging.WARNING if receipt is None or receipt.status == "quarantined" else logging.INFO
    if log.isEnabledFor(level):
        # Formatted only when a handler writes it: the text for text logs, the fields for JSON.
        line = DeliveryLine(delivery, receipt, elapsed)
        log.log(level, "delivery %s", line, extra={"delivery": line})


class DeliveryLine:
    """A delivery's log line, built lazily: `str()` gives the text, `fields()` the JSON fields."""

    __slots__ = ("delivery", "elapsed", "receipt")

    def __init__(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        self.delivery = delivery
        self.receipt = receipt
        self.elapsed = elapsed

    def fields(self) -> dict[str, object]:
        """Return the line's fields in order, None where a field is absent."""
        delivery, receipt = self.delivery, self.receipt
        fields: dict[str, object] = {
            "channel": delivery.channel,
            "peer": delivery.remote_addr or delivery.source or "-",
            "message_id": (receipt.message_id if receipt else None) or "-",
            "from": delivery.envelope_from,
            "to": ",".join(delivery.envelope_to) or None,
            "status": receipt.status if receipt else "retry-later",
            "delivery_id": receipt.delivery_id if receipt else None,
            "events": receipt.events if receipt else 0,
            "duplicates": receipt.duplicates if receipt else 0,
            "size": len(delivery.raw),
            "ms": round(self.elapsed * 1000, 1),
        }
        if receipt is not None and receipt.error:
            fields["error"] = receipt.error
        return fields

    def __str__(self) -> str:
        delivery, receipt = self.delivery, self.receipt
        # Every value a peer controls goes through logfmt(): a space, quote or `=` in it cannot forge a field.
        text = f"channel={delivery.channel} peer={logfmt(delivery.remote_addr or delivery.source or '-')}"
        if receipt is None:
            text += " message_id=-"
        else:
            text += f" message_id={logfmt(receipt.message_id or '-')}"
        if delivery.envelope_from is not None:
            text += f" from={logfmt(delivery.envelope_from)}"
        if delivery.envelope_to:
            text += f" to={logfmt(','.join(delivery.envelope_to))}"
        if receipt is None:
            text += " status=retry-later events=0 duplicates=0"
        else:
            text += (
                f" status={receipt.status} delivery_id={receipt.delivery_id}"
                f" events={receipt.events} duplicates={receipt.duplicates}"
            )
        text += f" size={len(delivery.raw)} ms={round(self.elapsed * 1000, 1)}"
        if receipt is not None and receipt.error:
            text += f" error={logfmt(receipt.error)}"
        return text


def reprocess(
    store: Store, subscriptions: Mapping[int, str], *, quarantined_only: bool, limits: MailLimits | None = None
) -> list[Receipt]:
    """Re-extract stored raw deliveries with the current extractors, adding only new events."""
    receipts = []
    for stored in list(store.stored_deliveries(quarantined_only=quarantined_only)):
        extraction = extract(stored.raw, "email" if stored.kind == "email" else "document", subscriptions,
                             content_type=stored.content_type, limits=limits)
        receipts.append(store.reextract(stored.id, extraction, len(stored.raw)))
    return receipts
