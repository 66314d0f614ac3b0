"""An IMAP folder's lease on PostgreSQL: a session-level advisory lock, held on a connection of its own.

`pg_try_advisory_lock(key)` never waits: a node gets the lock or hears that
another holds it. The lock lives as long as the session: a node killed (even
with -9) closes its connection and the lock is free at once; a node that
hangs or is cut off stops pinging, and the server ends its idle session
within `session.TIMEOUT` seconds (see `mailhook.store.pg.session`). A
thread pings the session every `session.PING` seconds, and marks the lease
lost as soon as a ping fails, so the poller stops within seconds too.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any, cast

import psycopg

from mailhook.errors import RetryLater
from mailhook.models import FolderPosition, Receipt, Status
from mailhook.store.pg.session import PING, TIMEOUT, close_quietly, open_session

log = logging.getLogger("mailhook.store")


def lease_key(account: str, folder: str) -> int:
    """Return the advisory lock key of a folder: 63 bits of a hash, the same on every node and every release."""
    digest = hashlib.sha256(f"mailhook imap lease\0{account}\0{folder}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLease:
    """The right to poll one folder, as a session-level advisory lock (`Lease`); thread-safe."""

    def __init__(self, conninfo: str, account: str, folder: str, *, ping: float = PING,
                 timeout: float = TIMEOUT) -> None:
        self.conninfo = conninfo
        self.key = lease_key(account, folder)
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
            self._alive_at = time.monotonic()
            if self._held:
                self._stop = threading.Event()
                threading.Thread(target=self._keep, args=(self._conn, self._stop), daemon=True,
                                 name="mailhook-lease").start()
            return self._held

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


def passed(conn: psycopg.Connection[Any], position: FolderPosition, source: str | None) -> Receipt | None:
    """Say whether a folder's committed position has passed this message already: its delivery, if so.

    Called in the transaction that would store the message. Two pollers of one
    folder overlap only when one lost its lease without knowing (frozen while
    a message waited for the writer); the folder's transaction lock orders
    their writes, and the later one finds the message stored and stores it
    again never. Returns the stored delivery's receipt, found by its `source`
    (the message's IMAP URL, UIDVALIDITY and UID in it), or None to store it.
    """
    folder_key = int.from_bytes(hashlib.blake2b(f"{position.account}\0{position.folder}".encode(),
                                                digest_size=4).digest(), "big", signed=True)
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (FENCE, folder_key))
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
