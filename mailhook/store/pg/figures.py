"""The figure tables on PostgreSQL: `campaigns`, `event_totals` and reply attribution, kept by PL/pgSQL triggers.

The same tables, columns and definitions as `mailhook.store.figures` keeps on
SQLite (docs/schema.md, "Calls, tries and replies"), so every figure is the
same on both stores (tested against a full scan, `FULL_SCAN`). What differs
is how PostgreSQL runs triggers:

- A row-level AFTER trigger on a statement that touches many rows fires only
  once every row is written (SQLite fires it right after each row), so the
  bookkeeping of deletes and of `reply_to` changes is done per statement,
  over its transition tables (`gone`; `before_rows`/`after_rows`), in sets.
  `mailhook prune` deletes a text and its replies in one statement; the counts
  stay exact.
- Several nodes write at once. A trigger that reads other rows to decide (the
  latest campaign event, the text a reply answers) first takes a transaction
  advisory lock on what it decides about (the campaign, the pair of numbers),
  so two transactions deciding about the same thing run one after the other
  and the second sees the first's rows (READ COMMITTED takes a new snapshot
  per statement). Locks are taken in the order rows arrive, so two batches
  may deadlock; PostgreSQL then aborts one (SQLSTATE 40P01), which the writer
  retries like any other transient failure.
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


def _attributed_text(r: str) -> str:
    """Return the subquery giving the outbound text that the inbound text `r` (a row alias) replies to."""
    return f"""(SELECT o.id FROM events AS o
        WHERE o.event_type = 'OUTBOUND_TEXT_FINISHED' AND o.to_e164 = {r}.from_e164 AND o.from_e164 = {r}.to_e164
          AND substr(o.event_time, 1, 19) <= substr({r}.event_time, 1, 19)
          AND substr(o.event_time, 1, 19) >= mailhook_shift({r}.event_time, -{REPLY_WINDOW_DAYS})
        ORDER BY substr(o.event_time, 1, 19) DESC, o.id DESC LIMIT 1)"""


def _latest(column: str) -> str:
    rows = campaign_rows(f"x.{column} AS value, x.event_time, x.id", f" AND x.{column} IS NOT NULL")
    return f"(SELECT c.value FROM ({rows}) AS c ORDER BY c.event_time DESC, c.id DESC LIMIT 1)"


def _labels_update(where: str) -> str:
    """Return the UPDATE giving the campaigns matching `where` the latest known name, type, labels and status."""
    return f"""UPDATE campaigns SET name = {_latest('broadcast_name')}, type = {_latest('broadcast_type')},
        labels = {_latest('labels')}, status = {_latest('broadcast_status')},
        status_at = (SELECT max(c.event_time) FROM ({campaign_rows('x.event_time')}) AS c)
    WHERE {where}"""


def _lock(what: str) -> str:
    return f"PERFORM pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({what}));"


def _pair(a: str, b: str) -> str:
    """Return the lock name of an unordered pair of numbers (a text and its replies share it)."""
    return f"'pair:' || least({a}, {b}) || ' ' || greatest({a}, {b})"


_COUNTER_NAMES = ", ".join(c for c, _ in COUNTERS)

TRIGGERS = f"""
CREATE OR REPLACE FUNCTION mailhook_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key bigint := {campaign_key('NEW')};
    text_id bigint;
