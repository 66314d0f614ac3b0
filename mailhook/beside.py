"""A delivery too large to read on the event loop: refused by its structure at once, or extracted beside the loop.

The pipeline reads a small delivery on its event loop; one larger than
`submitter.INLINE_LIMIT` is first counted against the email structure limits
(a scan of its bytes), then extracted in the pipeline's executor (`serve`
gives it a worker process, so a long parse in C, which holds the GIL, cannot
stall the loop; a worker of `serve --workers N` the parent's pool), or without
one in a thread. From a worker process it comes back as the rows to store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool

from mailhook.errors import Unreadable
from mailhook.extract import extract
from mailhook.extract.mail import check_structure
from mailhook.models import Delivery, Extraction, Kind, MailLimits
from mailhook.store.rows import Rows, worker_rows

log = logging.getLogger("mailhook.ingest")


def extract_rows(
    raw: bytes, kind: Kind, subscriptions: Mapping[int, str], limits: MailLimits, content_type: str | None = None
) -> Extraction | Rows:
    """Extract a delivery as the rows to store, bounded by the payload ratio (runs in a worker process)."""
    return worker_rows(extract(raw, kind, subscriptions, content_type=content_type, limits=limits), len(raw))


def refused_structure(delivery: Delivery, limits: MailLimits) -> Extraction | None:
    """Return the quarantine of an email over a structure limit, found by counting its bytes (ms), else None.

    Such an email is refused without waiting for the budget or a worker; the
    reason is the one `extract` would give.
    """
    if delivery.kind != "email":
        return None
    try:
        check_structure(delivery.raw, limits)
    except Unreadable as exc:
        return Extraction(reason=str(exc))
    return None


async def extract_beside(
    delivery: Delivery, pool: Executor | None, subscriptions: Mapping[int, str], limits: MailLimits, *,
    renew: Callable[[Executor], Executor | None], inline: Callable[[Delivery], Extraction],
) -> Extraction | Rows:
    """Extract a large delivery beside the loop: in `pool`'s worker process, else in a thread.

    A pool whose worker died is replaced by `renew` (None: none can start,
    and the delivery is read `inline`, the pipeline's own extraction).
    """
    loop = asyncio.get_running_loop()
    if pool is None:
        # In a thread the loop keeps serving (the GIL is handed over every few ms, if not in C).
        return await loop.run_in_executor(None, inline, delivery)
    subscriptions = dict(subscriptions)
    for _ in range(2):  # a second time on a new worker: the one before may be what killed it
        try:
            # Rows (strings, bounded by the payload ratio) cost far less to send back than Events.
            return await loop.run_in_executor(
                pool, extract_rows, delivery.raw, delivery.kind, subscriptions, limits, delivery.content_type
            )
        except BrokenProcessPool:
            # Its worker died (out of memory, killed, crashed by an input: this one or the one before).
            pool = renew(pool)
            if pool is None:
                return inline(delivery)
    log.error("an extraction worker died twice on one delivery; quarantined")
    return Extraction(reason="extraction crashed its worker process")
