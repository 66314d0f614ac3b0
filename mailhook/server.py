"""`mailhook serve`: run every configured door on one event loop around one writer.

Each door module exposes `async start(runtime) -> Door`; the server starts
them, waits for SIGTERM/SIGINT, then closes each door (stop accepting, let
sessions in flight finish) and finally flushes the writer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mailhook.config import Settings
from mailhook.ingest import Pipeline
from mailhook.metrics import Metrics
from mailhook.store import Writer

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
    writer: Writer
    metrics: Metrics
    doors: list[Door] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


async def serve(settings: Settings, env: Mapping[str, str], *, started: asyncio.Future[Runtime] | None = None) -> None:
    """Run the server until `runtime.stopping` is set (by a signal or by a test)."""
    metrics = Metrics()
    writer = Writer(
        settings.database(env),
        busy_timeout=settings.storage.busy_timeout,
        max_batch=settings.storage.max_batch,
        observer=metrics.on_commit,
    )
    metrics.track_queue(lambda: writer.depth)
    pipeline = Pipeline(writer, settings.subscriptions, listeners=[metrics.on_delivery])
    runtime = Runtime(settings, env, pipeline, writer, metrics)
    try:
        for module, enabled in (
            ("mailhook.smtp", bool(settings.smtp.listen)),
            ("mailhook.webhook", bool(settings.http.listen)),
            ("mailhook.imap", bool(settings.imap.host)),
        ):
            if enabled:
                runtime.doors.append(await _start(module, runtime))
        for door in runtime.doors:
            for address in door.addresses():
                log.info("%s listening on %s", door.name, address)
        if started is not None:
            started.set_result(runtime)
        await runtime.stopping.wait()
        log.info("stopping: closing doors, then flushing the writer")
    finally:
        for door in reversed(runtime.doors):
            try:
                await door.close()
            except Exception:
                log.exception("error while closing %s", door.name)
        await asyncio.get_running_loop().run_in_executor(None, writer.close)
        if pipeline.executor is not None:
            pipeline.executor.shutdown()


async def _start(module: str, runtime: Runtime) -> Door:
    import importlib

    door: Door = await importlib.import_module(module).start(runtime)
    return door


def run_serve(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run `mailhook serve` until SIGTERM or SIGINT; exit 0 after a clean shutdown."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[Runtime] = loop.create_future()
        task = asyncio.create_task(serve(settings, env, started=started))
        done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return
        runtime = started.result()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.stopping.set)
        await task

    asyncio.run(main())
    return 0