BEGIN
    INSERT INTO event_totals AS t (day, campaign_id, event_type, final_result, events, duration, transfer_duration,
                                   billed_amount)
    VALUES (substr(NEW.event_time, 1, 10), key, NEW.event_type, NEW.final_result, 1,
            coalesce(NEW.duration, 0), coalesce(NEW.transfer_duration, 0), coalesce(NEW.billed_amount, 0))
    ON CONFLICT (day, (coalesce(campaign_id, 0)), event_type, (coalesce(final_result, ''))) DO UPDATE SET
        events = t.events + 1, duration = t.duration + excluded.duration,
        transfer_duration = t.transfer_duration + excluded.transfer_duration,
        billed_amount = t.billed_amount + excluded.billed_amount;
    IF key IS NOT NULL THEN
        IF NEW.event_type IN {CAMPAIGN_EVENTS} THEN
            {_lock("'campaign:' || key")}
        END IF;
        INSERT INTO campaigns AS c (id, first_seen, last_seen) VALUES (key, NEW.event_time, NEW.event_time)
        ON CONFLICT (id) DO UPDATE SET first_seen = least(c.first_seen, excluded.first_seen),
                                       last_seen = greatest(c.last_seen, excluded.last_seen);
        UPDATE campaigns SET {', '.join(f"{c} = {c} + {adds.format(e='NEW')}" for c, adds in COUNTERS)}
        WHERE id = key;
        IF NEW.event_type IN {CAMPAIGN_EVENTS} THEN
            {_labels_update('id = key')};
        END IF;
    END IF;
    IF NEW.event_type = 'INBOUND_TEXT_FINISHED' AND NEW.from_e164 IS NOT NULL AND NEW.to_e164 IS NOT NULL THEN
        {_lock(_pair('NEW.from_e164', 'NEW.to_e164'))}
        text_id := {_attributed_text('NEW')};
        IF text_id IS NOT NULL THEN
            UPDATE events SET reply_to = text_id WHERE id = NEW.id;
        END IF;
    ELSIF NEW.event_type = 'OUTBOUND_TEXT_FINISHED' AND NEW.from_e164 IS NOT NULL AND NEW.to_e164 IS NOT NULL THEN
        {_lock(_pair('NEW.from_e164', 'NEW.to_e164'))}
        -- A text that arrives after replies to it (a backfill out of order) takes them from an older text.
        UPDATE events SET reply_to = NEW.id
        WHERE event_type = 'INBOUND_TEXT_FINISHED' AND from_e164 = NEW.to_e164 AND to_e164 = NEW.from_e164
          AND substr(event_time, 1, 19) >= substr(NEW.event_time, 1, 19)
          AND substr(event_time, 1, 19) <= mailhook_shift(NEW.event_time, {REPLY_WINDOW_DAYS})
          AND (reply_to IS NULL OR (SELECT (substr(t.event_time, 1, 19), t.id) < (substr(NEW.event_time, 1, 19), NEW.id)
                                    FROM events AS t WHERE t.id = events.reply_to));
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION mailhook_events_deleting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Its attempts go first, while the event is still there to say which figures their tries were in.
    DELETE FROM attempts WHERE event_id = OLD.id;
    IF OLD.event_type IN {CAMPAIGN_EVENTS} THEN
        {_lock(f"'campaign:' || {campaign_key('OLD')}")}
    ELSIF OLD.event_type IN {TEXTS} AND OLD.from_e164 IS NOT NULL AND OLD.to_e164 IS NOT NULL THEN
        {_lock(_pair('OLD.from_e164', 'OLD.to_e164'))}
    END IF;
    RETURN OLD;
END $$;

CREATE OR REPLACE FUNCTION mailhook_events_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_totals AS t SET events = t.events - g.events, duration = t.duration - g.duration,
        transfer_duration = t.transfer_duration - g.transfer_duration, billed_amount = t.billed_amount - g.billed_amount
    FROM (SELECT substr(e.event_time, 1, 10) AS day, {campaign_key('e')} AS campaign_id, e.event_type, e.final_result,
                 count(*) AS events, sum(coalesce(e.duration, 0)) AS duration,
                 sum(coalesce(e.transfer_duration, 0)) AS transfer_duration,
                 sum(coalesce(e.billed_amount, 0)) AS billed_amount
          FROM gone AS e GROUP BY 1, 2, 3, 4) AS g
    WHERE t.day = g.day AND coalesce(t.campaign_id, 0) = coalesce(g.campaign_id, 0) AND t.event_type = g.event_type
      AND coalesce(t.final_result, '') = coalesce(g.final_result, '');
    DELETE FROM event_totals WHERE events = 0 AND day IN (SELECT substr(event_time, 1, 10) FROM gone);

    UPDATE campaigns AS c SET {', '.join(f"{c} = c.{c} - g.{c}" for c, _ in COUNTERS)}
    FROM (SELECT {campaign_key('e')} AS id, {', '.join(f"sum({adds.format(e='e')}) AS {c}" for c, adds in COUNTERS)}
          FROM gone AS e GROUP BY 1) AS g
    WHERE c.id = g.id;
    UPDATE campaigns SET
        first_seen = (SELECT min(c.event_time) FROM ({campaign_rows('x.event_time', every=True)}) AS c),
        last_seen = (SELECT max(c.event_time) FROM ({campaign_rows('x.event_time', every=True)}) AS c)
    WHERE events > 0 AND EXISTS (SELECT 1 FROM gone AS g WHERE {campaign_key('g')} = campaigns.id
                                 AND (g.event_time <= campaigns.first_seen OR g.event_time >= campaigns.last_seen));
    DELETE FROM campaigns WHERE events = 0 AND id IN (SELECT {campaign_key('g')} FROM gone AS g);
    {_labels_update(f"id IN (SELECT {campaign_key('g')} FROM gone AS g WHERE g.event_type IN {CAMPAIGN_EVENTS})")};

    -- Replies: every text that lost a reply, or was deleted, with its replies before and after.
    UPDATE campaigns AS c SET replies = c.replies - d.replies, replied_texts = c.replied_texts - d.replied
    FROM (SELECT s.broadcast_id, sum(s.before - s.after) AS replies,
                 sum(CASE WHEN s.before > 0 THEN 1 ELSE 0 END - CASE WHEN s.after > 0 THEN 1 ELSE 0 END) AS replied
          FROM (SELECT coalesce((SELECT o.broadcast_id FROM events AS o WHERE o.id = t.id),
                                (SELECT o.broadcast_id FROM gone AS o WHERE o.id = t.id)) AS broadcast_id,
                       (SELECT count(*) FROM events AS r WHERE r.reply_to = t.id)
                         + (SELECT count(*) FROM gone AS r WHERE r.reply_to = t.id) AS before,
                       CASE WHEN EXISTS (SELECT 1 FROM gone AS o WHERE o.id = t.id) THEN 0
                            ELSE (SELECT count(*) FROM events AS r WHERE r.reply_to = t.id) END AS after
                FROM (SELECT reply_to AS id FROM gone WHERE reply_to IS NOT NULL
                      UNION SELECT id FROM gone WHERE event_type = 'OUTBOUND_TEXT_FINISHED') AS t) AS s
          WHERE s.broadcast_id IS NOT NULL
          GROUP BY s.broadcast_id) AS d
    WHERE c.id = d.broadcast_id;
    -- A deleted text's replies go to the next latest text, if any (counted by mailhook_events_updated).
    UPDATE events SET reply_to = {_attributed_text('events')}
    WHERE reply_to IN (SELECT id FROM gone WHERE event_type = 'OUTBOUND_TEXT_FINISHED');
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION mailhook_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Each text that gained or lost replies: `moved` of them, and how many it has now.
    UPDATE campaigns AS c SET replies = c.replies + d.replies, replied_texts = c.replied_texts + d.replied
    FROM (SELECT o.broadcast_id, sum(m.moved) AS replies,
                 sum(CASE WHEN m.now > 0 THEN 1 ELSE 0 END - CASE WHEN m.now - m.moved > 0 THEN 1 ELSE 0 END)
                     AS replied
          FROM (SELECT t.text_id, sum(t.n) AS moved,
                       (SELECT count(*) FROM events AS r WHERE r.reply_to = t.text_id) AS now
                FROM (SELECT b.reply_to AS text_id, -1 AS n FROM before_rows AS b JOIN after_rows AS a ON a.id = b.id
                      WHERE b.reply_to IS DISTINCT FROM a.reply_to AND b.reply_to IS NOT NULL
                      UNION ALL
                      SELECT a.reply_to, 1 FROM before_rows AS b JOIN after_rows AS a ON a.id = b.id
                      WHERE b.reply_to IS DISTINCT FROM a.reply_to AND a.reply_to IS NOT NULL) AS t
                GROUP BY t.text_id) AS m
          JOIN events AS o ON o.id = m.text_id
          WHERE o.broadcast_id IS NOT NULL
          GROUP BY o.broadcast_id) AS d
    WHERE c.id = d.broadcast_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION mailhook_attempts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    a attempts%ROWTYPE;
    sign integer := 1;
