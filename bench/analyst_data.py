"""A synthetic account's year of CallFire events, written through mailhook's own write path.

    python bench/analyst_data.py DB [EVENTS]

Eight campaigns (voice, IVR and text), calls with every result including
transfers (XFER + XFER_LEG) and retries, texts both ways from a short code
and a long code, replies (most within a week of a text, some late, some from
strangers), phone numbers written several ways, v1.1 reports repeated by a
v2 webhook, and campaign start/stop/finish events. Deterministic (seeded).
Events go through `Store.write` in batches, so the triggers that keep
`campaigns` and `event_totals` current run as they do in production.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailhook.models import Attempt, Delivery, Event, Extraction
from mailhook.store.write import Store

CAMPAIGNS = [
    (1001, "Spring appointments", "VOICE"), (1002, "Renewal reminders", "VOICE"), (1003, "Survey", "IVR"),
    (1004, "Collections", "VOICE"), (1005, "Win-back", "VOICE"),
    (2001, "Spring sale", "TEXT"), (2002, "Appointment texts", "TEXT"), (2003, "Feedback", "TEXT"),
]
CALL_RESULTS = (["LA"] * 30 + ["AM"] * 20 + ["NO_ANS"] * 15 + ["BUSY"] * 8 + ["XFER"] * 6 + ["DNC"] * 3
                + ["UNDIALED"] * 3 + ["INVALID_NUMBER"] * 2 + ["CARRIER_ERROR"] * 2 + ["ABANDONED"])
TEXT_RESULTS = ["SENT"] * 85 + ["DNT"] * 4 + ["TOO_BIG"] + ["UNDIALED"] * 2 + ["CARRIER_ERROR"] * 3 + [None]
REPLIES = ["YES", "yes please", "STOP", "stop", "Thanks 👍", "👍", "Who is this?", "call me", "NO", "Café?"]
SHORT_CODE, LONG_CODE = "67076", "12135550100"
START = datetime(2025, 1, 1, tzinfo=UTC)


def written(digits: str, rng: random.Random) -> str:
    """Write a US number (10 digits) one of the ways CallFire reports show them."""
    forms = (f"1{digits}", f"+1{digits}", f"+1 ({digits[:3]}) {digits[3:6]}-{digits[6:]}",
             f"({digits[:3]}) {digits[3:6]}-{digits[6:]}")
    return forms[rng.randrange(4)] if rng.random() < 0.2 else forms[0]


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def events(total: int, seed: int = 14) -> Iterator[Event]:
    """Yield `total` events in roughly time order over a year."""
    rng = random.Random(seed)
    contacts = [f"{rng.randrange(201, 989)}{rng.randrange(200, 999)}{rng.randrange(0, 10000):04d}"
                for _ in range(max(total // 8, 100))]
    texted: dict[str, tuple[datetime, str]] = {}
    step = timedelta(days=365) / total
    next_id = 10_000_000_000
    for n in range(total):
        now = START + step * n + timedelta(seconds=rng.randrange(0, 600))
        next_id += 1
        roll = rng.random()
        if n % 5000 == 0:
            campaign, name, kind = CAMPAIGNS[(n // 5000) % len(CAMPAIGNS)]
            status = ("RUNNING", "STOPPED", "FINISHED")[(n // 40000) % 3]
            event_type = {"RUNNING": "CAMPAIGN_STARTED", "STOPPED": "CAMPAIGN_STOPPED"}.get(status, "CAMPAIGN_FINISHED")
            yield Event(event_type=event_type, event_type_source="inferred", api_version="1.1", format="xml",
                        resource_type="Broadcast", resource_id=campaign, broadcast_id=campaign, broadcast_name=name,
                        broadcast_status=status, broadcast_type=kind, labels=("bench",), modified=stamp(now),
                        payload={"Broadcast": {"@id": campaign}})
            continue
        if roll < 0.47:
            yield call(rng, next_id, contacts, now, inbound=roll < 0.04)
        elif roll < 0.83:
            campaign = CAMPAIGNS[5 + rng.randrange(3)][0]
            to = contacts[rng.randrange(len(contacts))]
            sender = SHORT_CODE if rng.random() < 0.8 else LONG_CODE
            result = rng.choice(TEXT_RESULTS)
            if result == "SENT":
                texted[to] = (now, sender)
            yield text(next_id, sender, written(to, rng), result, now, campaign, "Our spring sale starts today",
                       inbound=False, v2=rng.random() < 0.02)
        elif roll < 0.999:
            if texted and rng.random() < 0.8:
                to = rng.choice(list(texted)) if len(texted) < 50 else list(texted)[-rng.randrange(1, 50)]
                sent, sender = texted[to]
                now = max(now, sent + timedelta(minutes=rng.randrange(1, 60 * 24 * 9)))
            else:
                to, sender = contacts[rng.randrange(len(contacts))], SHORT_CODE
            yield text(next_id, written(to, rng), sender, "RECEIVED", now, None, rng.choice(REPLIES), inbound=True)
            if len(texted) > 5000:
                texted.pop(next(iter(texted)))
        else:
            yield Event(event_type="LOW_BALANCE_FINISHED", event_type_source="payload", api_version="2",
                        format="json", resource_type="LowBalance", resource_id=next_id, modified=stamp(now),
                        payload={"resourceType": "LowBalance"})


def call(rng: random.Random, call_id: int, contacts: list[str], now: datetime, *, inbound: bool) -> Event:
    result = "LA" if inbound else rng.choice(CALL_RESULTS)
    tries = [rng.choice(["NO_ANS", "BUSY"]) for _ in range(rng.choice([0, 0, 0, 1, 1, 2]))]
    attempts = [Attempt(record_id=call_id * 10 + i, result=r, duration=0, billed_amount=Decimal(0),
                        finish_time=stamp(now)) for i, r in enumerate(tries)]
    seconds = rng.randrange(5, 400) if result in ("LA", "AM", "XFER") else 0
    attempts.append(Attempt(record_id=call_id * 10 + 8, result=result, duration=seconds,
                            billed_amount=Decimal(1 if seconds else 0), finish_time=stamp(now),
                            answer_time=stamp(now) if seconds else None))
    if result == "XFER":
        attempts.append(Attempt(record_id=call_id * 10 + 9, result="XFER_LEG", duration=rng.randrange(30, 900),
                                billed_amount=Decimal(2), finish_time=stamp(now)))
    campaign = None if inbound else CAMPAIGNS[rng.randrange(5)][0]
    to = contacts[rng.randrange(len(contacts))]
    return Event(
        event_type="INBOUND_CALL_FINISHED" if inbound else "OUTBOUND_CALL_FINISHED", event_type_source="inferred",
        api_version="1.1", format="xml", resource_type="Call", resource_id=call_id,
        from_number=written(to, rng) if inbound else LONG_CODE, to_number=LONG_CODE if inbound else written(to, rng),
        inbound=inbound, state="FINISHED", final_result=result, broadcast_id=campaign,
        billed_amount=sum((a.billed_amount or Decimal(0) for a in attempts), Decimal(0)),
        duration=sum(a.duration or 0 for a in attempts if a.result != "XFER_LEG"),
        batch_id=campaign and campaign * 10, contact_id=call_id + 7, created=stamp(now - timedelta(minutes=5)),
        modified=stamp(now), attempts=tuple(attempts), payload={"Call": {"@id": call_id}},
    )


def text(text_id: int, sender: str, to: str, result: str | None, now: datetime, campaign: int | None, message: str,
         *, inbound: bool, v2: bool = False) -> Event:
    return Event(
        event_type="INBOUND_TEXT_FINISHED" if inbound else "OUTBOUND_TEXT_FINISHED", event_type_source="inferred",
        api_version="2" if v2 else "1.1", format="json", resource_type="OutboundText" if v2 else "Text",
        resource_id=text_id, from_number=sender, to_number=to, inbound=inbound, state="FINISHED", final_result=result,
        message=message, billed_amount=Decimal(1), broadcast_id=campaign, contact_id=text_id + 3,
        created=stamp(now), modified=stamp(now),
        attempts=(Attempt(record_id=text_id * 10, result=result, billed_amount=Decimal(1), message=message),),
        payload={"Text": {"@id": text_id}},
    )


def build(path: Path, total: int, batch: int = 2000) -> float:
    """Write `total` events to a new database at `path`, one delivery each; return the seconds taken."""
    store = Store(path)
    started = time.perf_counter()
    try:
        work: list[tuple[Delivery, Extraction]] = []
        for n, item in enumerate(events(total)):
            raw = f"bench event {n}".encode()
            work.append((Delivery(channel="file", raw=raw, received_at="", kind="document", source=f"bench#{n}"),
                         Extraction(events=(item,))))
            if len(work) >= batch:
                store.write(work)
                work = []
                if n % 100_000 < batch:
                    print(f"  {n + 1:,} events, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if work:
            store.write(work)
    finally:
        store.close()
    return time.perf_counter() - started


if __name__ == "__main__":
    target = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    if target.exists():
        sys.exit(f"{target} exists; remove it first")
    print(f"built {count:,} events in {build(target, count):.0f} s", file=sys.stderr)
