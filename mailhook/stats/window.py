"""`Window`: which events a report covers (a time range on one basis, a campaign), and the bounds' parsing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from mailhook.models import CAMPAIGN_TYPES

TimeBasis = Literal["event", "received"]


def in_list(types: tuple[str, ...]) -> str:
    """Return the SQL list `('A', 'B')` of `types`, for `IN`."""
    return "(" + ", ".join(f"'{t}'" for t in types) + ")"


# The event time (COALESCE(modified, created, received_at), stored as events.event_time, indexed).
EVENT_TIME_E = "e.event_time"
# The campaign an event belongs to: its broadcast id, or for a campaign event the broadcast itself.
CAMPAIGN_KEY = f"COALESCE(e.broadcast_id, CASE WHEN e.event_type IN {in_list(CAMPAIGN_TYPES)} THEN e.resource_id END)"


@dataclass(frozen=True, slots=True)
class Window:
    """Which events the figures cover: a time range on one time basis, and optionally one campaign.

    `since` is inclusive and `until` exclusive; both are UTC `YYYY-MM-DDTHH:MM:SS`
    strings (see `parse_bound`), compared with the stored ISO 8601 times.
    """

    since: str | None = None
    until: str | None = None
    broadcast_id: int | None = None
    time: TimeBasis = "event"

    def column(self) -> str:
        """Return the SQL expression for the time of `events AS e` on this window's basis."""
        if self.time == "received":
            return "e.received_at"
        return EVENT_TIME_E

    def between(self, column: str) -> tuple[list[str], list[Any]]:
        """Return the conditions putting `column` in [since, until), and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            clauses.append(f"{column} >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{column} < ?")
            params.append(self.until)
        return clauses, params

    def by_day(self) -> bool:
        """Say whether the per-day totals answer this window: event time, bounds at midnight (or none)."""
        return self.time == "event" and all(b is None or b.endswith("T00:00:00") for b in (self.since, self.until))

    def totals_where(self) -> tuple[str, list[Any]]:
        """Return a SQL condition on `event_totals AS e` selecting this window's days, and its parameters."""
        clauses: list[str] = ["1 = 1"]
        params: list[Any] = []
        if self.since is not None:
            clauses.append("e.day >= ?")
            params.append(self.since[:10])
        if self.until is not None:
            clauses.append("e.day < ?")
            params.append(self.until[:10])
        if self.broadcast_id is not None:
            clauses.append("e.campaign_id = ?")
            params.append(self.broadcast_id)
        return " AND ".join(clauses), params

    def where(self) -> tuple[str, list[Any]]:
        """Return a SQL condition on `events AS e` and its parameters."""
        clauses, params = self.between(self.column())
        clauses.insert(0, "1 = 1")
        if self.broadcast_id is not None:
            clauses.append(f"{CAMPAIGN_KEY} = ?")
            params.append(self.broadcast_id)
        return " AND ".join(clauses), params


def parse_bound(text: str, *, until: bool = False) -> str:
    """Turn a year, month, date or ISO 8601 time into a UTC bound for `Window`.

    A period (`2016`, `2016-06`, `2016-06-29`) means its start for `--since`
    and its end for `--until`, so `--since 2016-06 --until 2016-06` is June.
    A time without an offset is UTC. Raises ValueError on anything else.
    """
    text = text.strip()
    if len(text) in (4, 7, 10) and "T" not in text:
        parts = [int(p) for p in text.split("-")] + [1, 1]
        start = datetime(parts[0], parts[1], parts[2], tzinfo=UTC)
        moment = start
        if until and len(text) == 4:
            moment = start.replace(year=start.year + 1)
        elif until and len(text) == 7:
            moment = (start + timedelta(days=32)).replace(day=1)
        elif until:
            moment = start + timedelta(days=1)
        if text != start.strftime("%Y-%m-%d")[: len(text)]:
            raise ValueError(f"not a year, month or date: {text!r}")
    else:
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    # No trailing Z: stored times end in "Z" or ".fffZ", and both sort after the bare second.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
