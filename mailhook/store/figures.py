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

def _attributed_text(r: str) -> str:
    """Return the subquery giving the outbound text that the inbound text `r` (a row alias) replies to."""
    return f"""(SELECT o.id FROM events AS o
        WHERE o.event_type = 'OUTBOUND_TEXT_FINISHED' AND o.to_e164 = {r}.from_e164 AND o.from_e164 = {r}.to_e164
          AND substr(o.event_time, 1, 19) <= substr({r}.event_time, 1, 19)
          AND substr(o.event_time, 1, 19) >=
              strftime('%Y-%m-%dT%H:%M:%S', {r}.event_time, '-{REPLY_WINDOW_DAYS} days')
        ORDER BY substr(o.event_time, 1, 19) DESC, o.id DESC LIMIT 1)"""


def _attributed_text_unsorted(r: str) -> str:
    """Return `_attributed_text(r)` computed without a sort: the latest second in the window, then its largest id.

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


def _bucket_where(e: str) -> str:
    return (f"day = substr({e}.event_time, 1, 10) AND ifnull(campaign_id, 0) = ifnull({campaign_key(e)}, 0)"
            f" AND event_type = {e}.event_type AND ifnull(final_result, '') = ifnull({e}.final_result, '')")


def _bucket_of(e: str) -> str:
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


def _labels_update(key: str) -> str:
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


def _labels_taken(e: str) -> str:
    """Return the UPDATE giving the campaign of campaign event `e`, just stored, its name, type, labels and status.

    The same values as `_labels_update`, from the campaign's values before `e` (exact, as every
    write keeps them): a column takes `e`'s value unless it is NULL or another of the campaign's own
    events with a value is later (by event time, then id; no stored event lacks a time, which
    `event_totals.day` needs), and `status_at` the later time. Each test is an index seek that stops
    at its first row, where `_labels_update` sorts the campaign's events per column in temporary
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


def _counters(sign: str, e: str) -> str:
    return ", ".join(f"{column} = {column} {sign} ({adds.format(e=e)})" for column, adds in COUNTERS)


_NEW_KEY = campaign_key("new")
_OLD_KEY = campaign_key("old")

_EVENT_INSERTED = f"""
    INSERT INTO event_totals (day, campaign_id, event_type, final_result, events, duration, transfer_duration,
                              billed_amount)
    VALUES (substr(new.event_time, 1, 10), {_NEW_KEY}, new.event_type, new.final_result, 1,
            ifnull(new.duration, 0), ifnull(new.transfer_duration, 0), ifnull(new.billed_amount, 0))
    ON CONFLICT (day, ifnull(campaign_id, 0), event_type, ifnull(final_result, '')) DO UPDATE SET
        events = events + 1, duration = duration + excluded.duration,
        transfer_duration = transfer_duration + excluded.transfer_duration,
        billed_amount = billed_amount + excluded.billed_amount;
    INSERT INTO campaigns (id, first_seen, last_seen) SELECT {_NEW_KEY}, new.event_time, new.event_time
        WHERE {_NEW_KEY} IS NOT NULL
    ON CONFLICT (id) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
                                   last_seen = max(last_seen, excluded.last_seen);
    UPDATE campaigns SET {_counters('+', 'new')} WHERE id = {_NEW_KEY};
    {_labels_taken("new")} AND {is_campaign_event("new")};
    UPDATE events SET reply_to = {_attributed_text_unsorted('new')}
    WHERE id = new.id AND new.event_type = 'INBOUND_TEXT_FINISHED';
    -- A text that arrives after replies to it (a backfill out of order) takes them from an older text.
    UPDATE events SET reply_to = new.id
    WHERE new.event_type = 'OUTBOUND_TEXT_FINISHED' AND event_type = 'INBOUND_TEXT_FINISHED'
      AND from_e164 = new.to_e164 AND to_e164 = new.from_e164
      AND substr(event_time, 1, 19) >= substr(new.event_time, 1, 19)
      AND substr(event_time, 1, 19) <= strftime('%Y-%m-%dT%H:%M:%S', new.event_time, '+{REPLY_WINDOW_DAYS} days')
      AND (reply_to IS NULL OR (SELECT (substr(t.event_time, 1, 19), t.id) < (substr(new.event_time, 1, 19), new.id)
                                FROM events AS t WHERE t.id = events.reply_to));
"""

_ATTEMPT_INSERTED = f"""
    UPDATE event_totals SET tries = tries + 1
    WHERE rowid = (SELECT t.rowid FROM events AS e JOIN event_totals AS t ON {_bucket_of('e')}
                   WHERE e.id = new.event_id);
    UPDATE campaigns SET tries = tries + 1
    WHERE id = (SELECT {campaign_key('e')} FROM events AS e WHERE e.id = new.event_id);
"""

TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS events_figures_insert AFTER INSERT ON events BEGIN{_EVENT_INSERTED}END;

CREATE TRIGGER IF NOT EXISTS events_figures_before_delete BEFORE DELETE ON events BEGIN
    -- Its attempts go first, while the event is still there to say which figures their tries were in.
    DELETE FROM attempts WHERE event_id = old.id;
END;

CREATE TRIGGER IF NOT EXISTS events_figures_delete AFTER DELETE ON events BEGIN
    UPDATE event_totals SET events = events - 1, duration = duration - ifnull(old.duration, 0),
        transfer_duration = transfer_duration - ifnull(old.transfer_duration, 0),
        billed_amount = billed_amount - ifnull(old.billed_amount, 0)
    WHERE {_bucket_where('old')};
    DELETE FROM event_totals WHERE events = 0 AND {_bucket_where('old')};
    UPDATE campaigns SET {_counters('-', 'old')} WHERE id = {_OLD_KEY};
    UPDATE campaigns SET
        first_seen = (SELECT min(c.event_time) FROM ({campaign_rows('x.event_time', every=True, by_range=True)}) AS c),
        last_seen = (SELECT max(c.event_time) FROM ({campaign_rows('x.event_time', every=True, by_range=True)}) AS c)
    WHERE id = {_OLD_KEY} AND (old.event_time <= first_seen OR old.event_time >= last_seen);
    DELETE FROM campaigns WHERE id = {_OLD_KEY} AND events = 0;
    {_labels_update(_OLD_KEY)} AND {is_campaign_event("old")};
    -- A deleted reply leaves its text; a deleted text's replies go to the next latest text, if any.
    UPDATE campaigns SET replies = replies - 1,
        replied_texts = replied_texts - NOT EXISTS (SELECT 1 FROM events WHERE reply_to = old.reply_to)
    WHERE old.reply_to IS NOT NULL AND id = (SELECT broadcast_id FROM events WHERE id = old.reply_to);
    UPDATE campaigns SET replies = replies - (SELECT count(*) FROM events WHERE reply_to = old.id),
        replied_texts = replied_texts - EXISTS (SELECT 1 FROM events WHERE reply_to = old.id)
    WHERE old.event_type = 'OUTBOUND_TEXT_FINISHED' AND id = old.broadcast_id;
    UPDATE events SET reply_to = {_attributed_text('events')}
    WHERE old.event_type = 'OUTBOUND_TEXT_FINISHED' AND reply_to = old.id;
END;

CREATE TRIGGER IF NOT EXISTS events_reply_to AFTER UPDATE OF reply_to ON events
WHEN old.reply_to IS NOT new.reply_to BEGIN
    UPDATE campaigns SET replies = replies - 1,
        replied_texts = replied_texts - NOT EXISTS (SELECT 1 FROM events WHERE reply_to = old.reply_to)
    WHERE old.reply_to IS NOT NULL AND id = (SELECT broadcast_id FROM events WHERE id = old.reply_to);
    UPDATE campaigns SET replies = replies + 1,
        replied_texts = replied_texts + ((SELECT count(*) FROM events WHERE reply_to = new.reply_to) = 1)
    WHERE new.reply_to IS NOT NULL AND id = (SELECT broadcast_id FROM events WHERE id = new.reply_to);
END;

CREATE TRIGGER IF NOT EXISTS attempts_figures_insert AFTER INSERT ON attempts
WHEN new.result IS NOT 'XFER_LEG' BEGIN{_ATTEMPT_INSERTED}END;

CREATE TRIGGER IF NOT EXISTS attempts_figures_delete AFTER DELETE ON attempts
WHEN old.result IS NOT 'XFER_LEG' BEGIN
    UPDATE event_totals SET tries = tries - 1
    WHERE rowid = (SELECT t.rowid FROM events AS e JOIN event_totals AS t ON {_bucket_of('e')}
                   WHERE e.id = old.event_id);
    UPDATE campaigns SET tries = tries - 1
    WHERE id = (SELECT {campaign_key('e')} FROM events AS e WHERE e.id = old.event_id);
END;
"""

_TRY = "a.result IS NOT 'XFER_LEG'"

# The same figures computed from scratch, as a backfill (and as the tests' reference).
FULL_SCAN = f"""
UPDATE events SET reply_to = {_attributed_text('events')} WHERE event_type = 'INBOUND_TEXT_FINISHED';
DELETE FROM event_totals;
INSERT INTO event_totals (day, campaign_id, event_type, final_result, events, tries, duration, transfer_duration,
                          billed_amount)
SELECT substr(e.event_time, 1, 10), {campaign_key('e')}, e.event_type, e.final_result, count(*),
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {_TRY})),
       sum(ifnull(e.duration, 0)), sum(ifnull(e.transfer_duration, 0)), sum(ifnull(e.billed_amount, 0))
