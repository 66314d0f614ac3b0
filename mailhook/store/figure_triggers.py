"""The triggers that keep the figures (`store.figures`) on every write, and a large batch's deferred settling.

Every insert into `events` or `attempts` and every delete counts itself into
`campaigns` and `event_totals` in its own statement's transaction; a writer
storing many events at once may defer that to one set-based pass
(`DEFERRAL`, `SETTLE`). The schema's migrations make these triggers.
"""

from __future__ import annotations

from mailhook.models import CAMPAIGN_TYPES
from mailhook.store.figures import (
    CAMPAIGN_EVENTS,
    COUNTERS,
    REPLY_WINDOW_DAYS,
    TRY,
    attributed_text,
    attributed_text_unsorted,
    bucket_of,
    bucket_where,
    campaign_key,
    campaign_rows,
    is_campaign_event,
    labels_taken,
    labels_update,
)


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
    {labels_taken("new")} AND {is_campaign_event("new")};
    UPDATE events SET reply_to = {attributed_text_unsorted('new')}
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
    WHERE rowid = (SELECT t.rowid FROM events AS e JOIN event_totals AS t ON {bucket_of('e')}
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
    WHERE {bucket_where('old')};
    DELETE FROM event_totals WHERE events = 0 AND {bucket_where('old')};
    UPDATE campaigns SET {_counters('-', 'old')} WHERE id = {_OLD_KEY};
    UPDATE campaigns SET
        first_seen = (SELECT min(c.event_time) FROM ({campaign_rows('x.event_time', every=True, by_range=True)}) AS c),
        last_seen = (SELECT max(c.event_time) FROM ({campaign_rows('x.event_time', every=True, by_range=True)}) AS c)
    WHERE id = {_OLD_KEY} AND (old.event_time <= first_seen OR old.event_time >= last_seen);
    DELETE FROM campaigns WHERE id = {_OLD_KEY} AND events = 0;
    {labels_update(_OLD_KEY)} AND {is_campaign_event("old")};
    -- A deleted reply leaves its text; a deleted text's replies go to the next latest text, if any.
    UPDATE campaigns SET replies = replies - 1,
        replied_texts = replied_texts - NOT EXISTS (SELECT 1 FROM events WHERE reply_to = old.reply_to)
    WHERE old.reply_to IS NOT NULL AND id = (SELECT broadcast_id FROM events WHERE id = old.reply_to);
    UPDATE campaigns SET replies = replies - (SELECT count(*) FROM events WHERE reply_to = old.id),
        replied_texts = replied_texts - EXISTS (SELECT 1 FROM events WHERE reply_to = old.id)
    WHERE old.event_type = 'OUTBOUND_TEXT_FINISHED' AND id = old.broadcast_id;
    UPDATE events SET reply_to = {attributed_text('events')}
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
    WHERE rowid = (SELECT t.rowid FROM events AS e JOIN event_totals AS t ON {bucket_of('e')}
                   WHERE e.id = old.event_id);
    UPDATE campaigns SET tries = tries - 1
    WHERE id = (SELECT {campaign_key('e')} FROM events AS e WHERE e.id = old.event_id);
END;
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
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {TRY})),
       sum(ifnull(e.duration, 0)), sum(ifnull(e.transfer_duration, 0)), sum(ifnull(e.billed_amount, 0))
FROM events AS e WHERE {_NEW} GROUP BY 1, 2, 3, 4
ON CONFLICT (day, ifnull(campaign_id, 0), event_type, ifnull(final_result, '')) DO UPDATE SET
    events = events + excluded.events, tries = tries + excluded.tries, duration = duration + excluded.duration,
    transfer_duration = transfer_duration + excluded.transfer_duration,
    billed_amount = billed_amount + excluded.billed_amount;
