"""The writer's queued jobs: a job's work, the future that answers it, and a delivery's answer.

`store.writer.Writer` queues a `Job` per call and answers each after the
commit that took it in; this module holds no thread and no SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from mailhook.errors import RetryLater
from mailhook.models import Receipt
from mailhook.store.rows import Work


@dataclass(slots=True)
class Job:
    """What one `submit`, `submit_many`, `check` or `checkpoint` queues: its work and the future that answers it."""

    work: Work | None
    future: Future[Any]
    checkpoint: bool = False
    live: bool = True
    # Several works answered by one future (`submit_many`): a list of receipts, or RetryLater per item.
    works: Sequence[Work] | None = None

    @property
    def size(self) -> int:
        """Return how many deliveries this job adds to a commit."""
        return len(self.works) if self.works is not None else 1

    def claim(self) -> None:
        """Mark the future running; a waiter that gave up (cancelled) gets no answer, but the work is done."""
        self.live = self.future.set_running_or_notify_cancel()

    def resolve(self, result: Any) -> None:
        if self.live:
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if self.live:
            self.future.set_exception(exc)


def delivery_outcome(result: Receipt | Exception) -> Receipt | RetryLater:
    """Return a delivery's receipt, or the `RetryLater` its waiter gets for an error confined to it."""
    return RetryLater(f"delivery could not be stored: {result}") if isinstance(result, Exception) else result
