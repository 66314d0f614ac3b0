"""`mailhook serve`: run every configured door on one event loop around one writer.

Each door module exposes `async start(runtime) -> Door`; the server starts
them, waits for SIGTERM/SIGINT, then closes each door (stop accepting, let
sessions in flight finish) and finally flushes the writer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

from mailhook import openfiles, systemd
from mailhook.backlog import Backlog
from mailhook.budget import ByteBudget, InflightBudget, return_big_frees
from mailhook.config.settings import Settings
from mailhook.exitcodes import EX_OK
from mailhook.metrics import Metrics
from mailhook.opening import StoppedWaiting, open_writer
from mailhook.pipeline import Pipeline
from mailhook.runtime import Door, Runtime
from mailhook.status_line import Counters, supervise
from mailhook.workers import worker_count, worker_pool

# Door and Runtime are defined in mailhook.runtime; re-exported on purpose, for the doors, the group and tests
# that import them from here (smtp/, http/, imap/, group/ and bench/ among them).
__all__ = ["Door", "Runtime", "run_serve", "serve"]

log = logging.getLogger("mailhook.server")


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
        writer = await open_writer(settings, env, metrics, notifier, stop)
    except StoppedWaiting:
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
            supervisor = asyncio.create_task(supervise(runtime, notifier, counters))
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
