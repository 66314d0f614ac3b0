"""The folder watcher: one thread that stores a folder's new messages, then moves or flags them."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailhook.errors import RetryLater
from mailhook.imap.account import Account, close, connect
from mailhook.imap.folder_session import FolderSession
from mailhook.pipeline import Pipeline
from mailhook.store.interface import Lease, Storage
from mailhook.thread_names import NamedThread

log = logging.getLogger("mailhook.imap")

STOP_GRACE = 10.0
# Seconds between tries at the folder's lease while another node polls it; with LEASE_CHECK (folder_session.py),
# a poller whose node died is replaced within about this plus the lease's timeout.
LEASE_RETRY = 3.0


class Watcher(FolderSession):
    """Watches one folder in a thread of its own: store new messages, then move or flag them.

    The thread holds the folder's lease and reconnects after a failure; each
    connection's work, and the progress attributes, are `FolderSession`'s.
    """

    def __init__(self, account: Account, folder: str, pipeline: Pipeline, writer: Storage) -> None:
        super().__init__(account, folder, pipeline, writer)
        self._thread = NamedThread(target=self._run, name=f"mailhook-imap-{folder}", daemon=True)

    def start(self) -> None:
        """Start the watcher thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish the message in hand and log out; interrupts IDLE at once."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def join(self, timeout: float = STOP_GRACE) -> bool:
        """Wait for the thread; past `timeout`, cut its connection and wait briefly. Return True if it ended."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: still busy after %.0fs; closing its connection", self._where, timeout)
            client = self._client
            if client is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(client.socket(), socket.SHUT_RDWR)
            self._thread.join(5.0)
        ended = not self._thread.is_alive()
        if ended:
            self._wake_r.close()
            self._wake_w.close()
        return ended

    def _run(self) -> None:
        lease = self.writer.lease(self.account.key, self.folder)
        try:
            self._watch(lease)
        finally:
            with contextlib.suppress(Exception):
                lease.release()
            self._announce(leading=False)
        log.info("%s: stopped", self._where)

    def _take(self, lease: Lease) -> bool:
        """Hold the folder's lease, or wait a little and say no: another node polls the folder meanwhile."""
        if lease.held():
            return True
        try:
            taken = lease.acquire()
        except RetryLater as exc:
            # Not the growing back-off: once the database answers again, a poller must be back within seconds.
            reason = f"{exc}; cannot tell whether another node polls this folder"
            if not self.errors or self.errors[-1] != reason:
                log.warning("%s: %s; trying again every %.0fs", self._where, reason, LEASE_RETRY)
            self._announce(leading=False)
            with self._changed:
                self.errors.append(reason)
            self._stop.wait(LEASE_RETRY)
            return False
        if taken:
            log.info("%s: this node polls the folder now", self._where)
            self._announce(leading=True, standby=False)
            return True
        if not self.standby:
            log.info("%s: another node polls this folder; standing by", self._where)
        self._announce(leading=False, standby=True)
        self._stop.wait(LEASE_RETRY)
        return False

    def _watch(self, lease: Lease) -> None:
        self._lease = lease
        while not self._stop.is_set():
            if not self._take(lease):
                continue
            try:
                client = connect(self.account)
            except LoginError as exc:
                self._failed(f"login failed: {_text(exc)}; check imap.user and the password "
                             "(hosted mail needs an app password)", logging.ERROR)
                continue
            except ssl.SSLCertVerificationError as exc:
                self._failed(f"certificate not trusted: {exc.verify_message}; set imap.ca_file "
                             "to trust a private CA", logging.ERROR)
                continue
            except (OSError, IMAPClientError) as exc:
                if not self._stop.is_set():
                    self._failed(f"cannot connect: {_text(exc)}", logging.WARNING)
                continue
            self._client = client
            try:
                self._session(client)
            except RetryLater as exc:
                self._failed(f"{exc}; messages stay on the server", logging.WARNING)
            except (OSError, IMAPClientAbortError) as exc:
                if not self._stop.is_set():
                    self._failed(f"connection lost: {_text(exc)}", logging.WARNING)
            except IMAPClientError as exc:
                self._failed(f"server refused: {_text(exc)}", logging.ERROR)
            except Exception as exc:  # a bug must not kill the thread: log it, back off, retry
                log.exception("%s: unexpected error", self._where)
                self._failed(f"unexpected error: {type(exc).__name__}", logging.ERROR)
            finally:
                self._client = None
                self._announce(waiting=False, idling=False)
                close(client)

    def _failed(self, reason: str, level: int) -> None:
        """Log one line for the failure and wait the next backoff delay (or until stopped)."""
        delay = self._backoff.next()
        log.log(level, "%s: %s; reconnecting in %.1fs", self._where, reason, delay)
        with self._changed:
            self.errors.append(reason)
            self.delays.append(delay)
            self._changed.notify_all()
        self._stop.wait(delay)


def _text(exc: BaseException) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text or type(exc).__name__
