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
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from mailhook.backlog import Backlog
from mailhook.errors import RetryLater
from mailhook.extract import extract
from mailhook.models import Delivery, Extraction, Receipt
from mailhook.store import Store
from mailhook.writer import Writer

log = logging.getLogger("mailhook.ingest")

# Notifications are 2-4 KB; reading one inline costs less than handing it to a thread.
INLINE_LIMIT = 64 * 1024

Listener = Callable[[Delivery, Receipt | None, float], None]


@dataclass
class Pipeline:
    """Extracts deliveries and hands them to the group-commit writer.

    With an `executor` (a process pool), extraction runs beside the event loop
    on another core; without one it runs in the caller's thread.
    """

    writer: Writer
    subscriptions: Mapping[int, str] = field(default_factory=dict)
    executor: Executor | None = None
    listeners: list[Listener] = field(default_factory=list)
    backlog: Backlog | None = None

    def submit(self, delivery: Delivery) -> Future[Receipt]:
        """Extract `delivery` in this thread and queue it for the next commit."""
        extraction = extract(delivery.raw, delivery.kind, self.subscriptions)
        return self.writer.submit(delivery, extraction)

    def ingest(self, delivery: Delivery) -> Receipt:
        """Store one delivery and wait until it is durable; raises `RetryLater` on storage trouble."""
        started = time.perf_counter()
        try:
            receipt = self.submit(delivery).result()
        except RetryLater:
            self._notify(delivery, None, started)
            raise
        self._notify(delivery, receipt, started)
        return receipt

    async def ingest_async(self, delivery: Delivery) -> Receipt:
        """Store one delivery from an event loop; the loop keeps serving while it is made durable."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            if self.executor is not None:
                extraction: Extraction = await loop.run_in_executor(
                    self.executor, extract, delivery.raw, delivery.kind, dict(self.subscriptions)
                )
            elif len(delivery.raw) > INLINE_LIMIT:
                # A large body can take seconds to read; in a thread the loop keeps serving
                # every other session meanwhile (the GIL is handed over every few ms).
                extraction = await loop.run_in_executor(
                    None, extract, delivery.raw, delivery.kind, self.subscriptions
                )
            else:
                extraction = extract(delivery.raw, delivery.kind, self.subscriptions)
            receipt = await asyncio.wrap_future(self.writer.submit(delivery, extraction))
        except RetryLater:
            self._notify(delivery, None, started)
            raise
        self._notify(delivery, receipt, started)
        return receipt

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
        """Raise `RetryLater` unless the database can take a write now."""
        await asyncio.wrap_future(self.writer.check())

    def _notify(self, delivery: Delivery, receipt: Receipt | None, started: float) -> None:
        self.report(delivery, receipt, time.perf_counter() - started)

    def report(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        """Write a finished delivery's log line and tell the listeners (metrics, status counters)."""
        log_delivery(delivery, receipt, elapsed)
        for listener in self.listeners:
            listener(delivery, receipt, elapsed)


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


def log_delivery(delivery: Delivery, receipt: Receipt | None, elapsed: float, *, level: int = logging.INFO) -> None:
    """Write the one log line a delivery gets: channel, peer, message id, outcome, events, milliseconds.

    A delivery stored well is logged at `level`; one quarantined or not stored always as a warning.
    """
    if receipt is None or receipt.status == "quarantined":
        level = logging.WARNING
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
        text = f"channel={delivery.channel} peer={delivery.remote_addr or delivery.source or '-'}"
        if receipt is None:
            text += " message_id=-"
        else:
            text += f" message_id={receipt.message_id or '-'}"
        if delivery.envelope_from is not None:
            text += f" from={delivery.envelope_from}"
        if delivery.envelope_to:
            text += f" to={','.join(delivery.envelope_to)}"
        if receipt is None:
            text += " status=retry-later events=0 duplicates=0"
        else:
            text += (
                f" status={receipt.status} delivery_id={receipt.delivery_id}"
                f" events={receipt.events} duplicates={receipt.duplicates}"
            )
        text += f" size={len(delivery.raw)} ms={round(self.elapsed * 1000, 1)}"
        if receipt is not None and receipt.error:
            text += f" error={receipt.error}"
        return text


def reprocess(store: Store, subscriptions: Mapping[int, str], *, quarantined_only: bool) -> list[Receipt]:
    """Re-extract stored raw deliveries with the current extractors, adding only new events."""
    receipts = []
    for stored in list(store.stored_deliveries(quarantined_only=quarantined_only)):
        extraction = extract(stored.raw, "email" if stored.kind == "email" else "document", subscriptions)
        receipts.append(store.reextract(stored.id, extraction))
    return receipts
