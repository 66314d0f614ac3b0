"""The write connection's upkeep: WAL checkpoints, the planner's statistics, the writability probe, stored raw bytes."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from mailhook.errors import RetryLater
from mailhook.models import stored_kind
from mailhook.store.interface import StoredDelivery

log = logging.getLogger("mailhook.store")


@dataclass(frozen=True, slots=True)
class WalCheckpoint:
    """The outcome of one WAL checkpoint: WAL frames, how many were copied back, whether it was emptied."""

    busy: bool
    frames: int
    copied: int
    truncated: bool


class Upkeep:
    """What `Store` does on its connection besides writing: checkpoints, statistics, probes, reads to reprocess."""

    conn: sqlite3.Connection
    _busy_ms: int

    def close(self) -> None:
        """Close the connection, refreshing the query planner's statistics first if the events have grown."""
        try:
            self.analyze_if_grown()
        except sqlite3.Error as exc:
            log.debug("statistics not refreshed: %s", exc)
        self.conn.close()

    def analyze_if_grown(self) -> bool:
        """Refresh the planner's statistics of `events` once they have doubled since the last time; say if it ran.

        Analysts' views sort by event_time; without statistics SQLite reads every
        matching row and sorts them instead of walking the event_time index. A
        sampled ANALYZE (analysis_limit) reads only the start of each index and
        misjudges event_type as selective, so it reads them all: ~1 s at a
        million events, once per doubling.
        """
        # Each index's row gives its entries first; a partial index has fewer, so take the largest.
        stats = self.conn.execute(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = 'events' AND idx IS NOT NULL"
        ).fetchall() if self._has_stats() else []
        analyzed = max((int(row[0].split()[0]) for row in stats), default=0)
        events = self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        if events < 1000 or events < 2 * analyzed:
            return False
        self.conn.execute("ANALYZE events")
        return True

    def _has_stats(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() is not None

    def stored_deliveries(self, *, quarantined_only: bool) -> Iterator[StoredDelivery]:
        """Yield stored deliveries that still hold their raw bytes, oldest first."""
        where = "raw IS NOT NULL" + (" AND status = 'quarantined'" if quarantined_only else "")
        last = 0
        while True:
            rows = self.conn.execute(
                f"SELECT id, channel, raw, status, content_type FROM deliveries WHERE {where} AND id > ?"
                " ORDER BY id LIMIT 500",
                (last,),
            ).fetchall()
            if not rows:
                return
            for id_, channel, raw, status, content_type in rows:
                last = id_
                yield StoredDelivery(id_, stored_kind(channel, raw), raw, status, content_type)

    def checkpoint_wal(self) -> WalCheckpoint:
        """Copy the WAL back into the database, and empty the WAL file when no reader still needs it.

        Analysts' long read transactions pin old WAL frames; a passive checkpoint
        never waits for them, and the truncating one is only tried, without
        waiting, once everything is copied, so the writer is never stalled.
        """
        try:
            self.analyze_if_grown()
            busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise RetryLater(f"storage unavailable: {exc}") from exc
        truncated = False
        if not busy and frames > 0 and copied == frames:
            self.conn.execute("PRAGMA busy_timeout=0")
            try:
                busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                truncated = not busy
            except sqlite3.OperationalError:
                truncated = False
            finally:
                self.conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        return WalCheckpoint(busy=bool(busy), frames=frames, copied=copied, truncated=truncated)

    def check_writable(self) -> None:
        """Raise `RetryLater` unless a write transaction can be started right now."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise RetryLater(f"storage unavailable: {exc}") from exc
