"""`open_writer`: `serve`'s database, opened beside the loop, waited for while unreachable, systemd kept patient."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping

from mailhook import systemd
from mailhook.backoff import Backoff
from mailhook.config.settings import Settings
from mailhook.errors import RetryLater
from mailhook.metrics import Metrics
from mailhook.store.interface import Storage
from mailhook.store.open import open_storage
from mailhook.store.target import PostgresTarget

# The server's logger: these lines are the server's, as they were before the module was split off.
log = logging.getLogger("mailhook.server")

EXTEND_EVERY = 10.0
# Seconds before the second try at opening an unreachable PostgreSQL database at start, and the most between two.
OPEN_RETRY_FIRST = 1.0
OPEN_RETRY_MAX = 30.0


class StoppedWaiting(Exception):
    """A signal came while the server waited for its database (no door listened yet)."""


async def open_writer(
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
                raise StoppedWaiting from None


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
