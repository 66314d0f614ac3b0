"""`collect`: a report's figures over the events table, by type and result, per campaign and per day.

Every figure is one SQL aggregate over `events` (and `attempts` for attempt
counts), filtered by a `Window`, so an analyst can reproduce any number with
the SQL in docs/schema.md. The database arrives as a `Reader` opened by `mailhook.store`
(a `sqlite_utils.Database`, or `mailhook.store.pg.reports.Reader` for
PostgreSQL); this module never opens connections itself. The SQL is the
subset both stores run the same way, and the rows are ordered here, so both
give the same report for the same events.
"""

from __future__ import annotations

from typing import Any

from mailhook.models import CALL_TYPES, CAMPAIGN_TYPES, TEXT_TYPES
from mailhook.stats.reader import Reader
from mailhook.stats.report import Campaign, Day, Measures, Report, TypeResult, credits
from mailhook.stats.window import CAMPAIGN_KEY, Window, in_list

# A try is an attempt that dialled (or texted) the contact; a transfer's XFER_LEG record is not one.
TRY = "coalesce(a.result, '') <> 'XFER_LEG'"


# What each event adds to each counted figure, as a condition on event `e` (see Measures).
_COUNTED = (
    f"e.event_type IN {in_list(CALL_TYPES)}",
    f"e.event_type IN {in_list(CALL_TYPES)} AND e.final_result = 'LA'",
    f"e.event_type IN {in_list(CALL_TYPES)} AND e.final_result = 'AM'",
    f"e.event_type IN {in_list(CALL_TYPES)} AND e.final_result = 'NO_ANS'",
    f"e.event_type IN {in_list(CALL_TYPES)} AND e.final_result = 'BUSY'",
    f"e.event_type IN {in_list(TEXT_TYPES)}",
    "e.event_type = 'OUTBOUND_TEXT_FINISHED' AND e.final_result = 'SENT'",
    "e.event_type = 'OUTBOUND_TEXT_FINISHED' AND e.final_result = 'DNT'",
    "e.event_type = 'OUTBOUND_TEXT_FINISHED' AND coalesce(e.final_result, '') NOT IN ('SENT', 'DNT')",
    "e.event_type = 'INBOUND_TEXT_FINISHED'",
    f"e.event_type IN {in_list(CAMPAIGN_TYPES)}",
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


_MEASURE_FIELDS = (
    "events", "calls", "live_answers", "machines", "no_answer", "busy", "texts", "sent", "dnt", "failed",
    "received", "campaign_events", "attempts", "duration", "transfer_duration", "billed_amount",
)


def _measures(row: tuple[Any, ...]) -> Measures:
    return Measures(**dict(zip(_MEASURE_FIELDS, (*row[:-1], credits(row[-1])), strict=True)))


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
