"""Summary figures over the events table: by type and result, per campaign and per day.

Every figure is one SQL aggregate over `events` (and `attempts` for attempt
counts), filtered by a `Window`, so an analyst can reproduce any number with
the SQL in docs/schema.md. The database arrives as a `Reader` opened by `mailhook.store`
(a `sqlite_utils.Database`, or `mailhook.store.pg.reports.Reader` for
PostgreSQL); this module never opens connections itself. The SQL is the
subset both stores run the same way, and the rows are ordered here, so both
give the same report for the same events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from mailhook.models import CALL_TYPES, CAMPAIGN_TYPES, TEXT_TYPES


class _State(Protocol):
    @property
    def in_transaction(self) -> bool: ...


class Reader(Protocol):
    """What the reports read through: `sqlite_utils.Database`, or the PostgreSQL reader in `mailhook.store.pg`."""

    @property
    def conn(self) -> _State: ...

    def execute(self, sql: str, parameters: Any = None) -> Any:
        """Run one statement with `?` parameters and return its cursor."""
        ...

    def table_names(self) -> list[str]:
        """Return the database's tables."""
        ...

    def view_names(self) -> list[str]:
        """Return the database's views."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...



TimeBasis = Literal["event", "received"]


def _in(types: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{t}'" for t in types) + ")"


# The campaign an event belongs to: its broadcast id, or for a campaign event the broadcast itself.
# The event time (COALESCE(modified, created, received_at), stored as events.event_time, indexed).
EVENT_TIME_E = "e.event_time"


CAMPAIGN_KEY = f"COALESCE(e.broadcast_id, CASE WHEN e.event_type IN {_in(CAMPAIGN_TYPES)} THEN e.resource_id END)"


# A try is an attempt that dialled (or texted) the contact; a transfer's XFER_LEG record is not one.
TRY = "coalesce(a.result, '') <> 'XFER_LEG'"


# What each event adds to each counted figure, as a condition on event `e` (see Measures).
_COUNTED = (
    f"e.event_type IN {_in(CALL_TYPES)}",
    f"e.event_type IN {_in(CALL_TYPES)} AND e.final_result = 'LA'",
    f"e.event_type IN {_in(CALL_TYPES)} AND e.final_result = 'AM'",
    f"e.event_type IN {_in(CALL_TYPES)} AND e.final_result = 'NO_ANS'",
    f"e.event_type IN {_in(CALL_TYPES)} AND e.final_result = 'BUSY'",
    f"e.event_type IN {_in(TEXT_TYPES)}",
    "e.event_type = 'OUTBOUND_TEXT_FINISHED' AND e.final_result = 'SENT'",
    "e.event_type = 'OUTBOUND_TEXT_FINISHED' AND e.final_result = 'DNT'",
    "e.event_type = 'OUTBOUND_TEXT_FINISHED' AND coalesce(e.final_result, '') NOT IN ('SENT', 'DNT')",
    "e.event_type = 'INBOUND_TEXT_FINISHED'",
    f"e.event_type IN {_in(CAMPAIGN_TYPES)}",
)


# The SQL is the subset SQLite and PostgreSQL both run (a condition counts through CASE, not as a number).
# The figures over events scanned one by one ...
_MEASURES = ",\n".join([
    "count(*)",
    *(f"coalesce(sum(CASE WHEN {condition} THEN 1 ELSE 0 END), 0)" for condition in _COUNTED),
    f"coalesce(sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {TRY})), 0)",
    "coalesce(sum(e.duration), 0)",
    "coalesce(sum(e.transfer_duration), 0)",
    "coalesce(sum(e.billed_amount), 0.0)",
])


# ... and the same figures over the per-day totals kept on ingest (mailhook.store.figures), aliased `e` too:
# each row stands for `events` events of one type and result, so a condition counts them all.
_TOTALS = ",\n".join([
    "coalesce(sum(e.events), 0)",
    *(f"coalesce(sum(CASE WHEN {condition} THEN e.events ELSE 0 END), 0)" for condition in _COUNTED),
    "coalesce(sum(e.tries), 0)",
    "coalesce(sum(e.duration), 0)",
    "coalesce(sum(e.transfer_duration), 0)",
    "coalesce(sum(e.billed_amount), 0.0)",
])


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


_MEASURE_FIELDS = (
    "events", "calls", "live_answers", "machines", "no_answer", "busy", "texts", "sent", "dnt", "failed",
    "received", "campaign_events", "attempts", "duration", "transfer_duration", "billed_amount",
)


def _measures(row: tuple[Any, ...]) -> Measures:
    return Measures(**dict(zip(_MEASURE_FIELDS, (*row[:-1], credits(row[-1])), strict=True)))


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


def collect(db: Reader, window: Window) -> Report:
    """Compute every figure of the report for the events inside `window`, all from one snapshot.

    The queries share one short read transaction, so totals, campaigns and days
    add up even while the writer commits.
    """
    if db.conn.in_transaction:
        return _collect(db, window)
    db.execute("BEGIN")
    try:
        return _collect(db, window)
    finally:
        db.execute("COMMIT")


def _collect(db: Reader, window: Window) -> Report:
    if window.by_day():
        # Whole days of event time: read the totals kept on ingest instead of scanning every event.
        where, params = window.totals_where()
        source, measures, key, tries, day = "event_totals AS e", _TOTALS, "e.campaign_id", "e.tries", "e.day"
        count = "sum(e.events)"
    else:
        where, params = window.where()
        source, measures, key, day = "events AS e", _MEASURES, CAMPAIGN_KEY, f"substr({window.column()}, 1, 10)"
        tries = f"(SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {TRY})"
        count = "count(*)"
    totals = _measures(db.execute(f"SELECT {measures} FROM {source} WHERE {where}", params).fetchone())
    # Ordered here, not by the database: PostgreSQL sorts NULL last and text by the database's collation.
    by_type = tuple(sorted((
        TypeResult(row[0], row[1], row[2], row[3], row[4], row[5], credits(row[6]))
        for row in db.execute(
            f"""SELECT e.event_type, e.final_result, {count}, coalesce(sum({tries}), 0),
                       coalesce(sum(e.duration), 0), coalesce(sum(e.transfer_duration), 0),
                       coalesce(sum(e.billed_amount), 0.0)
                FROM {source} WHERE {where}
                GROUP BY e.event_type, e.final_result""",
            params,
        )
    ), key=lambda r: (r.event_type, r.final_result is not None, r.final_result or "")))
    names: dict[int, tuple[str | None, str | None, str | None]] = {
        row[0]: (row[1], row[2], row[3]) for row in db.execute("SELECT id, name, status, type FROM campaigns")}
    replies = _replies(db, window)
    campaigns = tuple(sorted((
        Campaign(row[0], *names.get(row[0], (None, None, None)), _measures(row[1:]), *replies.get(row[0], (0, 0)))
        for row in db.execute(f"SELECT {key} AS campaign, {measures} FROM {source} WHERE {where} GROUP BY campaign",
                              params)
    ), key=lambda c: (c.broadcast_id is None, c.broadcast_id or 0)))
    days = tuple(sorted((
        Day(row[0], _measures(row[1:]))
        for row in db.execute(f"SELECT {day} AS day, {measures} FROM {source} WHERE {where} GROUP BY day", params)
    ), key=lambda d: (d.day is not None, d.day or "")))
    return Report(window, totals, _deliveries(db, window), by_type, campaigns, days)


def _replies(db: Reader, window: Window) -> dict[int | None, tuple[int, int]]:
    """Return per campaign the replies to its texts inside `window`, and how many of those texts got one."""
    if window.since is None and window.until is None:
        # Every text: the campaigns table keeps these counts current.
        one = window.broadcast_id is not None
        return {row[0]: (row[1], row[2]) for row in db.execute(
            "SELECT id, replies, replied_texts FROM campaigns" + (" WHERE id = ?" if one else ""),
            (window.broadcast_id,) if one else ())}
    where, params = window.where()
    return {row[0]: (row[1], row[2]) for row in db.execute(
        f"""SELECT e.broadcast_id, count(*), count(DISTINCT r.reply_to)
            FROM events AS r JOIN events AS e ON e.id = r.reply_to
            WHERE r.reply_to IS NOT NULL AND {where} GROUP BY e.broadcast_id""",
        params,
    )}


def _deliveries(db: Reader, window: Window) -> dict[str, int] | None:
    """Count deliveries by status over the window's times of receipt (no campaign applies to them)."""
    if window.broadcast_id is not None:
        return None
    clauses, params = window.between("received_at")
    clauses.insert(0, "1 = 1")
    counts = {"stored": 0, "duplicate": 0, "quarantined": 0}
    for status, count in db.execute(
        f"SELECT status, count(*) FROM deliveries WHERE {' AND '.join(clauses)} GROUP BY status", params
    ):
        counts[status] = count
    return counts
