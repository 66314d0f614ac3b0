"""An IMAP folder's lease on PostgreSQL: a session-level advisory lock, held on a connection of its own.

`pg_try_advisory_lock(key)` never waits: a node gets the lock or hears that
another holds it. The lock lives as long as the session: a node killed (even
with -9) closes its connection and the lock is free at once; a node that
hangs or is cut off stops pinging, and the server ends its idle session
within `session.TIMEOUT` seconds (see `mailhook.store.pg.session`). A
thread pings the session every `session.PING` seconds, and marks the lease
lost as soon as a ping fails, so the poller stops within seconds too.

A node that takes the lease over also fences the folder (`AdvisoryLease.fence`):
a former poller's writer may still be inside a batch of the folder's messages,
frozen with it. Its transaction holds the folder's write fence (`FENCE`) and
the batch's key locks, and no server timeout ends a session whose client froze
between two messages of one exchange (`idle_in_transaction_session_timeout`
counts only once the server has said ReadyForQuery). The new holder waits up
to `FENCE_GRACE` seconds for such a batch to commit or roll back, then ends
its session; nothing of it was committed, so nothing it acknowledged is lost.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, cast

import psycopg
from psycopg import errors as pg_errors

from mailhook.errors import RetryLater
from mailhook.models import FolderPosition, Receipt, Status
from mailhook.store.pg.session import PING, TIMEOUT, close_quietly, open_session
from mailhook.thread_names import NamedThread

log = logging.getLogger("mailhook.store")

# Seconds a new holder lets a former poller's batch of the folder finish before it ends that batch's session.
FENCE_GRACE = 3.0


def lease_key(account: str, folder: str) -> int:
    """Return the advisory lock key of a folder: 63 bits of a hash, the same on every node and every release."""
    digest = hashlib.sha256(f"mailhook imap lease\0{account}\0{folder}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLease:
    """The right to poll one folder, as a session-level advisory lock (`Lease`); thread-safe."""

    def __init__(self, conninfo: str, account: str, folder: str, *, ping: float = PING,
                 timeout: float = TIMEOUT, fence_grace: float = FENCE_GRACE) -> None:
        self.conninfo = conninfo
        self.key = lease_key(account, folder)
        self.fence_key = folder_key(account, folder)
        self.fence_grace = fence_grace
        self.name = f"{account} {folder}"
        self.ping = ping
        self.timeout = timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        self._alive_at = 0.0  # monotonic time of the last successful exchange with the session
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def acquire(self) -> bool:
        """Try the lock without waiting; True when this node holds it now. `RetryLater` if the database is down."""
        with self._lock:
            if self.held():
                return True
            self._drop()  # a fresh session: the old one may still hold the lock, unseen (a re-lock would count twice)
            self._conn = open_session(self.conninfo, "imap lease", timeout=self.timeout)
            try:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            except psycopg.Error as exc:
                self._drop()
                raise RetryLater(f"database unreachable: {exc}") from exc
            self._held = bool(row and row[0])
            if self._held:
                try:
                    self.fence()
                except psycopg.Error as exc:
                    self._drop()
                    raise RetryLater(f"database unreachable: {exc}") from exc
            self._alive_at = time.monotonic()
            if self._held:
                self._stop = threading.Event()
                NamedThread(target=self._keep, args=(self._conn, self._stop), daemon=True,
                                 name="mailhook-lease").start()
            return self._held

    def fence(self) -> int:
        """End the former pollers' batches of this folder still in flight; return how many sessions were ended.

        Waits up to `fence_grace` seconds for the folder's write fence (a batch
        that commits or rolls back meanwhile ends on its own), then ends the
        sessions holding it, waiting for each to exit (its locks go with it),
        and tries again; three rounds at most. A role that may not end another
        session (not the same role, nor in pg_signal_backend) is logged, and
        the writes wait for the server's own timeouts instead.
        """
        assert self._conn is not None
        conn = self._conn
        ended = 0
        # The session takes no other lock that could wait: the bound may stay set.
        conn.execute(f"SET lock_timeout = {max(1, int(self.fence_grace * 1000))}")
        for _ in range(3):
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (FENCE, self.fence_key))
                return ended
            except pg_errors.LockNotAvailable:
                pass
            try:
                # PostgreSQL 14+ waits for each to exit; before, the next round's wait for the fence does.
                wait = ", 5000" if conn.info.server_version >= 140000 else ""
                rows = conn.execute(_END_FENCED.format(wait=wait), (FENCE, self.fence_key)).fetchall()
            except pg_errors.InsufficientPrivilege as exc:
                log.warning("lease %s: a former poller's batch still holds the folder and may not be ended (%s);"
                            " writes wait for it", self.name, exc)
                return ended
            for pid, application, state, waiting_on in rows:
                log.warning("lease %s: ended session %d (%s, %s, waiting on %s) of a former poller's batch that"
                            " held the folder for over %.0fs", self.name, pid, application, state, waiting_on,
                            self.fence_grace)
            ended += len(rows)
        return ended

    def held(self) -> bool:
        """Say whether this node still holds the lock: False once a ping failed, or none succeeded for a while.

        A process that was frozen (stopped, swapped out) past half the server's
        timeout may have lost its session meanwhile: it counts as lost at once,
        before its next ping could tell.
        """
        return self._held and time.monotonic() - self._alive_at < self.timeout / 2

    def release(self) -> None:
        """Unlock and close the session."""
        with self._lock:
            self._stop.set()
            if self._conn is not None and self._held:
                try:
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                except psycopg.Error as exc:
                    log.debug("lease %s not unlocked (its session is gone, and the lock with it): %s", self.name, exc)
            self._drop()

    def _drop(self) -> None:
        self._held = False
        close_quietly(self._conn)
        self._conn = None

    def _keep(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        """Ping the session while the lock is held; mark the lease lost when a ping fails."""
        while not stop.wait(self.ping):
            with self._lock:
                if self._conn is not conn:
                    return
                try:
                    conn.execute("SELECT 1")
                    self._alive_at = time.monotonic()
                except psycopg.Error as exc:
                    log.warning("lease %s lost: its database session ended (%s)", self.name, exc)
                    self._drop()
                    return


# The advisory lock space (two-int4 form) of the folders' write fence; apart from the lease's own key, which
# the poller's lease session holds while its writer's transactions take this one.
FENCE = 0x6D68_0002

# The sessions holding a folder's write fence, other than this one, each ended (PostgreSQL 14+: waiting up to 5 s
# for it to exit).
_END_FENCED = """
WITH holders AS MATERIALIZED (
    SELECT l.pid, a.application_name, a.state, a.wait_event FROM pg_locks l JOIN pg_stat_activity a USING (pid)
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = %s::bigint::oid AND l.objid = (%s::bigint & 4294967295)::oid AND l.pid <> pg_backend_pid()
)
SELECT pid, application_name, state, wait_event FROM holders WHERE pg_terminate_backend(pid{wait})
"""


def folder_key(account: str, folder: str) -> int:
    """Return the folder's write fence key (int4, the second of `FENCE`'s two-int4 form): the same on every node."""
    return int.from_bytes(hashlib.blake2b(f"{account}\0{folder}".encode(), digest_size=4).digest(), "big",
                          signed=True)


def fence(conn: psycopg.Connection[Any], positions: Iterable[FolderPosition]) -> None:
    """Take the write fence of every folder a batch advances, first in its transaction and in sorted order.

    A batch frozen anywhere after this holds its folders' fences, where a new
    poller of the folder finds it (`AdvisoryLease.fence`).
    """
    for key in sorted({folder_key(p.account, p.folder) for p in positions}):
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (FENCE, key))


def passed(conn: psycopg.Connection[Any], position: FolderPosition, source: str | None) -> Receipt | None:
    """Say whether a folder's committed position has passed this message already: its delivery, if so.

    Called in the transaction that would store the message, once it holds the
    folder's write fence (`fence`). Two pollers of one folder overlap only when
    one lost its lease without knowing (frozen while a message waited for the
    writer); the fence orders their writes, and the later one finds the message
    stored and stores it again never. Returns the stored delivery's receipt, found by its `source`
    (the message's IMAP URL, UIDVALIDITY and UID in it), or None to store it.
    """
    row = conn.execute(
        "SELECT last_uid FROM imap_checkpoints WHERE account = %s AND folder = %s AND uidvalidity = %s",
        (position.account, position.folder, position.uidvalidity),
    ).fetchone()
    if row is None or row[0] < position.uid:
        return None
    stored = conn.execute(
        "SELECT id, status, error, message_id FROM deliveries WHERE source = %s ORDER BY id LIMIT 1", (source,),
    ).fetchone()
    if stored is None:
        return None  # passed without a delivery (a message too large, say): storing it now loses nothing
    return Receipt(int(stored[0]), cast(Status, stored[1]), error=stored[2], message_id=stored[3])
