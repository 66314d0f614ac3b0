"""The checkpointer: a thread with its own connection that copies the WAL back into the database beside the writer.

SQLite's auto-checkpoint runs inside the commit that crosses its threshold,
on the writer's thread: thousands of pages read from the WAL and written to
the database while every waiting delivery waits too. A passive checkpoint
from another connection takes no write lock, so the writer keeps committing
while it copies (sqlite3 lets go of the GIL inside SQLite). The writer tells
it when the WAL has grown past `pages` (`committed`, a read of the shared WAL
index, no statement); its own auto-checkpoint stays, higher, as the net for a
checkpointer that falls behind (docs/operations.md, "The WAL file").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from mailhook.privileges import FILE_MODE
from mailhook.store.connection import connect
from mailhook.store.wal_index import WalIndex
from mailhook.thread_names import NamedThread

log = logging.getLogger("mailhook.store")

# A checkpoint copies what was committed when it began, and SQLite writes the WAL again from its start only
# at a write transaction that began with every frame copied; under load the writer always began its next
# before a checkpoint beside it ended. So passes beside the writer go on while they shrink what is left,
# up to PASSES; then, if at most FINISH_FRAMES are left, the writer waits one moment between two commits
# (`committed`) while the last pass copies them, and its next transaction starts the WAL anew. Without
# that moment the WAL would grow to the writer's net (NET_FACTOR times) before every new start.
PASSES = 4
FINISH_FRAMES = 512

# After a pass that copied nothing (a reader's snapshot holds the WAL), wait this long before the next,
# rather than a pass after every commit for as long as the reader stays.
BLOCKED_PAUSE = 1.0

# The writer waits this long at most for a last pass (a few hundred pages): only a checkpointer thread
# that died could take longer.
FINISH_WAIT = 10.0


class Checkpointer:
    """Runs passive WAL checkpoints on its own connection and thread whenever the writer says the WAL is long."""

    def __init__(
        self, path: str | Path, index: WalIndex, *, pages: int, busy_timeout: float = 5.0, mode: int = FILE_MODE
    ) -> None:
        self.path = Path(path)
        self.pages = pages
        self.passes = 0  # checkpoints run, for tests and curiosity
        self._index = index
        self._conn = connect(path, busy_timeout=busy_timeout, mode=mode)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = True
        self._finish = False  # the checkpointer waits for the writer's moment between two commits
        self._moment = threading.Event()
        self._finished = threading.Event()
        self.finished_by_writer_wait = 0  # last passes made while the writer waited, for tests and curiosity
        self._reported: set[str] = set()
        self._thread = NamedThread(target=self._run, name="mailhook-checkpoint", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Say whether the checkpointer thread is still running."""
        return self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Say whether the checkpointer waits to be woken (rather than checkpointing or about to)."""
        return self._idle

    def committed(self) -> None:
        """Wake the checkpointer if the WAL has grown past its threshold; the writer calls it after each commit.

        If the checkpointer waits for its last pass, wait here while it makes it.
        """
        if self._finish:
            self._finish = False
            self._finished.clear()
            self._moment.set()
            self._finished.wait(FINISH_WAIT)
        elif self._idle and self._index.pending() >= self.pages:
            self._idle = False
            self._wake.set()

    def wake(self) -> None:
        """Have the checkpointer copy back what waits now, below its threshold too (the writer's periodic one)."""
        if self._idle and self._index.pending() > 0:
            self._idle = False
            self._wake.set()

    def close(self) -> None:
        """Stop the thread after the checkpoint under way, if any, and close its connection."""
        self._stopping.set()
        self._wake.set()
        self._moment.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping.is_set():
                    return
                if not self._catch_up():
                    self._stopping.wait(BLOCKED_PAUSE)
                elif self._index.pending() <= FINISH_FRAMES and not self._stopping.is_set():
                    # Even with nothing left now: the writer's transaction under way began before the
                    # last frame was copied, so its commit would add to this WAL instead of starting it anew.
                    self._last_pass()
                self._idle = True
        finally:
            self._conn.close()

    def _catch_up(self) -> bool:
        """Checkpoint until nothing waits (or PASSES); say False if the first pass could copy nothing."""
        for number in range(PASSES):
            before = self._index.backfilled()
            result = self._checkpoint()
            if result is None:
                return False
            busy, frames, copied = result
            if copied <= before < frames:  # a reader's snapshot holds every frame left (or the WAL began anew)
                return number > 0
            if busy or self._index.pending() == 0 or self._stopping.is_set():
                return True
        return True

    def _last_pass(self) -> None:
        """Copy the frames left while the writer waits between two commits, so its next one starts the WAL anew."""
        self._moment.clear()
        self._finish = True
        self._moment.wait()
        try:
            if not self._stopping.is_set():
                self._checkpoint()
                self.finished_by_writer_wait += 1
        finally:
            self._finished.set()

    def _checkpoint(self) -> tuple[int, int, int] | None:
        """Run one passive checkpoint: (busy, WAL frames, frames copied), or None after logging its error."""
        try:
            busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            kind = getattr(exc, "sqlite_errorname", type(exc).__name__)
            if kind not in self._reported:  # once per kind: a full disk would otherwise log after every commit
                self._reported.add(kind)
                log.warning("WAL checkpoint failed (the writer's own checkpoints go on): %s", exc)
            return None
        self.passes += 1
        return int(busy), int(frames), int(copied)
