"""The figure tables on PostgreSQL: `campaigns`, `event_totals` and reply attribution, their full scan and views.

The same tables, columns and definitions as `mailhook.store.figures` keeps on
SQLite (docs/schema.md, "Calls, tries and replies"), so every figure is the
same on both stores (tested against a full scan, `FULL_SCAN`). PL/pgSQL
triggers keep them on every write (`figure_triggers`).
"""

from __future__ import annotations

from mailhook.store.figures import CALLS, CAMPAIGN_EVENTS, REPLY_WINDOW_DAYS, TEXTS, campaign_rows

LOCK_NAMESPACE = 0x6D680F16
"""The first key of mailhook's figure advisory locks (`pg_advisory_xact_lock(LOCK_NAMESPACE, hash)`)."""


def campaign_key(e: str) -> str:
    """Return the campaign an event of alias `e` belongs to: its broadcast, or for a campaign event the campaign."""
    return f"COALESCE({e}.broadcast_id, CASE WHEN {e}.event_type IN {CAMPAIGN_EVENTS} THEN {e}.resource_id END)"


def _when(condition: str) -> str:
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


# The counters of a campaigns row: (column, what one event of alias `e` adds to it), as on SQLite.
COUNTERS: tuple[tuple[str, str], ...] = (
    ("events", "1"),
    ("campaign_events", _when(f"{{e}}.event_type IN {CAMPAIGN_EVENTS}")),
    ("calls", _when(f"{{e}}.event_type IN {CALLS}")),
    ("live_answers", _when(f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result = 'LA'")),
    ("machines", _when(f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result = 'AM'")),
    ("no_answer", _when(f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result = 'NO_ANS'")),
    ("busy", _when(f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result = 'BUSY'")),
    ("transferred", _when(f"{{e}}.event_type IN {CALLS} AND {{e}}.final_result = 'XFER'")),
    ("texts", _when(f"{{e}}.event_type IN {TEXTS}")),
    ("sent", _when("{e}.event_type = 'OUTBOUND_TEXT_FINISHED' AND {e}.final_result = 'SENT'")),
    ("dnt", _when("{e}.event_type = 'OUTBOUND_TEXT_FINISHED' AND {e}.final_result = 'DNT'")),
    ("failed", _when("{e}.event_type = 'OUTBOUND_TEXT_FINISHED'"
                     " AND coalesce({e}.final_result, '') NOT IN ('SENT', 'DNT')")),
    ("inbound_texts", _when("{e}.event_type = 'INBOUND_TEXT_FINISHED'")),
    ("duration", "coalesce({e}.duration, 0)"),
    ("transfer_duration", "coalesce({e}.transfer_duration, 0)"),
    ("billed_amount", "coalesce({e}.billed_amount, 0)"),
)
_COUNTER_NAMES = ", ".join(c for c, _ in COUNTERS)

TABLES = """
CREATE TABLE IF NOT EXISTS campaigns (
    id bigint PRIMARY KEY,
    name text,
    type text,
    labels text,
    status text,
    status_at text,
    first_seen text,
    last_seen text,
    events bigint NOT NULL DEFAULT 0,
    campaign_events bigint NOT NULL DEFAULT 0,
    calls bigint NOT NULL DEFAULT 0,
    live_answers bigint NOT NULL DEFAULT 0,
    machines bigint NOT NULL DEFAULT 0,
    no_answer bigint NOT NULL DEFAULT 0,
    busy bigint NOT NULL DEFAULT 0,
    transferred bigint NOT NULL DEFAULT 0,
    texts bigint NOT NULL DEFAULT 0,
    sent bigint NOT NULL DEFAULT 0,
    dnt bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    inbound_texts bigint NOT NULL DEFAULT 0,
    duration bigint NOT NULL DEFAULT 0,
    transfer_duration bigint NOT NULL DEFAULT 0,
    billed_amount double precision NOT NULL DEFAULT 0,
    tries bigint NOT NULL DEFAULT 0,
    replies bigint NOT NULL DEFAULT 0,
    replied_texts bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS event_totals (
    day text NOT NULL,
    campaign_id bigint,
    event_type text NOT NULL,
    final_result text,
    events bigint NOT NULL DEFAULT 0,
    tries bigint NOT NULL DEFAULT 0,
    duration bigint NOT NULL DEFAULT 0,
    transfer_duration bigint NOT NULL DEFAULT 0,
    billed_amount double precision NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS event_totals_bucket
    ON event_totals(day, (coalesce(campaign_id, 0)), event_type, (coalesce(final_result, '')));
CREATE INDEX IF NOT EXISTS event_totals_campaign ON event_totals(campaign_id);
"""

# A time SQLite's date functions read (UTC ISO 8601, `Z` or an offset), moved by some days, as
# `YYYY-MM-DDTHH:MM:SS` in UTC like SQLite's strftime; NULL (never an error) for anything else.
FUNCTIONS = """
CREATE OR REPLACE FUNCTION mailhook_shift(t text, days integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF t IS NULL OR t !~ '^\\d{4}-\\d{2}-\\d{2}' THEN
        RETURN NULL;
    END IF;
    IF t !~ '(Z|[+-]\\d\\d:?\\d\\d)$' THEN
        t := t || 'Z';
    END IF;
    RETURN to_char((t::timestamptz AT TIME ZONE 'UTC') + make_interval(days => days), 'YYYY-MM-DD"T"HH24:MI:SS');
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
"""


def attributed_text(r: str) -> str:
    """Return the subquery giving the outbound text that the inbound text `r` (a row alias) replies to."""
    return f"""(SELECT o.id FROM events AS o
        WHERE o.event_type = 'OUTBOUND_TEXT_FINISHED' AND o.to_e164 = {r}.from_e164 AND o.from_e164 = {r}.to_e164
          AND substr(o.event_time, 1, 19) <= substr({r}.event_time, 1, 19)
          AND substr(o.event_time, 1, 19) >= mailhook_shift({r}.event_time, -{REPLY_WINDOW_DAYS})
        ORDER BY substr(o.event_time, 1, 19) DESC, o.id DESC LIMIT 1)"""


def _latest(column: str) -> str:
    rows = campaign_rows(f"x.{column} AS value, x.event_time, x.id", f" AND x.{column} IS NOT NULL")
    return f"(SELECT c.value FROM ({rows}) AS c ORDER BY c.event_time DESC, c.id DESC LIMIT 1)"


def labels_update(where: str) -> str:
    """Return the UPDATE giving the campaigns matching `where` the latest known name, type, labels and status."""
    return f"""UPDATE campaigns SET name = {_latest('broadcast_name')}, type = {_latest('broadcast_type')},
        labels = {_latest('labels')}, status = {_latest('broadcast_status')},
        status_at = (SELECT max(c.event_time) FROM ({campaign_rows('x.event_time')}) AS c)
    WHERE {where}"""


_TRY = "a.result IS DISTINCT FROM 'XFER_LEG'"

# The same figures computed from scratch (the tests' reference, and a repair after a bulk load).
FULL_SCAN = f"""
UPDATE events SET reply_to = {attributed_text('events')}
WHERE event_type = 'INBOUND_TEXT_FINISHED' AND reply_to IS DISTINCT FROM {attributed_text('events')};
DELETE FROM event_totals;
INSERT INTO event_totals (day, campaign_id, event_type, final_result, events, tries, duration, transfer_duration,
                          billed_amount)
SELECT substr(e.event_time, 1, 10), {campaign_key('e')}, e.event_type, e.final_result, count(*),
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {_TRY})),
       sum(coalesce(e.duration, 0)), sum(coalesce(e.transfer_duration, 0)), sum(coalesce(e.billed_amount, 0))
FROM events AS e GROUP BY 1, 2, 3, 4;
DELETE FROM campaigns;
INSERT INTO campaigns (id, first_seen, last_seen, {_COUNTER_NAMES}, tries)
SELECT {campaign_key('e')} AS campaign, min(e.event_time), max(e.event_time),
       {', '.join(f"sum({adds.format(e='e')})" for _, adds in COUNTERS)},
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {_TRY}))
FROM events AS e WHERE {campaign_key('e')} IS NOT NULL GROUP BY 1;
{labels_update('TRUE')};
UPDATE campaigns SET
    replies = (SELECT count(*) FROM events AS r JOIN events AS o ON o.id = r.reply_to
               WHERE o.broadcast_id = campaigns.id),
    replied_texts = (SELECT count(DISTINCT r.reply_to) FROM events AS r JOIN events AS o ON o.id = r.reply_to
                     WHERE o.broadcast_id = campaigns.id);
"""

# The views that name a campaign read it from `campaigns` now (the base migration gave them NULL there);
# the same columns in the same order as on SQLite, which `CREATE OR REPLACE VIEW` requires anyway.
VIEWS = f"""
CREATE OR REPLACE VIEW texts AS
SELECT e.id, e.delivery_id, e.event_type, e.event_type_source, e.api_version, e.resource_type,
       e.resource_id AS text_id, e.subscription_id, e.account_id, e.from_number, e.to_number, e.from_e164,
       e.to_e164, e.inbound, e.state, e.final_result, e.message, e.billed_amount, e.batch_id, e.broadcast_id,
       (SELECT c.name FROM campaigns AS c WHERE c.id = e.broadcast_id) AS campaign_name, e.contact_id, e.labels,
       e.reply_to, e.created, e.modified, e.event_time, e.received_at
FROM events AS e
WHERE e.event_type IN {TEXTS};

CREATE OR REPLACE VIEW calls AS
SELECT e.id, e.delivery_id, e.event_type, e.event_type_source, e.api_version, e.resource_type,
       e.resource_id AS call_id, e.subscription_id, e.account_id, e.from_number, e.to_number, e.from_e164,
       e.to_e164, e.inbound, e.state, e.final_result, e.billed_amount, e.duration, e.transfer_duration,
       (SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {_TRY}) AS tries,
       e.batch_id, e.broadcast_id, (SELECT c.name FROM campaigns AS c WHERE c.id = e.broadcast_id) AS campaign_name,
       e.contact_id, e.labels, e.created, e.modified, e.event_time, e.received_at
FROM events AS e
WHERE e.event_type IN {CALLS};

CREATE OR REPLACE VIEW replies AS
SELECT r.id, r.from_number, r.to_number, r.from_e164, r.to_e164, r.message, r.event_time AS replied_at,
       r.reply_to AS text_event_id,
       (SELECT o.broadcast_id FROM events AS o WHERE o.id = r.reply_to) AS broadcast_id,
       (SELECT c.name FROM events AS o JOIN campaigns AS c ON c.id = o.broadcast_id WHERE o.id = r.reply_to)
           AS campaign_name,
       (SELECT o.message FROM events AS o WHERE o.id = r.reply_to) AS text_message,
       (SELECT o.event_time FROM events AS o WHERE o.id = r.reply_to) AS texted_at
FROM events AS r
WHERE r.event_type = 'INBOUND_TEXT_FINISHED';

"""