FROM events AS e GROUP BY 1, 2, 3, 4;
DELETE FROM campaigns;
INSERT INTO campaigns (id, first_seen, last_seen, {', '.join(c for c, _ in COUNTERS)}, tries)
SELECT {campaign_key('e')} AS campaign, min(e.event_time), max(e.event_time),
       {', '.join(f"sum({adds.format(e='e')})" for _, adds in COUNTERS)},
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {_TRY}))
FROM events AS e WHERE campaign IS NOT NULL GROUP BY campaign;
{_labels_update('campaigns.id')};
UPDATE campaigns SET
    replies = (SELECT count(*) FROM events AS r JOIN events AS o ON o.id = r.reply_to
               WHERE o.broadcast_id = campaigns.id),
    replied_texts = (SELECT count(DISTINCT r.reply_to) FROM events AS r JOIN events AS o ON o.id = r.reply_to
                     WHERE o.broadcast_id = campaigns.id);
"""

# Schema 5's insert trigger: the same work with one statement less per event, the campaign's row
# created and counted in one upsert instead of an upsert and an UPDATE.
_LEAN_EVENT_INSERTED = _EVENT_INSERTED.replace(
    f"""    INSERT INTO campaigns (id, first_seen, last_seen) SELECT {_NEW_KEY}, new.event_time, new.event_time
        WHERE {_NEW_KEY} IS NOT NULL
    ON CONFLICT (id) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
                                   last_seen = max(last_seen, excluded.last_seen);
    UPDATE campaigns SET {_counters('+', 'new')} WHERE id = {_NEW_KEY};
""", f"""    INSERT INTO campaigns (id, first_seen, last_seen, {', '.join(c for c, _ in COUNTERS)})
    SELECT {_NEW_KEY}, new.event_time, new.event_time, {', '.join(adds.format(e='new') for _, adds in COUNTERS)}
    WHERE {_NEW_KEY} IS NOT NULL
    ON CONFLICT (id) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen), {', '.join(f"{c} = {c} + excluded.{c}" for c, _ in COUNTERS)};
""")
assert _LEAN_EVENT_INSERTED != _EVENT_INSERTED

# Schema 5: a writer storing a large batch may defer the two insert triggers' work to one
# set-based pass at the end of its transaction (`SETTLE`). While the one row of
# `figures_deferred` exists the triggers do nothing; the row is inserted and deleted inside
# that same write transaction, so no other connection ever sees it, and a crash before the
# commit rolls back the rows and the deferral together.
DEFERRAL = f"""
CREATE TABLE IF NOT EXISTS figures_deferred (
    since INTEGER NOT NULL  -- the figures of events with a larger id are not counted yet
);
DROP TRIGGER IF EXISTS events_figures_insert;
CREATE TRIGGER events_figures_insert AFTER INSERT ON events
WHEN NOT EXISTS (SELECT 1 FROM figures_deferred) BEGIN{_LEAN_EVENT_INSERTED}END;
DROP TRIGGER IF EXISTS attempts_figures_insert;
CREATE TRIGGER attempts_figures_insert AFTER INSERT ON attempts
WHEN new.result IS NOT 'XFER_LEG' AND NOT EXISTS (SELECT 1 FROM figures_deferred) BEGIN{_ATTEMPT_INSERTED}END;
"""

_NEW = "e.id > (SELECT since FROM figures_deferred)"

# What the deferred triggers would have done for every event with an id above `since`, in one
# pass per table: counters first (creating the campaigns rows the reply counts update), then
# names, then the replies, recomputed as FULL_SCAN defines them (the `events_reply_to` trigger
# counts each change), for the new inbound texts and for older ones a new outbound text may take.
# `+event_type` and CROSS JOIN: the new events are found by their ids, not among every event of their type;
# `+r.to_e164`: a reply is found by its sender, not among everything sent to a short code.
# In four parts, each a no-op unless the new events include a type it names (`SETTLE_NEEDS`), so a
# writer that knows the types it inserted runs only the parts that do something.
SETTLE_COUNTS = f"""
INSERT INTO event_totals (day, campaign_id, event_type, final_result, events, tries, duration, transfer_duration,
                          billed_amount)
SELECT substr(e.event_time, 1, 10), {campaign_key('e')}, e.event_type, e.final_result, count(*),
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {_TRY})),
       sum(ifnull(e.duration, 0)), sum(ifnull(e.transfer_duration, 0)), sum(ifnull(e.billed_amount, 0))
FROM events AS e WHERE {_NEW} GROUP BY 1, 2, 3, 4
ON CONFLICT (day, ifnull(campaign_id, 0), event_type, ifnull(final_result, '')) DO UPDATE SET
    events = events + excluded.events, tries = tries + excluded.tries, duration = duration + excluded.duration,
    transfer_duration = transfer_duration + excluded.transfer_duration,
    billed_amount = billed_amount + excluded.billed_amount;
