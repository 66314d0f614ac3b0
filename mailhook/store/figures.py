"""The figures kept current on ingest: one row per campaign, totals per day, and reply attribution.

Analysts' questions aggregate millions of events; scanning them at read time
takes seconds. These tables are maintained by triggers in the same
transaction as each insert or delete, so every write path (the writer,
`mailhook reprocess`, `mailhook prune`, a hand-written DELETE) keeps them
exact. `FULL_SCAN` computes the same tables from scratch: the schema
migration backfills with it, and the tests compare it with what the
triggers maintained.

Decided definitions (docs/schema.md, "Calls, tries and replies"): a try is an
attempt that is not a transfer's `XFER_LEG`; a reply belongs to the latest
outbound text sent to its sender from the number it was sent to, at most
`REPLY_WINDOW_DAYS` before it; a campaign's name, status, type and labels are
the latest known (by event time, then id) among its campaign events.
"""

from __future__ import annotations

from mailhook.models import CALL_TYPES, CAMPAIGN_TYPES, TEXT_TYPES


def _sql_list(types: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{kind}'" for kind in types) + ")"


REPLY_WINDOW_DAYS = 7

CALLS = _sql_list(CALL_TYPES)
TEXTS = _sql_list(TEXT_TYPES)
CAMPAIGN_EVENTS = _sql_list(CAMPAIGN_TYPES)


def is_campaign_event(e: str) -> str:
    """Return the condition that the event of alias `e` is a campaign event: `event_type IN CAMPAIGN_EVENTS`.

    As comparisons, not IN: SQLite builds a temporary table for an IN list of
    three or more values each time a statement (in a trigger: each row) first
    evaluates it, a tenth of the CPU of storing an event row by row. Queries
    that a partial index on CAMPAIGN_EVENTS must serve keep the IN form.
    """
    return "(" + " OR ".join(f"{e}.event_type = '{kind}'" for kind in CAMPAIGN_TYPES) + ")"


def campaign_key(e: str) -> str:
    """Return the campaign an event of alias `e` belongs to: its broadcast, or for a campaign event the campaign."""
    return f"COALESCE({e}.broadcast_id, CASE WHEN {is_campaign_event(e)} THEN {e}.resource_id END)"


# The counters of a campaigns row: (column, what one event of alias `e` adds to it).
COUNTERS: tuple[tuple[str, str], ...] = (
    ("events", "1"),
    ("campaign_events", is_campaign_event("{e}")),
    ("calls", f"{{e}}.event_type IN {CALLS}"),
    ("live_answers", f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result IS 'LA'"),
    ("machines", f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result IS 'AM'"),
    ("no_answer", f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result IS 'NO_ANS'"),
    ("busy", f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result IS 'BUSY'"),
    ("transferred", f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result IS 'XFER'"),
    ("texts", f"{{e}}.event_type IN {TEXTS}"),
    ("sent", "{e}.event_type = 'OUTBOUND_TEXT_FINISHED' AND {e}.final_result IS 'SENT'"),
    ("dnt", "{e}.event_type = 'OUTBOUND_TEXT_FINISHED' AND {e}.final_result IS 'DNT'"),
    ("failed", "{e}.event_type = 'OUTBOUND_TEXT_FINISHED' AND ifnull({e}.final_result, '') NOT IN ('SENT', 'DNT')"),
    ("inbound_texts", "{e}.event_type = 'INBOUND_TEXT_FINISHED'"),
    ("duration", "ifnull({e}.duration, 0)"),
    ("transfer_duration", "ifnull({e}.transfer_duration, 0)"),
    ("billed_amount", "ifnull({e}.billed_amount, 0)"),
)

TABLES = """
CREATE TABLE IF NOT EXISTS campaigns (
    id INTEGER PRIMARY KEY,
    name TEXT,
    type TEXT,
    labels TEXT,
    status TEXT,
    status_at TEXT,
    first_seen TEXT,
    last_seen TEXT,
    events INTEGER NOT NULL DEFAULT 0,
    campaign_events INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    live_answers INTEGER NOT NULL DEFAULT 0,
    machines INTEGER NOT NULL DEFAULT 0,
    no_answer INTEGER NOT NULL DEFAULT 0,
    busy INTEGER NOT NULL DEFAULT 0,
    transferred INTEGER NOT NULL DEFAULT 0,
    texts INTEGER NOT NULL DEFAULT 0,
    sent INTEGER NOT NULL DEFAULT 0,
    dnt INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    inbound_texts INTEGER NOT NULL DEFAULT 0,
    duration INTEGER NOT NULL DEFAULT 0,
    transfer_duration INTEGER NOT NULL DEFAULT 0,
    billed_amount REAL NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    replies INTEGER NOT NULL DEFAULT 0,
    replied_texts INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS event_totals (
    day TEXT NOT NULL,
    campaign_id INTEGER,
    event_type TEXT NOT NULL,
    final_result TEXT,
    events INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    duration INTEGER NOT NULL DEFAULT 0,
    transfer_duration INTEGER NOT NULL DEFAULT 0,
    billed_amount REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS event_totals_bucket
    ON event_totals(day, ifnull(campaign_id, 0), event_type, ifnull(final_result, ''));
CREATE INDEX IF NOT EXISTS event_totals_campaign ON event_totals(campaign_id);
"""

def attributed_text(r: str) -> str:
    """Return the subquery giving the outbound text that the inbound text `r` (a row alias) replies to."""
    return f"""(SELECT o.id FROM events AS o
        WHERE o.event_type = 'OUTBOUND_TEXT_FINISHED' AND o.to_e164 = {r}.from_e164 AND o.from_e164 = {r}.to_e164
          AND substr(o.event_time, 1, 19) <= substr({r}.event_time, 1, 19)
          AND substr(o.event_time, 1, 19) >=
              strftime('%Y-%m-%dT%H:%M:%S', {r}.event_time, '-{REPLY_WINDOW_DAYS} days')
        ORDER BY substr(o.event_time, 1, 19) DESC, o.id DESC LIMIT 1)"""


def attributed_text_unsorted(r: str) -> str:
    """Return `attributed_text(r)` computed without a sort: the latest second in the window, then its largest id.

    The same row as `ORDER BY substr(event_time, 1, 19) DESC, id DESC LIMIT 1`, which no index gives
    (SQLite sorts the candidates in a temporary B-tree, set up and torn down per inbound text); two
    aggregates over the same index seek sort nothing.
    """
    pair = (f"o.event_type = 'OUTBOUND_TEXT_FINISHED' AND o.to_e164 = {r}.from_e164"
            f" AND o.from_e164 = {r}.to_e164")
    latest = f"""(SELECT max(substr(o.event_time, 1, 19)) FROM events AS o
            WHERE {pair} AND substr(o.event_time, 1, 19) <= substr({r}.event_time, 1, 19)
              AND substr(o.event_time, 1, 19) >=
                  strftime('%Y-%m-%dT%H:%M:%S', {r}.event_time, '-{REPLY_WINDOW_DAYS} days'))"""
    # `+o.id`: as max(o.id) SQLite plans for the min/max shortcut and seeks `events_to_e164` instead,
    # which holds everything ever sent to the number (a short code's every text).
    return f"""(SELECT max(+o.id) FROM events AS o WHERE {pair} AND substr(o.event_time, 1, 19) = {latest})"""


def bucket_where(e: str) -> str:
    return (f"day = substr({e}.event_time, 1, 10) AND ifnull(campaign_id, 0) = ifnull({campaign_key(e)}, 0)"
            f" AND event_type = {e}.event_type AND ifnull(final_result, '') = ifnull({e}.final_result, '')")


def bucket_of(e: str) -> str:
    """Return the condition joining `event_totals AS t` to the bucket of event `e`."""
    return (f"t.day = substr({e}.event_time, 1, 10) AND ifnull(t.campaign_id, 0) = ifnull({campaign_key(e)}, 0)"
            f" AND t.event_type = {e}.event_type AND ifnull(t.final_result, '') = ifnull({e}.final_result, '')")


# Schema 7 (PostgreSQL migration 4, the same text): a campaign's own events (started, stopped,
# finished) that carry no broadcast id, by the campaign's id; those with one are found by
# `events_broadcast_type`. So a campaign's latest name, labels and status are two index seeks,
# not a pass over every campaign event stored.
CAMPAIGN_INDEX = f"""
CREATE INDEX IF NOT EXISTS events_campaign ON events(resource_id)
    WHERE event_type IN {CAMPAIGN_EVENTS} AND broadcast_id IS NULL;
"""


# Schema 9 (SQLite only): the same index over the range of event types that holds the three campaign
# types, so that storing an event tests two comparisons, where the IN list of three made SQLite build
# a temporary table on every insert into `events` (whatever its type) to decide whether the row
# belongs in the index. Another type in the range is a row more in this small index; the statements
# that read it test each type themselves. `+broadcast_id IS NULL`, which they repeat to use the index:
# as a plain `broadcast_id IS NULL` SQLite could also search `events_broadcast_type` for it, and
# without statistics of this index prefers that, which reads every campaign event without a broadcast id.
CAMPAIGN_RANGE = f"BETWEEN '{min(CAMPAIGN_TYPES)}' AND '{max(CAMPAIGN_TYPES)}'"
CAMPAIGN_INDEX_BY_RANGE = f"""
DROP INDEX IF EXISTS events_campaign;
CREATE INDEX events_campaign ON events(resource_id) WHERE event_type {CAMPAIGN_RANGE} AND +broadcast_id IS NULL;
"""


def _own_campaign_event(x: str) -> str:
    """Return that event `x` is a campaign event, by an indexed range of types and then each type.

    `+`: the comparisons are not made an IN list (a temporary table) nor used as index terms.
    """
    exact = " OR ".join(f"+{x}.event_type = '{kind}'" for kind in CAMPAIGN_TYPES)
    return f"{x}.event_type {CAMPAIGN_RANGE} AND ({exact})"


def campaign_rows(columns: str, extra: str = "", *, every: bool = False, by_range: bool = False) -> str:
    """Return the rows of `columns` of campaign `campaigns.id`'s own events: `campaign_key` split in two.

    `campaign_key(x) = campaigns.id` cannot use an index; a campaign event's key is its broadcast
    id, or its resource id when it has none, so the same rows come from two indexed searches.
    Plain SQL, which the PostgreSQL figures use too. With `every`, all the campaign's events
    (its calls and texts carry its broadcast id), else its own. With `by_range`, the campaign
    types as `CAMPAIGN_INDEX_BY_RANGE` needs them (SQLite), not as IN lists.
    """
    if by_range:
        own = "" if every else f" AND {_own_campaign_event('x')}"
        return (f"SELECT {columns} FROM events AS x WHERE x.broadcast_id = campaigns.id{own}{extra}"
                f" UNION ALL SELECT {columns} FROM events AS x WHERE x.resource_id = campaigns.id"
                f" AND +x.broadcast_id IS NULL AND {_own_campaign_event('x')}{extra}")
    own = "" if every else f" AND x.event_type IN {CAMPAIGN_EVENTS}"  # `every`: its calls and texts too
    return (f"SELECT {columns} FROM events AS x WHERE x.broadcast_id = campaigns.id{own}{extra}"
            f" UNION ALL SELECT {columns} FROM events AS x WHERE x.resource_id = campaigns.id"
            f" AND x.broadcast_id IS NULL AND x.event_type IN {CAMPAIGN_EVENTS}{extra}")


def labels_update(key: str) -> str:
    """Return the UPDATE giving campaign `key` the latest known name, type, labels and status."""
    def latest(column: str) -> str:
        rows = campaign_rows(f"x.{column} AS value, x.event_time, x.id", f" AND x.{column} IS NOT NULL",
                             by_range=True)
        return f"(SELECT value FROM ({rows}) ORDER BY event_time DESC, id DESC LIMIT 1)"
    # max(event_time) by ORDER BY ... LIMIT 1 (the same value; NULLs sort first): as max() SQLite
    # would walk (event_type, event_time) for its min/max shortcut instead of the two seeks.
    status_at = (f"(SELECT event_time FROM ({campaign_rows('x.event_time', by_range=True)})"
                 " ORDER BY event_time DESC LIMIT 1)")
    return f"""UPDATE campaigns SET name = {latest('broadcast_name')}, type = {latest('broadcast_type')},
        labels = {latest('labels')}, status = {latest('broadcast_status')}, status_at = {status_at}
    WHERE id = {key}"""


def labels_taken(e: str) -> str:
    """Return the UPDATE giving the campaign of campaign event `e`, just stored, its name, type, labels and status.

    The same values as `labels_update`, from the campaign's values before `e` (exact, as every
    write keeps them): a column takes `e`'s value unless it is NULL or another of the campaign's own
    events with a value is later (by event time, then id; no stored event lacks a time, which
    `event_totals.day` needs), and `status_at` the later time. Each test is an index seek that stops
    at its first row, where `labels_update` sorts the campaign's events per column in temporary
    B-trees and lists the event types in temporary tables, set up and torn down per event.
    """
    later = f"(x.event_time > {e}.event_time OR (x.event_time = {e}.event_time AND x.id > {e}.id))"

    def taken(column: str, value: str) -> str:
        rows = campaign_rows("1", f" AND x.{column} IS NOT NULL AND {later}", by_range=True)
        return f"CASE WHEN {e}.{column} IS NULL OR EXISTS ({rows}) THEN {value} ELSE {e}.{column} END"
    return f"""UPDATE campaigns SET name = {taken('broadcast_name', 'name')}, type = {taken('broadcast_type', 'type')},
        labels = {taken('labels', 'labels')}, status = {taken('broadcast_status', 'status')},
        status_at = coalesce(max(status_at, {e}.event_time), {e}.event_time)
    WHERE id = {campaign_key(e)}"""


# An attempt that is a try (not a transfer's leg), for alias `a`.
TRY = "a.result IS NOT 'XFER_LEG'"

# The same figures computed from scratch, as a backfill (and as the tests' reference).
FULL_SCAN = f"""
UPDATE events SET reply_to = {attributed_text('events')} WHERE event_type = 'INBOUND_TEXT_FINISHED';
DELETE FROM event_totals;
INSERT INTO event_totals (day, campaign_id, event_type, final_result, events, tries, duration, transfer_duration,
                          billed_amount)
SELECT substr(e.event_time, 1, 10), {campaign_key('e')}, e.event_type, e.final_result, count(*),
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {TRY})),
       sum(ifnull(e.duration, 0)), sum(ifnull(e.transfer_duration, 0)), sum(ifnull(e.billed_amount, 0))
FROM events AS e GROUP BY 1, 2, 3, 4;
DELETE FROM campaigns;
INSERT INTO campaigns (id, first_seen, last_seen, {', '.join(c for c, _ in COUNTERS)}, tries)
SELECT {campaign_key('e')} AS campaign, min(e.event_time), max(e.event_time),
       {', '.join(f"sum({adds.format(e='e')})" for _, adds in COUNTERS)},
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {TRY}))
FROM events AS e WHERE campaign IS NOT NULL GROUP BY campaign;
{labels_update('campaigns.id')};
UPDATE campaigns SET
    replies = (SELECT count(*) FROM events AS r JOIN events AS o ON o.id = r.reply_to
               WHERE o.broadcast_id = campaigns.id),
    replied_texts = (SELECT count(DISTINCT r.reply_to) FROM events AS r JOIN events AS o ON o.id = r.reply_to
                     WHERE o.broadcast_id = campaigns.id);
"""
