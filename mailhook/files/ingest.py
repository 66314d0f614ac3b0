"""`ingest_paths` (`mailhook ingest`): store every message under some paths, with a progress bar and a summary."""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

from mailhook.config.settings import Settings
from mailhook.errors import RetryLater
from mailhook.exitcodes import EX_DATAERR, EX_OK, EX_TEMPFAIL
from mailhook.files.deliveries import Unreadable, deliveries
from mailhook.files.extracted import CHUNK, Extracted, extraction_pool_for
from mailhook.files.progress import Progress
from mailhook.models import Delivery, Receipt, utcnow
from mailhook.pipeline import Pipeline
from mailhook.store.open import open_storage
from mailhook.submitter import Found

log = logging.getLogger("mailhook.files")


def ingest_paths(
    paths: list[str],
    settings: Settings,
    env: Mapping[str, str],
    *,
    quiet: bool,
    stdin: BinaryIO | None,
    interactive: bool,
    verbose: bool = False,
    workers: int | None = None,
) -> int:
    """Store every message under `paths`; return the exit code (EX_OK; EX_DATAERR unreadable; EX_TEMPFAIL retry).

    A backfill is quiet: a progress bar on a terminal and one summary line; each
    delivery's log line only at DEBUG, or at INFO with `verbose`. Extraction
    runs in `workers` processes (default: one per core; 1: in this process)
    when the input is worth it; the database is the same whatever the count.
    """
    # The pool is forked before the writer thread starts, so no worker inherits a lock held mid-write.
    pool = extraction_pool_for(paths, workers)
    limits = settings.parsing.mail_limits()
    items = deliveries(paths, received_at=utcnow(), max_size=settings.smtp.max_message_size, stdin=stdin)
    # A chunk is committed whole, so never more than a commit may hold.
    stream = Extracted(items, pool, settings.subscriptions, limits, min(CHUNK, settings.storage.max_batch))
    try:
        # The workers extract the first chunks while this process opens (creates, migrates) the database.
        stream.send_ahead()
        writer = open_storage(
            settings.database(env), busy_timeout=settings.storage.busy_timeout,
            max_batch=settings.storage.max_batch,
            mode=settings.storage.file_mode(),
            phone_region=settings.storage.phone_region,
        )
    except BaseException:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        raise
    # Each delivery's log line only at DEBUG, unless --verbose: a backfill is quiet.
    pipeline = Pipeline(writer, settings.subscriptions, limits=limits,
                        log_level=logging.INFO if verbose else logging.DEBUG)
    totals = {"stored": 0, "duplicate": 0, "quarantined": 0, "events": 0, "unreadable": 0}
    # Chunks handed to the writer, each answered by one future; `waiting` counts their deliveries.
    pending: deque[tuple[list[Delivery], Future[list[Receipt | RetryLater]]]] = deque()
    waiting = 0
    progress = Progress(enabled=interactive and not quiet, total_bytes=_input_bytes(paths))
    retry = False

    def settle(chunk: list[Delivery], future: Future[list[Receipt | RetryLater]]) -> None:
        nonlocal retry
        # Each log line is written by then, as for every door's delivery.
        for delivery, result in zip(chunk, future.result(), strict=True):
            if isinstance(result, RetryLater):
                retry = True
                log.error("%s: not stored: %s", delivery.source, result)
                continue
            totals[result.status] += 1
            totals["events"] += result.events
            progress.tick(len(delivery.raw))

    try:
        for chunk, found in stream:
            readable: list[Delivery] = []
            extractions: list[Found | None] = []
            for item, extraction in zip(chunk, found, strict=True):
                if isinstance(item, Unreadable):
                    totals["unreadable"] += 1
                    log.error("%s: cannot read: %s", item.source, item.reason)
                    continue
                readable.append(item)
                extractions.append(extraction)
            if readable:
                pending.append((readable, pipeline.submit_many(readable, extractions)))
                waiting += len(readable)
            # A bounded window keeps memory flat on huge mboxes while commits stay grouped.
            while waiting > _WINDOW:
                done, future = pending.popleft()
                waiting -= len(done)
                settle(done, future)
        while pending:
            settle(*pending.popleft())
    finally:
        writer.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        progress.done()
    if not quiet:
        print(
            f"mailhook: {totals['stored']} stored, {totals['duplicate']} duplicates, "
            f"{totals['quarantined']} quarantined, {totals['events']} events"
            + (f", {totals['unreadable']} unreadable" if totals["unreadable"] else ""),
            file=sys.stderr,
        )
    if totals["quarantined"]:
        log.warning("%d deliveries quarantined: see deliveries.error", totals["quarantined"])
    if retry:
        return EX_TEMPFAIL
    if totals["unreadable"]:
        return EX_DATAERR
    return EX_OK


# Deliveries handed to the writer and not yet settled: two commits of the default max_batch. Beyond that
# the writer falls behind, and what it holds when the input ends it commits alone, the workers idle
# (2,000 left ~0.3 s of a 10,000-email backfill's ~4 s on one core).
_WINDOW = 512


def _input_bytes(paths: list[str]) -> int | None:
    """Return the total size of the input files, walking directories; None when unknown (stdin)."""
    total = 0
    for name in paths:
        if name == "-":
            return None
        path = Path(name)
        try:
            if path.is_dir():
                total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            else:
                total += path.stat().st_size
        except OSError:
            continue
    return total