INSERT INTO campaigns (id, first_seen, last_seen, {', '.join(c for c, _ in COUNTERS)}, tries)
SELECT {campaign_key('e')} AS campaign, min(e.event_time), max(e.event_time),
       {', '.join(f"sum({adds.format(e='e')})" for _, adds in COUNTERS)},
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {_TRY}))
FROM events AS e WHERE {_NEW} AND campaign IS NOT NULL GROUP BY campaign
ON CONFLICT (id) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    {', '.join(f"{c} = {c} + excluded.{c}" for c, _ in COUNTERS)}, tries = tries + excluded.tries;
"""
SETTLE_LABELS = f"""
{_labels_update('campaigns.id')} AND id IN (SELECT {campaign_key('e')} FROM events AS e
    WHERE {_NEW} AND +e.event_type IN {CAMPAIGN_EVENTS});
"""
SETTLE_REPLIES = f"""
UPDATE events SET reply_to = {_attributed_text('events')}
WHERE id > (SELECT since FROM figures_deferred) AND +event_type = 'INBOUND_TEXT_FINISHED';
"""
SETTLE_TAKEN_REPLIES = f"""
UPDATE events SET reply_to = {_attributed_text('events')}
WHERE id IN (SELECT r.id FROM events AS e CROSS JOIN events AS r
             ON r.event_type = 'INBOUND_TEXT_FINISHED' AND r.from_e164 = e.to_e164 AND +r.to_e164 = e.from_e164
                AND substr(r.event_time, 1, 19) >= substr(e.event_time, 1, 19)
                AND substr(r.event_time, 1, 19) <=
                    strftime('%Y-%m-%dT%H:%M:%S', e.event_time, '+{REPLY_WINDOW_DAYS} days')
             WHERE {_NEW} AND +e.event_type = 'OUTBOUND_TEXT_FINISHED'
               AND r.id <= (SELECT since FROM figures_deferred));
"""
SETTLE = SETTLE_COUNTS + SETTLE_LABELS + SETTLE_REPLIES + SETTLE_TAKEN_REPLIES

# Each part of SETTLE and the event types among the new events without which it changes nothing:
# without new events there are no counts to add, without a new campaign event no campaign's name,
# labels or status to refresh, without a new inbound text no reply to attribute, without a new
# outbound text no older reply it could take.
SETTLE_NEEDS: tuple[tuple[str, frozenset[str] | None], ...] = (
    (SETTLE_COUNTS, None),
    (SETTLE_LABELS, frozenset(CAMPAIGN_TYPES)),
    (SETTLE_REPLIES, frozenset({"INBOUND_TEXT_FINISHED"})),
    (SETTLE_TAKEN_REPLIES, frozenset({"OUTBOUND_TEXT_FINISHED"})),
)

# The insert trigger's last statement: a new outbound text takes the replies an older text held.
_TAKE_REPLIES = _EVENT_INSERTED[_EVENT_INSERTED.index("    -- A text that arrives after replies"):]
assert _LEAN_EVENT_INSERTED.endswith(_TAKE_REPLIES)

# Schema 10 (SQLite): that UPDATE in a trigger of its own, fired for outbound texts only. It fires
# `events_reply_to`, so SQLite runs it in two passes and opens a temporary table of the rows to
# change before its WHERE is tested: for every event stored row by row, whatever its type. The
# figures must not depend on the order SQLite fires the two triggers in (undocumented): the replies
# it moves are counted on the text's campaign row, which the counting upsert of the other trigger
# creates; so this one first makes that row (if missing) with the event's time as first and last
# seen, which the upsert's min() and max() then keep, and the counts it adds are the same either way.
TAKE_REPLIES_APART = f"""
DROP TRIGGER IF EXISTS events_figures_insert;
CREATE TRIGGER events_figures_insert AFTER INSERT ON events
WHEN NOT EXISTS (SELECT 1 FROM figures_deferred) BEGIN{_LEAN_EVENT_INSERTED.removesuffix(_TAKE_REPLIES)}END;
DROP TRIGGER IF EXISTS events_figures_take_replies;
CREATE TRIGGER events_figures_take_replies AFTER INSERT ON events
WHEN new.event_type = 'OUTBOUND_TEXT_FINISHED' AND NOT EXISTS (SELECT 1 FROM figures_deferred) BEGIN
    INSERT INTO campaigns (id, first_seen, last_seen) SELECT new.broadcast_id, new.event_time, new.event_time
        WHERE new.broadcast_id IS NOT NULL
    ON CONFLICT (id) DO NOTHING;
{_TAKE_REPLIES}END;
"""
