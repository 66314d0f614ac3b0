"""What the backlog's worker processes run: `extract_pending` reads pending deliveries by id and extracts them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mailhook.extract import extract
from mailhook.models import Delivery, MailLimits
from mailhook.store.reads import Reader, open_pending_reader
from mailhook.store.rows import Completion, worker_rows

_readers: dict[Path | str, Reader] = {}
_readers_lock = threading.Lock()


def _reader(source: Path | str) -> Reader:
    # One connection per worker process for its whole life, not one per chunk; made once even when
    # threads (extraction without worker processes) ask at the same moment.
    with _readers_lock:
        reader = _readers.get(source)
        if reader is None:
            reader = _readers[source] = open_pending_reader(source)
        return reader


def close_readers() -> None:
    """Close the connections `extract_pending` keeps in this process (its life's, in a worker)."""
    with _readers_lock:
        for reader in _readers.values():
            reader.close()
        _readers.clear()


def extract_pending(
    path: Path | str, ids: Sequence[int], subscriptions: Mapping[int, str], limits: MailLimits | None = None
) -> list[tuple[Delivery, Completion]]:
    """Read the still-pending deliveries among `ids` and extract each (runs in a worker process)."""
    return [
        (delivery, Completion(delivery_id, delivery.sha256, worker_rows(
            extract(delivery.raw, delivery.kind, subscriptions, content_type=delivery.content_type, limits=limits),
            len(delivery.raw))))
        for delivery_id, delivery in _reader(path).read(ids)
    ]


# What runs in a worker: read pending deliveries by id and extract them.
Extract = Callable[[Path | str, Sequence[int], Mapping[int, str]], list[tuple[Delivery, Completion]]]
