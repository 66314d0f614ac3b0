"""`mailhook serve`: run every configured door on one event loop around one writer.

Each door module exposes `async start(runtime) -> Door`; the server starts
them, waits for SIGTERM/SIGINT, then closes each door (stop accepting, let
sessions in flight finish) and finally flushes the writer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailhook import openfiles, systemd
from mailhook.backlog import Backlog
from mailhook.backoff import Backoff
from mailhook.budget import ByteBudget, InflightBudget, return_big_frees
from mailhook.config.settings import Settings
from mailhook.errors import RetryLater
from mailhook.exitcodes import EX_OK
from mailhook.metrics import Metrics
from mailhook.models import Delivery, Receipt
from mailhook.pipeline import Pipeline
from mailhook.store.interface import Storage
from mailhook.store.open import open_storage
from mailhook.store.target import PostgresTarget
from mailhook.workers import worker_count, worker_pool

log = logging.getLogger("mailhook.server")


class Door(Protocol):
    """A running door: something that receives deliveries until closed."""

    name: str

    def addresses(self) -> list[str]:
        """Return the addresses the door listens on (HOST:PORT), if any."""
        ...

    async def close(self) -> None:
        """Stop accepting, finish what is in flight, and release the sockets."""
        ...


@dataclass
class Runtime:
    """What every door needs: the settings, the pipeline and the shared metrics."""

    settings: Settings
    env: Mapping[str, str]
    pipeline: Pipeline
    writer: Storage
    metrics: Metrics
    doors: list[Door] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Listening sockets passed by systemd (socket activation), by door name: a door
    # given one serves on it instead of binding its configured address.
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    # Extracts what the SMTP door acknowledged on receipt (and what an earlier run left pending).
    backlog: Backlog | None = None
    # Bytes of messages still being received, both doors together (parsing.inflight_budget).
    inflight: InflightBudget = field(default_factory=lambda: InflightBudget(256 * 1024 * 1024))
    # Each says why the service is unhealthy (or None); any reason withholds the watchdog ping.
    checks: list[Callable[[], str | None]] = field(default_factory=list)


STATUS_EVERY = 5.0
EXTEND_EVERY = 10.0
# Seconds between recounts of the database's totals (a count over a large table is not free).
TOTALS_EVERY = 60.0
# Seconds before the second try at opening an unreachable PostgreSQL database at start, and the most between two.
OPEN_RETRY_FIRST = 1.0
OPEN_RETRY_MAX = 30.0


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


async def serve(settings: Settings, env: Mapping[str, str], *, started: asyncio.Future[Runtime] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the server until `runtime.stopping` is set (by a signal or by a test).

    `stop`, set by a signal, ends the wait for a database that cannot be
    reached yet (nothing listens then); once the doors start, `runtime.stopping` counts.

    Under systemd it says READY=1 only once every door listens and the
    database is open, keeps STATUS= current, pings the watchdog from the event
    loop (so a hung loop gets the service restarted) and says STOPPING=1.
    """
    notifier = systemd.Notifier(env)
    sockets = systemd.listen_sockets(env)
    accept_failures = openfiles.guard_accept(asyncio.get_running_loop())
    doors = {"smtp": bool(settings.smtp.listen or "smtp" in sockets),
             "http": bool(settings.http.listen or "http" in sockets)}
    openfiles.raise_limit(openfiles.needed(settings, **doors))
    shortfall = openfiles.shortfall(settings, **doors)
    if shortfall:
        log.warning("%s", shortfall)
    notifier.notify("STATUS=opening the database")
    metrics = Metrics()
    counters = Counters()
    try:
        writer = await _open_writer(settings, env, metrics, notifier, stop)
    except _StoppedWaiting:
        log.info("stopped before the database could be opened; nothing was received")
        notifier.stopping("stopped before the database could be opened")
        notifier.close()
        return
    metrics.track_queue(lambda: writer.depth)
    # One budget for every extraction of a large delivery, in this process or in the backlog's workers.
    budget = ByteBudget(settings.parsing.extraction_budget)
    return_big_frees()  # a burst of big messages must not leave the process at its peak RSS
    limits = settings.parsing.mail_limits()
    # Large deliveries are extracted in a worker process: a parse in C holds the GIL, and must not hold the loop.
    # The backlog always takes up deliveries an earlier run left pending; only with
    # acknowledge = "received" does the SMTP door add to it, and it gets worker processes.
    deferred = settings.smtp.acknowledge == "received" and bool(settings.smtp.listen or "smtp" in sockets)
    pipeline = Pipeline(writer, settings.subscriptions, listeners=[metrics.on_delivery, counters.on_delivery],
                        limits=limits, budget=budget, executor=worker_pool(worker_count()),
                        new_executor=lambda: worker_pool(worker_count()),
                        deferred=frozenset({"smtp"}) if deferred else frozenset())
    workers = worker_count() if deferred else 1
    # On a database several nodes share, each node's backlog claims the pending deliveries it extracts.
    backlog: Backlog | None = Backlog(pipeline, pool=worker_pool(workers) if deferred else None, workers=workers)
    if backlog is not None:
        backlog.start()
        metrics.track_pending(backlog.pending)
    if deferred and backlog is not None:
        pipeline.pending_listeners.append(backlog.accepted)
    runtime = Runtime(settings, env, pipeline, writer, metrics, sockets=sockets, backlog=backlog,
                      inflight=InflightBudget(settings.parsing.inflight_budget))
    supervisor: asyncio.Task[None] | None = None
    # With several processes (server.workers), worker processes serve SMTP and HTTP (mailhook.group).
    group = (settings.server.workers or len(os.sched_getaffinity(0))) > 1 and (doors["smtp"] or doors["http"])
    try:
        for module, enabled in (
            ("mailhook.group.supervisor", group),
            ("mailhook.smtp.door", doors["smtp"] and not group),
            ("mailhook.http.door", doors["http"] and not group),
            ("mailhook.imap.door", bool(settings.imap.host)),
        ):
            if enabled:
                runtime.doors.append(await _start(module, runtime))
        for door in runtime.doors:
            for address in door.addresses():
                log.info("%s listening on %s", door.name, address)
        if started is not None:
            started.set_result(runtime)
        if notifier.enabled:
            await asyncio.get_running_loop().run_in_executor(None, counters.count, writer)
        notifier.ready(counters.line(writer.depth))
        if notifier.enabled:
            supervisor = asyncio.create_task(_supervise(runtime, notifier, counters))
        await runtime.stopping.wait()
        log.info("stopping: closing doors, then flushing the writer")
    finally:
        notifier.stopping("stopping: " + counters.line(writer.depth))
        if supervisor is not None:
            supervisor.cancel()
        for door in reversed(runtime.doors):
            try:
                await door.close()
            except Exception:
                log.exception("error while closing %s", door.name)
        try:
            if backlog is not None:
                await backlog.close(settings.smtp.shutdown_grace)
        except Exception:  # what is still pending is taken up at the next start; the writer must still flush
            log.exception("error while stopping the extraction backlog")
        if backlog is not None and backlog.pool is not None:
            backlog.pool.shutdown(cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, writer.close)
        if pipeline.executor is not None:
            pipeline.executor.shutdown()
        accept_failures.close()
        notifier.close()


