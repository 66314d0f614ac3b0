"""The parent's side of a worker's channel: commits what the worker sends, answers after each commit.

One thread per worker reads its requests and hands each write to the
parent's one writer (`store.interface.Storage`); the answer goes back from
the writer's commit callback, so a worker learns a delivery is stored only
once it is durable. The deliveries a worker sent in one frame (one turn of
its loop) go to the writer as one job, committed together, and are
answered in one frame.
The parent's listeners (metrics, the STATUS= counters) are told of every
delivery, so they count the whole group (the worker's refusals and open
SMTP sessions reach the parent's metrics too, and a worker's `/metrics`
answers with them); a delivery stored `pending` wakes the parent's backlog,
which extracts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mailhook.beside import extract_rows
from mailhook.errors import RetryLater
from mailhook.group import wire
from mailhook.group.channel import Channel
from mailhook.handover import gathered
from mailhook.metrics import Metrics
from mailhook.models import Receipt
from mailhook.pipeline import Pipeline
from mailhook.store.rows import Submission
from mailhook.thread_names import NamedThread

log = logging.getLogger("mailhook.group")


class StoreService:
    """Serves one worker's requests against the pipeline's store until the worker's end closes."""

    def __init__(
        self, channel: Channel, pipeline: Pipeline, loop: asyncio.AbstractEventLoop, name: str, metrics: Metrics,
    ) -> None:
        self.channel = channel
        self.pipeline = pipeline
        self.metrics = metrics
        self.sessions = 0.0  # the worker's open SMTP sessions, as of its last pong
        self.loop = loop
        self.name = name
        self.pong = 0  # the last heartbeat the worker's event loop answered
        self.prepared: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[list[str]] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        # "mh-reader-1" in `top -H` beside the worker process "mh-worker-1" (the kernel keeps 15 bytes).
        self._thread = NamedThread(target=self._serve, name=f"mailhook-reader-{name.removeprefix('worker-')}",
                                   daemon=True)
        # Extraction budget the worker holds (or waits for), by request number: set when it gives it back.
        self._holds: dict[int, asyncio.Event] = {}
        self._holding: set[asyncio.Task[None]] = set()
        # A frame's deliveries go to the writer as one job where it takes several at once (SQLite's `Writer`).
        self._many: Callable[[Sequence[Submission]], Future[list[Receipt | RetryLater]]] | None = getattr(
            pipeline.writer, "submit_many", None)
        self._max_batch: int = getattr(pipeline.writer, "max_batch", 0)

    def start(self) -> None:
        """Start reading the worker's requests."""
        self._thread.start()

    def ping(self, number: int) -> None:
        """Send a heartbeat; the worker's event loop answers it with a pong."""
        with contextlib.suppress(OSError):
            self.channel.send(("ping", number))

    def go(self) -> None:
        """Tell the worker to start accepting (every worker is prepared)."""
        with contextlib.suppress(OSError):
            self.channel.send(("go", 0))

    def _serve(self) -> None:
        try:
            while (messages := self.channel.receive_all()) is not None:
                submits = [message for message in messages if message[0] == "submit"]
                if submits:
                    self._submit(submits)
                for message in messages:
                    if message[0] != "submit":
                        self._handle(message)
        except Exception:
            log.exception("%s: unexpected error serving its requests", self.name)
        finally:
            self.channel.close()
            self.loop.call_soon_threadsafe(self._end)

    def _end(self) -> None:
        for release in self._holds.values():  # a dead worker's budget goes back
            release.set()
        _settle(self.ended, None)

    def _submit(self, messages: list[tuple[Any, ...]]) -> None:
        """Hand a frame's deliveries to the writer as one job (one commit), answered in one frame once committed.

        One future, one queue item and one wake-up of the writer thread per
        frame, not per delivery; and a frame is never split between commits
        (its answers waited for the last of them anyway). A store without
        `submit_many` (PostgreSQL's) gets them one by one, answered together.
        """
        started = time.perf_counter()
        numbers = [message[1] for message in messages]
        works: list[Submission] = [(wire.delivery(message[2]), wire.found(message[3])) for message in messages]
        many, size = self._many, self._max_batch or len(works)
        if many is None:
            storage = self.pipeline.writer
            stored = gathered([storage.submit(*work) for work in works])
            stored.add_done_callback(functools.partial(self._committed, numbers, works, started))
        elif len(works) <= size:
            many(works).add_done_callback(functools.partial(self._committed, numbers, works, started))
        else:  # a frame larger than a commit may be: in parts, each answered once committed
            for at in range(0, len(works), size):
                part = slice(at, at + size)
                many(works[part]).add_done_callback(
                    functools.partial(self._committed, numbers[part], works[part], started))

    def _committed(self, numbers: list[int], works: list[Submission], started: float,
                   done: Future[list[Receipt | RetryLater]]) -> None:
        """Tell the listeners of each delivery committed (or refused), then answer them all in one frame.

        As the pipeline does in one process, the listeners (STATUS= counters,
        metrics) are told before the answer goes: whoever got a 250 or 200
        finds the delivery counted. The worker wrote its log line. A delivery
        stored pending is told to the backlog instead, which reports it later.
        """
        elapsed = time.perf_counter() - started
        try:
            results = done.result()
        except RetryLater as exc:
            results = [exc] * len(works)
        except Exception as exc:  # noqa: BLE001 - answered as a temporary failure
            results = [RetryLater(f"storage error: {type(exc).__name__}")] * len(works)
        replies: list[tuple[Any, ...]] = []
        pending: list[tuple[int, float]] = []
        for number, (delivery, found), result in zip(numbers, works, results, strict=True):
            if isinstance(result, RetryLater):
                receipt = None
                replies.append(("failed", number, str(result)))
            else:
                receipt = result
                replies.append(("receipt", number, wire.receipt_values(receipt)))
            if found is None and receipt is not None:
                pending.append((receipt.delivery_id, started))
                continue
            for listener in self.pipeline.listeners:
                listener(delivery, receipt, elapsed)
        self._answered(replies, pending)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind, number, *args = message
        storage = self.pipeline.writer
        if kind == "complete":
            storage.complete(args[0]).add_done_callback(lambda done: self._answer(number, done))
        elif kind == "extract":
            self.loop.call_soon_threadsafe(self._extract, number, args[0])
        elif kind == "hold":
            self.loop.call_soon_threadsafe(self._hold, number, args[0])
        elif kind == "release":
            self.loop.call_soon_threadsafe(self._release, number)
        elif kind == "pong":
            self.pong = number
            self.sessions = args[0]
        elif kind == "rejected":
            self.metrics.on_rejected(*args)
        elif kind == "prepared":
            self.loop.call_soon_threadsafe(_settle, self.prepared, None)
        elif kind == "listening":
            self.loop.call_soon_threadsafe(_settle, self.ready, args[0])
        else:  # the reads: blocking, so not on this thread, which must keep taking writes
            read: Callable[[], Any] = {
                "health": storage.health,
                "position": lambda: storage.committed_position(*args),
                "quarantined": lambda: storage.quarantined_sources(*args),
                "totals": storage.totals,
                "metrics": lambda: self.metrics.exposition(*args),
            }[kind]
            # From the loop's thread: run_in_executor is not safe from this one.
            self.loop.call_soon_threadsafe(self.loop.run_in_executor, None, self._read, number, read)

    def _hold(self, number: int, size: int) -> None:
        self._keep(self._held(number, size))

    def _extract(self, number: int, args: tuple[Any, ...]) -> None:
        self._keep(self._extracted(number, args))

    def _keep(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._holding.add(task)
        task.add_done_callback(self._holding.discard)

    async def _extracted(self, number: int, args: tuple[Any, ...]) -> None:
        """Extract a worker's large delivery in the parent's extraction processes and send back its rows."""
        pool = self.pipeline.executor
        try:
            rows = await self.loop.run_in_executor(pool, extract_rows, *args)
        except BrokenProcessPool:
            # As the pipeline does for its own deliveries; the worker tries once more, then quarantines.
            if pool is not None:
                self.pipeline._renew_executor(pool)  # the pipeline's one way to replace its pool
            reply: tuple[Any, ...] = ("broken", number, "an extraction process died")
        except Exception as exc:  # answered as a temporary failure
            log.exception("%s: extraction failed", self.name)
            reply = ("failed", number, f"extraction error: {type(exc).__name__}")
        else:
            reply = ("done", number, rows)
        with contextlib.suppress(OSError):
            self.channel.send(reply)

    async def _held(self, number: int, size: int) -> None:
        release = self._holds.setdefault(number, asyncio.Event())
        try:
            async with self.pipeline.budget.hold(size):
                with contextlib.suppress(OSError):
                    self.channel.send(("done", number, None))
                await release.wait()
        finally:
            self._holds.pop(number, None)

    def _release(self, number: int) -> None:
        self._holds.setdefault(number, asyncio.Event()).set()

    def _read(self, number: int, read: Callable[[], Any]) -> None:
        done: Future[Any] = Future()
        try:
            done.set_result(read())
        except Exception as exc:  # noqa: BLE001 - answered as a temporary failure
            done.set_exception(exc)
        self._answer(number, done)

    def _answered(self, replies: list[tuple[Any, ...]], pending: list[tuple[int, float]]) -> None:
        """Send a frame's answers in one frame, after waking the backlog for those stored pending (once)."""
        if pending:
            self.loop.call_soon_threadsafe(self._wake, pending)
        # OSError: the worker died; its clients got no answer and send again (duplicates, stored once).
        with contextlib.suppress(OSError):
            self.channel.send_all(replies)

    def _wake(self, pending: list[tuple[int, float]]) -> None:
        for delivery_id, started in pending:
            for wake in self.pipeline.pending_listeners:
                wake(delivery_id, started)

    def _answer(self, number: int, done: Future[Any]) -> None:
        # OSError: the worker died; its client got no answer and sends again (a duplicate, stored once).
        with contextlib.suppress(OSError):
            self.channel.send(_reply(number, done))


def _reply(number: int, done: Future[Any]) -> tuple[Any, ...]:
    exc = done.exception()
    return ("done", number, done.result()) if exc is None else (
        "failed", number, str(exc) if isinstance(exc, RetryLater) else f"storage error: {type(exc).__name__}")


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
