"""The PL/pgSQL triggers that keep the figure tables (`figures`) on PostgreSQL on every write to events and attempts.

They keep the same figures as SQLite's triggers (`store.figure_triggers`); what
differs is how PostgreSQL runs triggers:

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

from mailhook.store.figures import CAMPAIGN_EVENTS, REPLY_WINDOW_DAYS, TEXTS, campaign_rows
from mailhook.store.pg.figures import (
    COUNTERS,
    LOCK_NAMESPACE,
    attributed_text,
    campaign_key,
    labels_update,
)


def _lock(what: str) -> str:
    return f"PERFORM pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({what}));"


def _pair(a: str, b: str) -> str:
    """Return the lock name of an unordered pair of numbers (a text and its replies share it)."""
    return f"'pair:' || least({a}, {b}) || ' ' || greatest({a}, {b})"


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
            {labels_update('id = key')};
        END IF;
    END IF;
    IF NEW.event_type = 'INBOUND_TEXT_FINISHED' AND NEW.from_e164 IS NOT NULL AND NEW.to_e164 IS NOT NULL THEN
        {_lock(_pair('NEW.from_e164', 'NEW.to_e164'))}
        text_id := {attributed_text('NEW')};
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
    {labels_update(f"id IN (SELECT {campaign_key('g')} FROM gone AS g WHERE g.event_type IN {CAMPAIGN_EVENTS})")};

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
    UPDATE events SET reply_to = {attributed_text('events')}
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