class _StoppedWaiting(Exception):
    """A signal came while the server waited for its database (no door listened yet)."""


async def _open_writer(
    settings: Settings, env: Mapping[str, str], metrics: Metrics, notifier: systemd.Notifier,
    stop: asyncio.Event | None = None,
) -> Storage:
    """Open (and migrate) the database beside the loop, asking systemd for more start-up time meanwhile.

    A migration of a large database can outlast TimeoutStartSec=; being killed
    would roll it back and start it over on every restart. A PostgreSQL
    database that cannot be reached yet (down, failing over, its name not yet
    resolvable) is tried again with capped back-off, one line per try, and no
    door listens until it opens: senders meet a refused connection and use the
    other MX or receiver, and READY=1 waits. Exiting instead would have
    systemd restart the node every RestartSec= until StartLimitBurst= gives up
    for good. A server that refuses the settings stops the node (ConfigError).
    """
    target = settings.database(env)
    backoff = Backoff(OPEN_RETRY_FIRST, OPEN_RETRY_MAX)
    tries = 0
    while True:
        tries += 1
        try:
            return await _open_once(settings, env, metrics, notifier)
        except RetryLater as exc:
            if not isinstance(target, PostgresTarget):
                raise
            delay = backoff.next()
            log.warning("cannot open the database (try %d): %s; trying again in %.0f s, no door listens until then",
                        tries, exc, delay)
            # The next try (its connect timeout, a migration's first stretch) must fit in the extension too.
            notifier.notify(f"EXTEND_TIMEOUT_USEC={int((delay + EXTEND_EVERY * 3) * 1_000_000)}",
                            f"STATUS=waiting for the database (try {tries}): {exc}",
                            *(["WATCHDOG=1"] if notifier.watchdog_interval else []))
            if stop is None:
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise _StoppedWaiting from None


async def _open_once(
    settings: Settings, env: Mapping[str, str], metrics: Metrics, notifier: systemd.Notifier
) -> Storage:
    """Open the database once, beside the loop, extending systemd's start-up timeout while it migrates."""
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(None, functools.partial(
        open_storage,
        settings.database(env),
        busy_timeout=settings.storage.busy_timeout,
        max_batch=settings.storage.max_batch,
        observer=metrics.on_commit,
        checkpoint_interval=settings.storage.checkpoint_interval,
        mode=settings.storage.file_mode(),
        phone_region=settings.storage.phone_region,
    ))
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(opening), EXTEND_EVERY)
        except TimeoutError:
            notifier.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_EVERY * 3 * 1_000_000)}",
                            "STATUS=opening the database (migrating)")


async def _supervise(runtime: Runtime, notifier: systemd.Notifier, counters: Counters) -> None:
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


async def _start(module: str, runtime: Runtime) -> Door:
    import importlib

    door: Door = await importlib.import_module(module).start(runtime)
    return door


async def _relay(signalled: asyncio.Event, stopping: asyncio.Event) -> None:
    """Set `stopping` once a signal has come (before or after the server started)."""
    await signalled.wait()
    stopping.set()


def run_serve(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run `mailhook serve` until SIGTERM or SIGINT; exit 0 after a clean shutdown."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[Runtime] = loop.create_future()
        # Handled from the first instant: a SIGTERM while the doors start (the listening
        # socket already accepts) must stop the server cleanly once it has started, not kill it.
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(serve(settings, env, started=started, stop=stop))
        waiting: list[asyncio.Future[Any]] = [task, started]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return
        runtime = started.result()
        relay = asyncio.create_task(_relay(stop, runtime.stopping))
        try:
            await task
        finally:
            relay.cancel()

    asyncio.run(main())
    return EX_OK
