"""The one-line status systemd shows (`Counters`), kept current by `supervise`, which also pings the watchdog."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mailhook import systemd
from mailhook.errors import RetryLater
from mailhook.models import Delivery, Receipt
from mailhook.runtime import Runtime
from mailhook.store.interface import Storage

# The server's logger: these lines are the server's, as they were before the module was split off.
log = logging.getLogger("mailhook.server")

STATUS_EVERY = 5.0
# Seconds between recounts of the database's totals (a count over a large table is not free).
TOTALS_EVERY = 60.0


@dataclass
class Counters:
    """Running totals for the one-line status `systemctl status` shows: the database's, and this run's.

    The database's totals are counted now and then (`count()`), and this
    run's deliveries since the last count are added to them in between.
    """

    deliveries: int = 0
    quarantined: int = 0
    retried: int = 0
    events: int = 0
    database: tuple[int, int, int] | None = None
    counted_at: tuple[int, int, int] = (0, 0, 0)

    def count(self, storage: Storage) -> None:
        """Read the database's totals (blocking: call it from a thread); keep the last ones if it cannot."""
        mine = (self.deliveries - self.retried, self.quarantined, self.events)
        try:
            self.database = storage.totals()
        except RetryLater:
            return
        self.counted_at = mine

    def on_delivery(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        """Count one delivery (a pipeline listener)."""
        self.deliveries += 1
        if receipt is None:
            self.retried += 1
            return
        self.events += receipt.events
        if receipt.status == "quarantined":
            self.quarantined += 1

    def line(self, queued: int) -> str:
        """Return the counters as one status line, the database's totals first."""
        run = (f"since start {self.deliveries} deliveries ({self.quarantined} quarantined, {self.retried} "
               f"retry-later), {self.events} events; {queued} queued")
        if self.database is None:
            return run
        mine = (self.deliveries - self.retried, self.quarantined, self.events)
        deliveries, quarantined, events = (
            total + now - then for total, now, then in zip(self.database, mine, self.counted_at, strict=True)
        )
        return f"{deliveries} deliveries ({quarantined} quarantined), {events} events in the database; {run}"


async def supervise(runtime: Runtime, notifier: systemd.Notifier, counters: Counters) -> None:
    """Keep STATUS= current and ping the watchdog while the loop runs and the writer lives."""
    interval = notifier.watchdog_interval
    period = min(interval, STATUS_EVERY) if interval else STATUS_EVERY
    loop = asyncio.get_running_loop()
    counted = loop.time()
    while True:
        if loop.time() - counted >= TOTALS_EVERY:
            counted = loop.time()
            await loop.run_in_executor(None, counters.count, runtime.writer)
        alive = runtime.writer.alive
        if not alive:
            # Without pings systemd restarts us; a server that cannot store must not look healthy.
            log.error("the database writer has stopped; withholding the watchdog ping")
        for trouble in filter(None, (check() for check in runtime.checks)):
            log.error("%s; withholding the watchdog ping", trouble)
            alive = False
        notifier.status(counters.line(runtime.writer.depth), watchdog=bool(interval) and alive)
        await asyncio.sleep(period)
