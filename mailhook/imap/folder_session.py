"""A folder watcher's session: what it does with the folder while connected, and the progress it announces.

`mailhook.imap.watcher.Watcher` (the thread, the folder's lease and the
reconnecting) runs `_session` on each connection it makes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from imapclient import IMAPClient

from mailhook.backoff import Backoff
from mailhook.errors import RetryLater
from mailhook.imap.account import Account, buffered
from mailhook.imap.fetch import chunks, sizes
from mailhook.imap.folders import act, delimiter, ensure_folder, server_name
from mailhook.models import Delivery, FolderPosition, utcnow
from mailhook.pipeline import Pipeline
from mailhook.store.interface import Lease, Storage

log = logging.getLogger("mailhook.imap")

# Seconds between checks that the folder's lease is still held while polling (see watcher.LEASE_RETRY).
LEASE_CHECK = 2.0


class FolderSession:
    """Stores one folder's new messages over a connection, then moves or flags them; waits in IDLE or polls.

    The public attributes describe progress for operators and tests; every
    change is announced on a condition that `wait_for` waits on.
    """

    def __init__(self, account: Account, folder: str, pipeline: Pipeline, writer: Storage) -> None:
        self.account = account
        self.folder = folder
        self.pipeline = pipeline
        self.writer = writer
        self.sessions = 0
        self.stored = 0
        # Whether this node holds the folder's lease (on one node always, once started).
        self.leading = False
        self.standby = False  # waiting while another node holds the lease
        self.waiting = False
        self.idling = False
        self.errors: collections.deque[str] = collections.deque(maxlen=100)
        self.delays: collections.deque[float] = collections.deque(maxlen=100)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._client: IMAPClient | None = None
        self._backoff = Backoff(account.settings.reconnect_delay, account.settings.reconnect_max)
        self._too_large: set[tuple[int, int]] = set()
        self._caps: frozenset[bytes] = frozenset()
        self._lease: Lease | None = None
        self._where = account.url(folder)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds (checked on every change of state); False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def _announce(self, **changes: Any) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(self, name, value)
            self._changed.notify_all()

    def _session(self, client: IMAPClient) -> None:
        imap = self.account.settings
        self._caps = frozenset(c.upper() for c in client.capabilities())
        hierarchy = delimiter(client)
        folder = server_name(self.folder, hierarchy)
        targets = {
            "processed": server_name(imap.move_to, hierarchy) if imap.action == "move" else "",
            "quarantined": server_name(imap.quarantine_folder, hierarchy) if imap.action != "leave" else "",
        }
        for target in set(targets.values()) - {""}:
            ensure_folder(client, target)
        info = client.select_folder(folder, readonly=imap.action == "leave")
        uidvalidity = int(info[b"UIDVALIDITY"])
        last = self._resume_after(uidvalidity)
        idle = b"IDLE" in self._caps
        self._announce(sessions=self.sessions + 1)
        log.info("%s: watching (UIDVALIDITY %d, after UID %d, %s)", self._where, uidvalidity, last,
                 "IDLE" if idle else f"polling every {imap.poll_interval:g}s")
        if last:
            self._settle(client, uidvalidity, last, targets)
        while not self._stop.is_set():
            newer = self._store_new(client, uidvalidity, last, targets)
            if self._stop.is_set():
                break
            self._backoff.reset()
            if newer != last:
                # Look again before waiting: the EXISTS of mail that arrived meanwhile came with the answer
                # to MOVE (or STORE) and was consumed there; IDLE would not announce it again.
                last = newer
                continue
            if idle:
                self._idle(client)
            else:
                self._announce(waiting=True)
                deadline = time.monotonic() + imap.poll_interval
                while not self._stop.wait(max(0.0, min(LEASE_CHECK, deadline - time.monotonic()))):
                    self._check_lease()
                    if time.monotonic() >= deadline:
                        break
                self._announce(waiting=False)
                if not self._stop.is_set():
                    client.noop()

    def _check_lease(self) -> None:
        """Raise `RetryLater` once this node no longer holds the folder's lease: another node may poll it now."""
        if self._lease is not None and not self._lease.held():
            raise RetryLater("lost this folder's lease (the database session ended)")

    def _resume_after(self, uidvalidity: int) -> int:
        """Return the last stored UID of this folder, or 0 to (re)scan it from the start."""
        position = self.writer.committed_position(self.account.key, self.folder)
        if position is None:
            return 0
        if position.uidvalidity != uidvalidity:
            log.warning("%s: UIDVALIDITY changed from %d to %d; rescanning the folder "
                        "(messages already stored are recognised by Message-ID)",
                        self._where, position.uidvalidity, uidvalidity)
            return 0
        return position.uid

    def _store_new(self, client: IMAPClient, uidvalidity: int, last: int, targets: Mapping[str, str]) -> int:
        """Store every message after UID `last` in UID order, act on them; return the new last UID."""
        # UID SEARCH n:* always matches the highest UID, even when it is below n.
        uids = sorted(uid for uid in client.search(["UID", f"{last + 1}:*"]) if uid > last)
        if not uids:
            return last
        size = sizes(client, uids)
        wanted = []
        for uid in uids:
            if size.get(uid, 0) > self.account.max_size:
                self._skip_too_large(uidvalidity, uid, size[uid])
            elif uid in size:
                wanted.append(uid)
        for chunk in chunks(wanted, size):
            if self._stop.is_set():
                break
            self._check_lease()
            fetched = client.fetch(chunk, ["BODY.PEEK[]"])
            outcome: dict[int, str] = {}
            try:
                for uid in chunk:
                    if self._stop.is_set():
                        break
                    self._check_lease()
                    raw = fetched.get(uid, {}).get(b"BODY[]")
                    if raw is None:
                        continue  # expunged by someone else meanwhile
                    outcome[uid] = self._store(bytes(raw), uidvalidity, uid)
            finally:
                if outcome:
                    last = max(outcome)
                    act(client, self._caps, self.account.settings.action, outcome, targets)
        if not self._stop.is_set():
            last = max(last, uids[-1])  # past skipped messages too, so they are not searched again
        return last

    def _store(self, raw: bytes, uidvalidity: int, uid: int) -> str:
        delivery = Delivery(
            channel="imap",
            raw=raw,
            received_at=utcnow(),
            kind="email",
            source=self.account.url(self.folder, uidvalidity, uid),
            position=FolderPosition(self.account.key, self.folder, uidvalidity, uid),
        )
        receipt = self.pipeline.ingest(delivery)
        self._announce(stored=self.stored + 1)
        return receipt.status

    def _skip_too_large(self, uidvalidity: int, uid: int, size: int) -> None:
        if (uidvalidity, uid) not in self._too_large:
            self._too_large.add((uidvalidity, uid))
            log.warning("%s: skipped, %d bytes is over the limit of %d",
                        self.account.url(self.folder, uidvalidity, uid), size, self.account.max_size)

    def _settle(self, client: IMAPClient, uidvalidity: int, last: int, targets: Mapping[str, str]) -> None:
        """Move or flag messages stored by an earlier run that stopped before acting on them."""
        action = self.account.settings.action
        if action == "leave":
            return
        criteria: list[str] = ["UID", f"1:{last}"] + (["UNSEEN"] if action == "seen" else [])
        uids = sorted(uid for uid in client.search(criteria) if uid <= last)
        if not uids:
            return
        size = sizes(client, uids)
        uids = [uid for uid in uids if 0 < size.get(uid, 0) <= self.account.max_size]
        sources = {self.account.url(self.folder, uidvalidity, uid): uid for uid in uids}
        names = list(sources)
        quarantined: set[str] = set()
        for start in range(0, len(names), 500):
            quarantined |= self.writer.quarantined_sources(names[start:start + 500])
        outcome = {uid: "quarantined" if url in quarantined else "stored" for url, uid in sources.items()}
        log.info("%s: acting on %d messages stored before the last stop", self._where, len(outcome))
        act(client, self._caps, action, outcome, targets)

    def _idle(self, client: IMAPClient) -> None:
        """Wait in IDLE until new mail, a stop, or the re-issue timeout; then leave IDLE."""
        client.idle()
        self._announce(waiting=True, idling=True)
        try:
            deadline = time.monotonic() + self.account.settings.idle_timeout
            while not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or buffered(client) or not (self._lease is None or self._lease.held()):
                    break
                readable, _, _ = select.select([client.socket(), self._wake_r], [], [], min(remaining, LEASE_CHECK))
                if self._wake_r in readable:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                    continue
                if readable:
                    responses = client.idle_check(timeout=0)
                    # Nothing parsed from a readable socket means EOF; idle_done() then raises.
                    if not responses or any(_wakes(r) for r in responses):
                        break
        finally:
            self._announce(waiting=False, idling=False)
        client.idle_done()
        self._check_lease()


def _wakes(response: Any) -> bool:
    """Say whether an untagged IDLE response means new mail or a closing connection."""
    if not isinstance(response, tuple) or not response:
        return False
    return response[0] == b"BYE" or (len(response) > 1 and response[1] == b"EXISTS")
