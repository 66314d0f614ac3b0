"""The answer to a request a worker's event loop sent: a `Future` set and read on that loop's thread alone.

`concurrent.futures.Future` guards its state with a `threading.Condition`
(built in Python for each future) that every call takes: adding a callback,
setting the result, asking `done()`, `cancelled()`, `exception()`,
`result()`. Other threads may wait on it; but the parent's answers to the
requests a worker's loop sends are read by that same loop
(`RemoteStorage._readable`), so per delivery those locks guarded nothing:
`timeit` of one future's life as the pipeline leads it (made, a callback
added, set, then asked `cancelled`, `exception` and `result`) 5.7 µs.
`Answer` keeps the same calls without them, for the requests the loop sends
and reads itself; any other thread's request still gets a `Future`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

T = TypeVar("T")

# The logger `concurrent.futures` reports a failing callback to, as it does for its own futures.
_LOGGER = logging.getLogger("concurrent.futures")


class Answer(Future[T]):
    """A `concurrent.futures.Future` for one thread: set, read and called back on the loop that made it, unlocked.

    A request once sent cannot be called back, so an answer cannot be
    cancelled; nor waited for: the loop that would wait is the one that
    reads the answer, so asking for an outcome not yet set raises
    `InvalidStateError` rather than block forever.
    """

    __slots__ = ("_callbacks", "_error", "_settled", "_value")

    def __init__(self) -> None:  # not Future's: its Condition is what this future does without
        self._settled = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], object]] = []

    def __repr__(self) -> str:
        state = "pending" if not self._settled else "raised" if self._error is not None else "finished"
        return f"<Answer {state}>"

    def cancel(self) -> bool:
        """Refuse: the request has gone to the parent, which will answer it."""
        return False

    def cancelled(self) -> bool:
        """Say False: an answer is never cancelled."""
        return False

    def running(self) -> bool:
        """Say whether the answer is still awaited."""
        return not self._settled

    def done(self) -> bool:
        """Say whether the answer has come."""
        return self._settled

    def result(self, timeout: float | None = None) -> T:
        """Return the answer, or raise the failure it is; `InvalidStateError` before it came."""
        if not self._settled:
            raise InvalidStateError("not answered yet (the loop that reads the answer cannot wait for it)")
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the failure the answer is, or None; `InvalidStateError` before it came."""
        if not self._settled:
            raise InvalidStateError("not answered yet (the loop that reads the answer cannot wait for it)")
        return self._error

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call `fn(self)` once the answer has come: now if it has."""
        if self._settled:
            self._call(fn)
        else:
            self._callbacks.append(fn)

    def set_running_or_notify_cancel(self) -> bool:
        """Say True: the request is sent and cannot be cancelled."""
        return True

    def set_result(self, result: T) -> None:
        """Settle the answer with its value and call back."""
        self._settle(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        """Settle the answer as a failure and call back."""
        self._settle(None, exception)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if self._settled:
            raise InvalidStateError(f"{self!r} answered twice")
        self._value, self._error, self._settled = value, error, True
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            self._call(fn)

    def _call(self, fn: Callable[[Future[T]], object]) -> None:
        try:
            fn(self)
        except Exception:
            _LOGGER.exception("exception calling callback for %r", self)
