"""Helpers for the analysts' tests: a small hand-made set of events, and databases built from events or fixtures."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from process_support import ALLOW_ROOT

from mailhook.cli import main
from mailhook.models import Attempt, Delivery, Event, Extraction
from mailhook.store.write import Store

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def event(
    event_type: str,
    resource_id: int,
    *,
    result: str | None = None,
    modified: str | None = None,
    created: str | None = None,
    broadcast: int | None = None,
    duration: int | None = None,
    billed: str | None = None,
    attempts: Iterable[str] = (),
    message: str | None = None,
    **more: object,
) -> Event:
    """Build one event as an extractor would, with one attempt per result in `attempts`."""
    kind = "Call" if "CALL" in event_type else "Text" if "TEXT" in event_type else "Broadcast"
    fields: dict[str, object] = {
        "event_type": event_type,
        "event_type_source": "inferred",
        "api_version": "1.1",
        "format": "json",
        "resource_type": more.pop("resource_type", kind),
        "resource_id": resource_id,
        "final_result": result,
        "modified": modified,
        "created": created,
        "broadcast_id": broadcast,
        "duration": duration,
        "billed_amount": None if billed is None else Decimal(billed),
        "message": message,
        "inbound": event_type.startswith("INBOUND"),
        "to_number": f"1213555{resource_id % 10000:04d}",
        "from_number": "67076",
        "attempts": tuple(Attempt(record_id=resource_id * 10 + i, result=r) for i, r in enumerate(attempts)),
        "payload": {kind: {"@id": str(resource_id)}},
    }
    fields.update(more)
    return Event(**fields)  # type: ignore[arg-type]


OUT_CALL, IN_CALL = "OUTBOUND_CALL_FINISHED", "INBOUND_CALL_FINISHED"
OUT_TEXT, IN_TEXT = "OUTBOUND_TEXT_FINISHED", "INBOUND_TEXT_FINISHED"

# Campaign 100 calls, campaign 200 texts, inbound traffic of no campaign, one v2 account event.
# The figures the tests expect are worked out by hand in test_stats.py from this list.
SAMPLE: tuple[Event, ...] = (
    event("CAMPAIGN_STARTED", 100, modified="2024-03-01T09:00:00Z", broadcast_name="Spring",
          broadcast_status="RUNNING", broadcast_type="VOICE"),
    event(OUT_CALL, 1, result="LA", broadcast=100, created="2024-03-01T10:00:00Z",
          modified="2024-03-01T10:01:00Z", duration=30, billed="1.0", attempts=["LA"]),
    event(OUT_CALL, 2, result="AM", broadcast=100, modified="2024-03-01T11:00:00Z", duration=20,
          billed="0.5", attempts=["NO_ANS", "AM"]),
    event(OUT_CALL, 3, result="NO_ANS", broadcast=100, modified="2024-03-02T09:00:00Z", duration=0,
          billed="0", attempts=["NO_ANS"]),
    event(OUT_CALL, 4, result="BUSY", broadcast=100, modified="2024-03-02T23:59:59Z",
          attempts=["BUSY", "BUSY", "BUSY"]),
    event(OUT_CALL, 5, result="XFER", broadcast=100, modified="2024-03-02T12:00:00Z", duration=100,
          billed="2.5", attempts=["XFER", "XFER_LEG"]),
    event("CAMPAIGN_FINISHED", 100, modified="2024-03-03T00:00:00Z", broadcast_name="Spring",
          broadcast_status="FINISHED"),
    event(OUT_TEXT, 11, result="SENT", broadcast=200, modified="2024-03-01T12:00:00Z", billed="0.03",
          attempts=["SENT"], message="Spring sale starts today"),
    event(OUT_TEXT, 12, result="SENT", broadcast=200, modified="2024-03-01T12:00:01Z", billed="0.03",
          attempts=["SENT"], message="Spring sale starts today"),
    event(OUT_TEXT, 13, result="DNT", broadcast=200, modified="2024-03-02T12:00:00Z", billed="0",
          attempts=["DNT"], message="Spring sale starts today"),
    event(OUT_TEXT, 14, result="TOO_BIG", broadcast=200, modified="2024-03-02T12:00:01Z",
          attempts=["TOO_BIG"], message="A very long spring sale announcement"),
    event(OUT_TEXT, 15, broadcast=200, modified="2024-03-02T12:00:02Z", message="No result came back"),
    event(IN_TEXT, 21, result="RECEIVED", created="2024-03-02T08:00:00Z", billed="0.03", attempts=["RECEIVED"],
          message="STOP sending me these please"),
    event(IN_CALL, 22, result="LA", modified="2024-03-03T10:00:00Z", duration=45, billed="1.5", attempts=["LA"]),
    event("CONTACT_LIST_VALIDATION_FINISHED", 5, modified="2024-03-03T12:00:00Z", resource_type="ContactList",
          api_version="2"),
)


def delivery_for(item: Event, copy: int = 0) -> Delivery:
    """Return a file delivery whose bytes are unique to the event (and to `copy`)."""
    raw = f"{item.dedupe_key} copy {copy}".encode()
    return Delivery(channel="file", raw=raw, received_at="2026-01-01T00:00:00Z", kind="document",
                    source=hashlib.sha256(raw).hexdigest()[:8])


def store_events(path: Path, events: Iterable[Event], *, copy: int = 0) -> None:
    """Store each event as its own delivery, all in one transaction."""
    store = Store(path)
    try:
        results = store.write([(delivery_for(e, copy), Extraction(events=(e,))) for e in events])
    finally:
        store.close()
    assert not [r for r in results if isinstance(r, Exception)]


def fixture_files() -> list[str]:
    """Return every notification fixture (emails and documents), without the expected-result files."""
    return sorted(
        str(p) for p in FIXTURES.rglob("*")
        if p.is_file() and p.suffix in (".eml", ".xml", ".json") and ".expected" not in p.name
    )


def fixture_database(path: Path) -> Path:
    """Load every fixture into a new database at `path` through `mailhook ingest`."""
    code = main(["ingest", "--quiet", "--db", str(path), *fixture_files()], env=ALLOW_ROOT)
    assert code in (0, 65)  # some fixtures are deliberately unreadable
    return path
