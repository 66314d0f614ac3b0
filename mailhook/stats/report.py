"""`Report`: the figures `mailhook stats` shows, as frozen data (`Measures` per group, by type, campaign and day)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mailhook.stats.window import Window


@dataclass(frozen=True, slots=True)
class Measures:
    """The counts and sums one group of events adds up to (see docs/schema.md for each definition)."""

    events: int = 0
    calls: int = 0
    live_answers: int = 0
    machines: int = 0
    no_answer: int = 0
    busy: int = 0
    texts: int = 0
    sent: int = 0
    dnt: int = 0
    failed: int = 0
    received: int = 0
    campaign_events: int = 0
    attempts: int = 0
    duration: int = 0
    transfer_duration: int = 0
    billed_amount: float = 0.0
    other_calls: int = field(init=False)
    other_events: int = field(init=False)
    live_answer_rate: float | None = field(init=False)
    machine_rate: float | None = field(init=False)
    no_answer_rate: float | None = field(init=False)
    busy_rate: float | None = field(init=False)
    sent_rate: float | None = field(init=False)

    def __post_init__(self) -> None:
        outbound_texts = self.sent + self.dnt + self.failed
        derived = {
            "other_calls": self.calls - self.live_answers - self.machines - self.no_answer - self.busy,
            "other_events": self.events - self.calls - self.texts - self.campaign_events,
            "live_answer_rate": _rate(self.live_answers, self.calls),
            "machine_rate": _rate(self.machines, self.calls),
            "no_answer_rate": _rate(self.no_answer, self.calls),
            "busy_rate": _rate(self.busy, self.calls),
            "sent_rate": _rate(self.sent, outbound_texts),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def credits(total: float) -> float:
    """Return a sum of credits without the noise of binary floating point (8.149999999999999 is 8.15).

    Credits have at most a few decimals; the last bits of a float sum depend on
    the order of addition, which differs between the stores and query plans.
    """
    return round(total, 9)


@dataclass(frozen=True, slots=True)
class TypeResult:
    """How many events of one type ended with one final result, with their attempts, duration and cost."""

    event_type: str
    final_result: str | None
    events: int
    attempts: int
    duration: int
    transfer_duration: int
    billed_amount: float


@dataclass(frozen=True, slots=True)
class Campaign:
    """One campaign's figures; `broadcast_id` None gathers events of no campaign (e.g. inbound)."""

    broadcast_id: int | None
    name: str | None
    status: str | None
    type: str | None
    measures: Measures
    replies: int = 0
    replied_texts: int = 0
    reply_rate: float | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reply_rate", _rate(self.replied_texts, self.measures.sent))


@dataclass(frozen=True, slots=True)
class Day:
    """One UTC day's figures."""

    day: str
    measures: Measures


@dataclass(frozen=True, slots=True)
class Report:
    """Everything `mailhook stats` shows."""

    window: Window
    totals: Measures
    deliveries: dict[str, int] | None
    by_type: tuple[TypeResult, ...]
    campaigns: tuple[Campaign, ...]
    days: tuple[Day, ...]

    def as_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready data."""
        return asdict(self)