INSERT INTO campaigns (id, first_seen, last_seen, {', '.join(c for c, _ in COUNTERS)}, tries)
SELECT {campaign_key('e')} AS campaign, min(e.event_time), max(e.event_time),
       {', '.join(f"sum({adds.format(e='e')})" for _, adds in COUNTERS)},
       sum((SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND {TRY}))
FROM events AS e WHERE {_NEW} AND campaign IS NOT NULL GROUP BY campaign
ON CONFLICT (id) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    {', '.join(f"{c} = {c} + excluded.{c}" for c, _ in COUNTERS)}, tries = tries + excluded.tries;
"""
SETTLE_LABELS = f"""
{labels_update('campaigns.id')} AND id IN (SELECT {campaign_key('e')} FROM events AS e
    WHERE {_NEW} AND +e.event_type IN {CAMPAIGN_EVENTS});
"""
SETTLE_REPLIES = f"""
UPDATE events SET reply_to = {attributed_text('events')}
WHERE id > (SELECT since FROM figures_deferred) AND +event_type = 'INBOUND_TEXT_FINISHED';
"""
SETTLE_TAKEN_REPLIES = f"""
UPDATE events SET reply_to = {attributed_text('events')}
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
_OUTBOUND_TEXT_COUNTED = "new.event_type = 'OUTBOUND_TEXT_FINISHED' AND NOT EXISTS (SELECT 1 FROM figures_deferred)"
_TAKE_REPLIES_BODY = f"""
    INSERT INTO campaigns (id, first_seen, last_seen) SELECT new.broadcast_id, new.event_time, new.event_time
        WHERE new.broadcast_id IS NOT NULL
    ON CONFLICT (id) DO NOTHING;
{_TAKE_REPLIES}"""
TAKE_REPLIES_APART = f"""
DROP TRIGGER IF EXISTS events_figures_insert;
CREATE TRIGGER events_figures_insert AFTER INSERT ON events
WHEN NOT EXISTS (SELECT 1 FROM figures_deferred) BEGIN{_LEAN_EVENT_INSERTED.removesuffix(_TAKE_REPLIES)}END;
DROP TRIGGER IF EXISTS events_figures_take_replies;
CREATE TRIGGER events_figures_take_replies AFTER INSERT ON events
WHEN {_OUTBOUND_TEXT_COUNTED} BEGIN{_TAKE_REPLIES_BODY}END;
"""

# Schema 11: that trigger's work only when an inbound text from the text's recipient to its sender lies in
# the reply window after it, which a new outbound text nearly never finds (a backfill out of order can):
# the UPDATE opens its temporary table of rowids and the campaign row's upsert runs for every outbound
# text stored row by row, finding nothing to take (bench/store_calls.py --callgrind: the trigger cost
# 27.7 k instructions per delivery at batch 1). The test is one seek of `events_text_from`; it holds for
# every row the UPDATE changes (the same conditions, less the one on the reply's current text), so when
# it fails the UPDATE changes nothing, and the campaign row, made only for the counts of moved replies,
# is made by the counting trigger anyway: the same figures in either order of the two triggers.
_REPLIES_TO_TAKE = f"""EXISTS (SELECT 1 FROM events AS r
    WHERE r.event_type = 'INBOUND_TEXT_FINISHED' AND r.from_e164 = new.to_e164 AND r.to_e164 = new.from_e164
      AND substr(r.event_time, 1, 19) >= substr(new.event_time, 1, 19)
      AND substr(r.event_time, 1, 19) <= strftime('%Y-%m-%dT%H:%M:%S', new.event_time, '+{REPLY_WINDOW_DAYS} days'))"""
TAKE_REPLIES_WHEN_FOUND = f"""
DROP TRIGGER IF EXISTS events_figures_take_replies;
CREATE TRIGGER events_figures_take_replies AFTER INSERT ON events
WHEN {_OUTBOUND_TEXT_COUNTED}
  AND {_REPLIES_TO_TAKE} BEGIN{_TAKE_REPLIES_BODY}END;
"""
