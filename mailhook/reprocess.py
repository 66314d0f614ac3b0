"""Re-extracting stored deliveries: `mailhook reprocess`, with the current extractors."""

from __future__ import annotations

from collections.abc import Mapping

from mailhook.extract import extract
from mailhook.models import MailLimits, Receipt
from mailhook.store.interface import Rereading


def reprocess(
    store: Rereading, subscriptions: Mapping[int, str], *, quarantined_only: bool, limits: MailLimits | None = None
) -> list[Receipt]:
    """Re-extract stored raw deliveries with the current extractors, adding only new events."""
    receipts = []
    for stored in list(store.stored_deliveries(quarantined_only=quarantined_only)):
        extraction = extract(stored.raw, "email" if stored.kind == "email" else "document", subscriptions,
                             content_type=stored.content_type, limits=limits)
        receipts.append(store.reextract(stored.id, extraction, len(stored.raw)))
    return receipts
