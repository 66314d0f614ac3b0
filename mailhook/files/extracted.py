"""`Extracted`: the input in chunks, in order, each extracted ahead in a process pool while the writer stores."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from pathlib import Path

from mailhook.beside import extract_rows
from mailhook.files.deliveries import Unreadable
from mailhook.models import Delivery, Kind, MailLimits
from mailhook.submitter import Found
from mailhook.workers import extraction_pool

# Parallel extraction from about a hundred emails (was: a megabyte, some 450); below that the
# workers' start-up costs about what they save (60 and 200 emails timed alike, within noise).
_PARALLEL_BYTES = 256 << 10
CHUNK = 64
IN_FLIGHT = 4


def extraction_pool_for(paths: list[str], workers: int | None = None) -> Executor | None:
    """Return a process pool of `workers` (default: every core) for extraction when the input is worth it."""
    if workers is not None and workers < 2:
        return None
    total = 0
    for name in paths:
        path = Path(name)
        try:
            if name != "-" and path.is_dir():
                total = _PARALLEL_BYTES
            elif name != "-":
                total += path.stat().st_size
        except OSError:
            continue
    return extraction_pool(workers) if total >= _PARALLEL_BYTES else None


def _extract_chunk(
    chunk: list[tuple[bytes, Kind]], subscriptions: Mapping[int, str], limits: MailLimits
) -> list[Found]:
    """Extract a chunk of deliveries in a worker process, as the rows to store.

    Rows (plain tuples) cost the parent far less to unpickle than `Extraction`s,
    and building them here takes that work off the parent too.
    """
    return [extract_rows(raw, kind, subscriptions, limits) for raw, kind in chunk]


class Extracted:
    """The items in chunks of `size`, in input order, each with its extractions done in `pool`.

    An Unreadable's extraction is None, and so is every one without a pool (to be extracted in this thread).
    Iterating yields `(chunk, extractions)` pairs; at most `IN_FLIGHT` + 1 chunks are in the pool at once.
    """

    def __init__(
        self, items: Iterable[Delivery | Unreadable], pool: Executor | None, subscriptions: Mapping[int, str],
        limits: MailLimits, size: int = 64,
    ) -> None:
        self.items = iter(items)
        self.pool = pool
        self.subscriptions = dict(subscriptions)
        self.limits = limits
        self.size = size
        self.in_flight: deque[tuple[list[Delivery | Unreadable], Future[list[Found]]]] = deque()
        self.exhausted = False

    def send_ahead(self) -> None:
        """Hand the pool chunks until `IN_FLIGHT` + 1 are in it or the input ends; without a pool, nothing."""
        while self.pool is not None and not self.exhausted and len(self.in_flight) <= IN_FLIGHT:
            chunk = self._next_chunk()
            if chunk:
                work = [(d.raw, d.kind) for d in chunk if isinstance(d, Delivery)]
                self.in_flight.append(
                    (chunk, self.pool.submit(_extract_chunk, work, self.subscriptions, self.limits)))

    def _next_chunk(self) -> list[Delivery | Unreadable]:
        chunk: list[Delivery | Unreadable] = []
        for item in self.items:
            chunk.append(item)
            if len(chunk) >= self.size:
                return chunk
        self.exhausted = True
        return chunk

    def __iter__(self) -> Iterator[tuple[list[Delivery | Unreadable], list[Found | None]]]:
        if self.pool is None:
            while not self.exhausted:
                chunk = self._next_chunk()
                if chunk:
                    yield chunk, [None] * len(chunk)
            return
        # Enough chunks in flight to keep every worker busy, few enough to bound memory.
        self.send_ahead()
        while self.in_flight:
            chunk, future = self.in_flight.popleft()
            results = iter(future.result())
            self.send_ahead()  # before handing this chunk on, so the workers never wait for it
            yield chunk, [next(results) if isinstance(item, Delivery) else None for item in chunk]
