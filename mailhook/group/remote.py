"""The store as a worker process sees it: a `Storage` whose writes the parent commits.

A worker of `serve --workers N` sends each delivery (with its extraction, or
None to store it `pending`) to the parent, whose one group-commit writer
commits it; the future resolves only when the parent's answer arrives, after
the commit. So a worker's door answers 250 or 200 only for what is durable,
and nothing a worker acknowledged depends on the worker staying alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from mailhook.errors import RetryLater
from mailhook.group import wire
from mailhook.group.answer import Answer
from mailhook.group.channel import Channel
from mailhook.group.turn_end import TurnEndSelector
from mailhook.logs import HeldLines
from mailhook.models import Delivery, Extraction, FolderPosition, Receipt
from mailhook.store.rows import Completion, Rows, worker_rows
from mailhook.thread_names import NamedThread

if TYPE_CHECKING:
    from mailhook.store.interface import Lease, PendingQueue

log = logging.getLogger("mailhook.group")

# Seconds a read (health, positions) waits for the parent before giving up.
ASK_TIMEOUT = 10.0
GONE = "the mailhook supervisor process is gone"
# The requests kept in the outbox until the loop turn ends: those whose answer the sender waits for.
_BATCHED = frozenset({"submit", "complete"})


class RemoteStorage:
    """A `store.interface.Storage` that sends writes and reads to the parent over a `Channel`.

    `on_ping(n)` is called (on the reader thread) for each heartbeat the
    parent sends, the worker answering it from its event loop; `on_go()` when
    the parent lets the worker start accepting. `on_lost()` is
    called once when the parent's end closes: every write still waiting fails
    with `RetryLater`, so no session is told its message is stored. Given the
    worker's event `loop` (built on its thread), the deliveries the loop
    submits in one turn go to the parent in one frame, at the end of the turn:
    as the loop asks its selector for I/O when that is the loop's
    `turn_end` (`group.turn_end`), else in a callback of the next turn.
    """

    def __init__(
        self, channel: Channel, *, on_ping: Callable[[int], None], on_lost: Callable[[], None],
        on_go: Callable[[], None] = lambda: None, loop: asyncio.AbstractEventLoop | None = None,
        turn_end: TurnEndSelector | None = None,
    ) -> None:
        self.channel = channel
        # Sent from `loop`'s thread, deliveries wait in the outbox until the loop turn ends: the deliveries
        # of one turn go in one frame (one pickle, one system call, one wake-up of the parent's reader).
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None
        self._turn_end = turn_end
        self._outbox: list[tuple[Any, ...]] = []
        self._asked: list[int] = []  # the outbox's requests that wait for an answer
        self.on_ping = on_ping
        self.on_go = on_go
        self.on_lost = on_lost
        self._waiting: dict[int, Future[Any]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._lost = False
        self._thread: threading.Thread | None = None
        if loop is None:
            self._thread = NamedThread(target=self._read, name="mailhook-remote-store", daemon=True)
            self._thread.start()
        else:
            # The loop reads the parent's answers itself: no reader thread to wake, and no hop from it to the
            # loop, per frame. Frames read before (with the first message) are taken at the first turn.
            loop.add_reader(channel.sock.fileno(), self._readable)
            loop.call_soon(self._readable)

    @property
    def waiting(self) -> int:
        """Return how many requests wait for the parent's answer."""
        return len(self._waiting)

    def submit(self, delivery: Delivery, extraction: Extraction | Rows | None) -> Future[Receipt]:
        """Send a delivery to the parent's writer; the future resolves once it is committed.

        An extraction goes as its rows, made here (as the extraction processes
        make them): the payload JSON and the row tuples are built on this
        worker's core, not in the parent's one writer thread, and tuples of
        strings cost less to pickle than events. The delivery and the rows go
        as plain tuples (`group.wire`), which pickle in C.
        """
        if isinstance(extraction, Extraction):
            extraction = worker_rows(extraction, len(delivery.raw))
        return self._ask("submit", wire.delivery_values(delivery), wire.found_values(extraction))

    def complete(self, completion: Completion) -> Future[Receipt]:
        """Send the events of a delivery stored pending to the parent's writer."""
        return self._ask("complete", completion)

    def health(self) -> str | None:
        """Return why the parent's store refuses writes now, or None (blocking: call it from a thread)."""
        try:
            answer: str | None = self._ask("health").result(ASK_TIMEOUT)
        except (RetryLater, TimeoutError):
            return GONE if self._lost else "the store does not answer"
        return answer

    def committed_position(self, account: str, folder: str) -> FolderPosition | None:
        """Return how far an IMAP folder is stored (the IMAP poller runs in the parent; asked for completeness)."""
        answer: FolderPosition | None = self._ask("position", account, folder).result(ASK_TIMEOUT)
        return answer

    def quarantined_sources(self, sources: Sequence[str]) -> set[str]:
        """Return which of these IMAP message sources were stored quarantined."""
        answer: set[str] = self._ask("quarantined", list(sources)).result(ASK_TIMEOUT)
        return answer

    def lease(self, account: str, folder: str) -> Lease:
        """Refuse: the IMAP pollers run in the main process, which holds their leases, never in a worker."""
        raise RuntimeError("a worker polls no IMAP folder: the main process holds the folder leases")

    def pending_queue(self) -> PendingQueue:
        """Refuse: the extraction backlog runs in the main process, never in a worker."""
        raise RuntimeError("a worker has no extraction backlog: the main process takes up pending deliveries")

    def totals(self) -> tuple[int, int, int]:
        """Return the database's totals, as the parent's store counts them (blocking)."""
        answer: tuple[int, int, int] = self._ask("totals").result(ASK_TIMEOUT)
        return answer

    @property
    def depth(self) -> int:
        """Return how many of this worker's requests wait for the parent's answer."""
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        """Say whether the parent still answers (its end of the channel is open)."""
        return not self._lost

    def close(self) -> None:
        """Close the channel: the doors are closed and every write answered before this is called."""
        self._flush()
        if self._thread is None:
            assert self._loop is not None
            self._loop.remove_reader(self.channel.sock.fileno())
        self.channel.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        else:
            self._end()

    def _ask(self, kind: str, *args: Any) -> Future[Any]:
        return self.ask(kind, *args)[1]

    def ask(self, kind: str, *args: Any) -> tuple[int, Future[Any]]:
        """Send a request; return its number and a future for the parent's answer.

        A write the loop's own thread sends waits in the outbox for the end of
        the turn, and its future is an `Answer`: the loop reads the parent's
        answer itself, so nothing but that thread ever touches it.
        """
        batched = kind in _BATCHED and self._loop_thread == threading.get_ident()
        future: Future[Any] = Answer() if batched else Future()
        with self._lock:
            number = next(self._ids)
            if self._lost:
                future.set_exception(RetryLater(GONE))
                return number, future
            self._waiting[number] = future
        if batched:
            self._queue((kind, number, *args))
            self._asked.append(number)
            return number, future
        try:
            self.channel.send((kind, number, *args))
        except OSError:
            self._gone([number])
        return number, future

    def tell(self, kind: str, number: int, *args: Any) -> None:
        """Send a message that needs no answer (a release of budget held under request `number`, a refusal).

        Sent at once, never kept for the end of the loop turn: a peer told of a
        refusal may scrape `/metrics` next, on another worker, and find it counted.
        """
        with contextlib.suppress(OSError):
            self.channel.send((kind, number, *args))

    def _queue(self, message: tuple[Any, ...]) -> None:
        """Put `message` in the outbox (on the loop's thread), sent when the loop's turn ends."""
        self._outbox.append(message)
        if len(self._outbox) == 1:
            if self._turn_end is not None:
                self._turn_end.at_turn_end(self._flush_at_turn_end)
            else:
                assert self._loop is not None
                self._loop.call_soon(self._flush)

    def _flush_at_turn_end(self) -> bool:
        """Send the outbox as the loop is about to wait; say whether a failure was scheduled for the next turn."""
        failed = self._send_outbox()
        if failed:
            # Failed on the loop's next turn, not inside the selector: their callbacks schedule more callbacks.
            assert self._loop is not None
            self._loop.call_soon(self._gone, failed)
        return bool(failed)

    def _flush(self) -> None:
        """Send the outbox in one frame (on the loop's thread)."""
        self._gone(self._send_outbox())

    def _send_outbox(self) -> list[int]:
        """Send the outbox in one frame; return the requests in it that wait in vain (the parent is gone)."""
        messages, self._outbox = self._outbox, []
        asked, self._asked = self._asked, []
        try:
            self.channel.send_all(messages)
        except OSError:
            return asked
        return []

    def _gone(self, numbers: list[int]) -> None:
        """Fail the requests `numbers`, which could not be sent: the parent is gone."""
        for number in numbers:
            with self._lock:
                future = self._waiting.pop(number, None)
            if future is not None:
                future.set_exception(RetryLater(GONE))

    def _read(self) -> None:
        while (messages := self.channel.receive_all()) is not None:
            self._take(messages)
        self._end()

    def _readable(self) -> None:
        """Take what the parent sent (on the loop, when the channel is readable)."""
        frames = self.channel.receive_ready()
        if frames is None:
            assert self._loop is not None
            self._loop.remove_reader(self.channel.sock.fileno())
            self._end()
            return
        # The log lines of the deliveries answered (the pipeline writes one each as it resolves) in one write.
        with HeldLines():
            for messages in frames:
                self._take(messages)

    def _take(self, messages: list[tuple[Any, ...]]) -> None:
        # One frame: the answers to the deliveries of one of the parent's commits (or a ping, a read's answer).
        for message in messages:
            kind, number = message[0], message[1]
            if kind == "ping":
                self.on_ping(number)
                continue
            if kind == "go":
                self.on_go()
                continue
            with self._lock:
                future = self._waiting.pop(number, None)
            if future is None:
                continue
            if kind == "receipt":  # a delivery's, as its values
                future.set_result(wire.receipt(message[2]))
            elif kind == "done":
                future.set_result(message[2])
            elif kind == "broken":  # the parent's extraction process died on it (or before it)
                future.set_exception(BrokenProcessPool(message[2]))
            else:  # "failed": the parent's writer said RetryLater (its reason in words)
                future.set_exception(RetryLater(message[2]))

    def _end(self) -> None:
        """The parent's end closed (or this one): fail every request still waiting, once, and say so."""
        with self._lock:
            if self._lost:
                return
            self._lost = True
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(RetryLater(GONE))
        self.on_lost()