BEGIN
    IF TG_OP = 'DELETE' THEN
        a := OLD;
        sign := -1;
    ELSE
        a := NEW;
    END IF;
    UPDATE event_totals AS t SET tries = t.tries + sign
    FROM events AS e
    WHERE e.id = a.event_id AND t.day = substr(e.event_time, 1, 10)
      AND coalesce(t.campaign_id, 0) = coalesce({campaign_key('e')}, 0) AND t.event_type = e.event_type
      AND coalesce(t.final_result, '') = coalesce(e.final_result, '');
    UPDATE campaigns SET tries = tries + sign
    WHERE id = (SELECT {campaign_key('e')} FROM events AS e WHERE e.id = a.event_id);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS events_figures_insert ON events;
CREATE TRIGGER events_figures_insert AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION mailhook_events_inserted();
DROP TRIGGER IF EXISTS events_figures_before_delete ON events;
CREATE TRIGGER events_figures_before_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION mailhook_events_deleting();
DROP TRIGGER IF EXISTS events_figures_delete ON events;
CREATE TRIGGER events_figures_delete AFTER DELETE ON events
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION mailhook_events_deleted();
DROP TRIGGER IF EXISTS events_reply_to ON events;
CREATE TRIGGER events_reply_to AFTER UPDATE ON events
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mailhook_events_updated();
DROP TRIGGER IF EXISTS attempts_figures_insert ON attempts;
CREATE TRIGGER attempts_figures_insert AFTER INSERT ON attempts
    FOR EACH ROW WHEN (NEW.result IS DISTINCT FROM 'XFER_LEG') EXECUTE FUNCTION mailhook_attempts_changed();
DROP TRIGGER IF EXISTS attempts_figures_delete ON attempts;
CREATE TRIGGER attempts_figures_delete AFTER DELETE ON attempts
    FOR EACH ROW WHEN (OLD.result IS DISTINCT FROM 'XFER_LEG') EXECUTE FUNCTION mailhook_attempts_changed();
"""

_TRY = "a.result IS DISTINCT FROM 'XFER_LEG'"

# The same figures computed from scratch (the tests' reference, and a repair after a bulk load).
FULL_SCAN = f"""
UPDATE events SET reply_to = {_attributed_text('events')}
WHERE event_type = 'INBOUND_TEXT_FINISHED' AND reply_to IS DISTINCT FROM {_attributed_text('events')};
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
{_labels_update('TRUE')};
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

MIGRATION = FUNCTIONS + TABLES + FULL_SCAN + TRIGGERS + VIEWS
"""The migration that adds the figure tables, their triggers and the analysts' views (after the base tables)."""
