"""The PostgreSQL `store.interface.Storage`: the SQLite writer's group-commit thread in front of `PgStore`.

The thread, its batching and its futures are `store.writer.Writer`'s: a
future resolves only after the batch's COMMIT returned, and with `RetryLater`
(SMTP 451 4.3.0, HTTP 503) when the batch could not be committed. What
differs is the store it drives (`PgStore`, which reconnects by itself with
back-off) and the reads beside it (`PgReads`, a connection of their own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import cast

from mailhook import health
from mailhook.models import FolderPosition
from mailhook.store.pg.connection import connection_string
from mailhook.store.pg.lease import AdvisoryLease
from mailhook.store.pg.pending import PgPendingQueue
from mailhook.store.pg.reads import PgReads
from mailhook.store.pg.write import PgStore
from mailhook.store.target import PostgresTarget
from mailhook.store.write import Store
from mailhook.store.writer import Observer, Writer

log = logging.getLogger("mailhook.writer")


class PgWriter(Writer):
    """The group-commit writer on PostgreSQL; several nodes may each run one on the same database."""

    def __init__(
        self,
        target: PostgresTarget,
        *,
        max_batch: int = 256,
        observer: Observer | None = None,
        phone_region: str = "US",
        connect_timeout: float = 10.0,
        busy_timeout: float = 5.0,
    ) -> None:
        self.target = target
        self.reads = PgReads(target)
        store = PgStore(target, phone_region=phone_region, connect_timeout=connect_timeout)
        # Writer drives its store through write(), check_writable(), checkpoint_wal() and close() only;
        # the methods that read Store.path (health, positions, totals) are this class's own.
        super().__init__(str(target), busy_timeout=busy_timeout, max_batch=max_batch, observer=observer,
                         checkpoint_interval=0, store=cast(Store, store))
        self.pg = store

    def health(self) -> str | None:
        """Say why the database refuses writes now ("database unreachable ...", read-only), or None.

        Blocking (up to about PING_TIMEOUT): a ping on the reads' connection, so
        a writer waiting on the server cannot make the answer late.
        """
        if not self.alive:
            return health.UNAVAILABLE
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self._stall:
            return f"database not answering ({self.target}): a commit has waited {time.monotonic() - busy:.0f} s"
        with self._probing:
            failure = self.last_failure
            reason = self.reads.ping()
            if reason is None and failure is not None and self.last_failure is failure:
                log.info("database takes writes again (after %s)", failure.reason)
                self.last_failure = None
                self.pg.retry_now()
        return reason

    def committed_position(self, account: str, folder: str) -> FolderPosition | None:
        """Return the committed IMAP position of `folder` (RetryLater while the database is unreachable)."""
        return self.reads.position(account, folder)

    def quarantined_sources(self, sources: Sequence[str]) -> set[str]:
        """Return which of `sources` were stored quarantined and are still so."""
        return self.reads.quarantined_sources(sources)

    def totals(self) -> tuple[int, int, int]:
        """Return how many deliveries the database holds, how many are quarantined, and how many events."""
        return self.reads.totals()

    def close(self) -> None:
        """Commit everything queued, then close both connections."""
        super().close()
        self.reads.close()

    def lease(self, account: str, folder: str) -> AdvisoryLease:  # type: ignore[override]
        """Return a folder's lease: an advisory lock on a session of its own, so one node at a time polls it."""
        return AdvisoryLease(connection_string(self.target), account, folder)

    def pending_queue(self) -> PgPendingQueue:  # type: ignore[override]
        """Return the database's pending deliveries, each claimed by one node's backlog at a time."""
        return PgPendingQueue(connection_string(self.target))
