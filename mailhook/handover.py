"""Futures finished on the writer's thread handed to an event loop: one wake-up for all that arrive together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future

from mailhook.errors import RetryLater
from mailhook.models import Receipt


class Mailbox:
    """Futures finished in other threads, handed to one event loop with one wake-up for all that arrive together."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.get_ident()  # made on the loop's thread (`pipeline.Pipeline._waiter`)
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Receipt], Future[Receipt], Callable[[], object] | None]] = []

    def put(
        self, waiter: asyncio.Future[Receipt], source: Future[Receipt], then: Callable[[], object] | None = None,
    ) -> None:
        """Hand `waiter` the outcome of `source`: at once on the loop's thread, else with one wake-up for all queued.

        `then`, if given, is called on the loop just before (a delivery stored pending telling the backlog).
        """
        if threading.get_ident() == self._thread:
            # Finished on the loop's own thread (a worker of `serve --workers N` reads its answers there):
            # no self-pipe write and read to wake a loop that runs, and no turn of it to wait for.
            if not self.loop.is_closed():
                _deliver(waiter, source, then)
            return
        with self._lock:
            self._done.append((waiter, source, then))
            if len(self._done) > 1:
                return
        if self.loop.is_closed():
            return  # as asyncio.wrap_future: nobody is left to tell
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for waiter, source, then in done:
            _deliver(waiter, source, then)


def _deliver(
    waiter: asyncio.Future[Receipt], source: Future[Receipt], then: Callable[[], object] | None,
) -> None:
    if then is not None:
        then()
    settle(waiter, source)


class Outcome(asyncio.Future[Receipt]):
    """A store's future of the loop whose one plain callback (`then`) runs as it is settled, not a loop turn later.

    An asyncio future runs its done callbacks through `call_soon`: a reply
    written by one would wait for the loop's next turn (another
    `epoll_wait`) after the turn that read the store's answer. Settled here
    (`settle`, on the loop's thread: `Mailbox` hands it there), `then` is
    called at once, after the delivery's log line, as a done callback would
    be; the future's own callbacks (an awaiting task, `asyncio.wait`) still
    run a turn later.
    """

    then: Callable[[Outcome], object] | None = None

    def when_done(self, then: Callable[[Outcome], object]) -> None:
        """Call `then(self)` once this is settled: at once then, or a loop turn from now if it already is."""
        if self.done():
            self.add_done_callback(then)
        else:
            self.then = then

    def set_result(self, result: Receipt) -> None:
        """Settle with `result`, then call `then`."""
        super().set_result(result)
        self._settled()

    def set_exception(self, exception: type | BaseException) -> None:
        """Settle with `exception`, then call `then`."""
        super().set_exception(exception)
        self._settled()

    def drop(self) -> None:
        """Cancel as `Future.cancel` does (a subclass may refuse `cancel`: the SMTP door's), then call `then`."""
        asyncio.Future.cancel(self)
        self._settled()

    def _settled(self) -> None:
        then, self.then = self.then, None
        if then is None:
            return
        try:
            then(self)
        except Exception as exc:  # noqa: BLE001 - as the loop treats a done callback's error
            self.get_loop().call_exception_handler({
                "message": f"Exception in callback {then!r}", "exception": exc, "future": self})


def settle(waiter: asyncio.Future[Receipt], source: Future[Receipt] | asyncio.Future[Receipt]) -> None:
    """Give `waiter` the outcome of `source`, a finished future (unless `waiter` was cancelled meanwhile)."""
    if waiter.cancelled():
        return
    if source.cancelled():
        if isinstance(waiter, Outcome):
            waiter.drop()
        else:
            asyncio.Future.cancel(waiter)
    elif (exc := source.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(source.result())


def gathered(futures: list[Future[Receipt]]) -> Future[list[Receipt | RetryLater]]:
    """Return one future of the outcomes of `futures`, in order: each receipt, or its `RetryLater`."""
    gathered: Future[list[Receipt | RetryLater]] = Future()
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Receipt]) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        outcomes: list[Receipt | RetryLater] = []
        for future in futures:
            exc = future.exception()
            if exc is None:
                outcomes.append(future.result())
            elif isinstance(exc, RetryLater):
                outcomes.append(exc)
            else:
                gathered.set_exception(exc)
                return
        gathered.set_result(outcomes)

    if not futures:
        gathered.set_result([])
    for future in futures:
        future.add_done_callback(one_done)
    return gathered
