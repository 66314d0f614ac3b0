"""The one log line each delivery gets: channel, peer, message id, outcome, events, milliseconds."""

from __future__ import annotations

import logging

from mailhook.logs import logfmt
from mailhook.models import Delivery, Receipt

log = logging.getLogger("mailhook.ingest")


def log_delivery(delivery: Delivery, receipt: Receipt | None, elapsed: float, *, level: int = logging.INFO) -> None:
    """Write the one log line a delivery gets: channel, peer, message id, outcome, events, milliseconds.

    A delivery stored well is logged at `level`; one quarantined or not stored always as a warning.
    """
    if receipt is None or receipt.status == "quarantined":
        level = logging.WARNING
    if log.isEnabledFor(level):
        # Formatted only when a handler writes it: the text for text logs, the fields for JSON.
        line = DeliveryLine(delivery, receipt, elapsed)
        # The record made directly: Logger.log would walk the stack for a file and line no format shows.
        log.handle(log.makeRecord(log.name, level, "", 0, "delivery %s", (line,), None, extra={"delivery": line}))


class DeliveryLine:
    """A delivery's log line, built lazily: `str()` gives the text, `fields()` the JSON fields."""

    __slots__ = ("delivery", "elapsed", "receipt")

    def __init__(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        self.delivery = delivery
        self.receipt = receipt
        self.elapsed = elapsed

    def fields(self) -> dict[str, object]:
        """Return the line's fields in order, None where a field is absent."""
        delivery, receipt = self.delivery, self.receipt
        fields: dict[str, object] = {
            "channel": delivery.channel,
            "peer": delivery.remote_addr or delivery.source or "-",
            "message_id": (receipt.message_id if receipt else None) or "-",
            "from": delivery.envelope_from,
            "to": ",".join(delivery.envelope_to) or None,
            "status": receipt.status if receipt else "retry-later",
            "delivery_id": receipt.delivery_id if receipt else None,
            "events": receipt.events if receipt else 0,
            "duplicates": receipt.duplicates if receipt else 0,
            "size": len(delivery.raw),
            "ms": round(self.elapsed * 1000, 1),
        }
        if receipt is not None and receipt.error:
            fields["error"] = receipt.error
        return fields

    def __str__(self) -> str:
        delivery, receipt = self.delivery, self.receipt
        # Every value a peer controls goes through logfmt(): a space, quote or `=` in it cannot forge a field.
        text = f"channel={delivery.channel} peer={logfmt(delivery.remote_addr or delivery.source or '-')}"
        if receipt is None:
            text += " message_id=-"
        else:
            text += f" message_id={logfmt(receipt.message_id or '-')}"
        if delivery.envelope_from is not None:
            text += f" from={logfmt(delivery.envelope_from)}"
        if delivery.envelope_to:
            text += f" to={logfmt(','.join(delivery.envelope_to))}"
        if receipt is None:
            text += " status=retry-later events=0 duplicates=0"
        else:
            text += (
                f" status={receipt.status} delivery_id={receipt.delivery_id}"
                f" events={receipt.events} duplicates={receipt.duplicates}"
            )
        text += f" size={len(delivery.raw)} ms={round(self.elapsed * 1000, 1)}"
        if receipt is not None and receipt.error:
            text += f" error={logfmt(receipt.error)}"
        return text
