"""The IMAP door: watch mailbox folders and store each message once, its position kept by UID.

One `Watcher` thread per folder (IMAPClient is blocking, and IDLE watches
only the selected folder). Each message is fetched with BODY.PEEK[], stored
through the pipeline together with its folder position `(account, folder,
UIDVALIDITY, UID)`, and only then moved or flagged. Messages are stored in
UID order and processing stops at the first failure, so the position never
passes a message that is not durable. A message stored but not yet moved
(crash in between) lies at or below the position; the next session moves
it without storing it again.

`imap.account` resolves settings and connects; `imap.watcher` holds the
per-folder thread, whose work on each connection (`imap.folder_session`)
fetches through `imap.fetch` and names, creates and moves into folders
through `imap.folders`; this module starts them as a door of `serve` or alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from mailhook.config.settings import Settings
from mailhook.exitcodes import EX_OK
from mailhook.imap.account import Account, connect
from mailhook.imap.watcher import Watcher
from mailhook.pipeline import Pipeline
from mailhook.store.interface import Storage
from mailhook.store.open import open_storage

if TYPE_CHECKING:
    from mailhook.server import Runtime

__all__ = ["Account", "ImapDoor", "Watcher", "connect", "run_imap", "start", "start_watchers",
           "stop_watchers"]

log = logging.getLogger("mailhook.imap")


def start_watchers(account: Account, pipeline: Pipeline, writer: Storage) -> list[Watcher]:
    """Start one watcher per configured folder."""
    watchers = [Watcher(account, folder, pipeline, writer) for folder in account.settings.folders]
    for watcher in watchers:
        watcher.start()
    return watchers


def stop_watchers(watchers: Sequence[Watcher]) -> None:
    """Stop every watcher and wait for each to log out."""
    for watcher in watchers:
        watcher.stop()
    for watcher in watchers:
        watcher.join()


@dataclass
class ImapDoor:
    """The IMAP poller as a door of `mailhook serve`."""

    watchers: list[Watcher]
    name: str = "imap"

    def addresses(self) -> list[str]:
        """Return nothing: the poller listens on no address."""
        return []

    async def close(self) -> None:
        """Stop the watchers without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, stop_watchers, self.watchers)


async def start(runtime: Runtime) -> ImapDoor:
    """Start watching the configured folders beside the other doors of `serve`."""
    account = Account.from_settings(runtime.settings)
    return ImapDoor(start_watchers(account, runtime.pipeline, runtime.writer))


def run_imap(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run `mailhook imap`: watch the folders until SIGTERM or SIGINT, then stop cleanly and exit 0."""
    account = Account.from_settings(settings)
    writer = open_storage(settings.database(env), busy_timeout=settings.storage.busy_timeout,
                          max_batch=settings.storage.max_batch,
                          checkpoint_interval=settings.storage.checkpoint_interval,
                          mode=settings.storage.file_mode(), phone_region=settings.storage.phone_region)
    pipeline = Pipeline(writer, settings.subscriptions, limits=settings.parsing.mail_limits())
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    watchers: list[Watcher] = []
    try:
        watchers = start_watchers(account, pipeline, writer)
        stopping.wait()
        log.info("stopping: logging out, then flushing the writer")
    finally:
        stop_watchers(watchers)
        writer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EX_OK
