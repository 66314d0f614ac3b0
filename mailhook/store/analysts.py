"""Schema version 4: the figures, columns, views and full-text search analysts asked for (issue 14).

A released migration: never edited, only followed by new ones (`store.schema.MIGRATIONS`).
"""

from __future__ import annotations

from mailhook.store import figure_triggers, figures

FTS_TOKENIZER = "unicode61 remove_diacritics 2 categories 'L* N* Co So Sk'"
"""Words are letters and digits (case and accents folded) and, so that 👍 can be searched, emoji."""

# Figures analysts can trust, and columns they ask for (issue 14). Statements marked with a
# `mailhook_*` function are filled by Python functions `migrate` registers (phonenumbers, email dates).
V4_ANALYSTS = f"""
ALTER TABLE events ADD COLUMN transfer_duration INTEGER;
ALTER TABLE events ADD COLUMN event_time TEXT;
ALTER TABLE events ADD COLUMN from_e164 TEXT;
ALTER TABLE events ADD COLUMN to_e164 TEXT;
ALTER TABLE events ADD COLUMN reply_to INTEGER;
ALTER TABLE deliveries ADD COLUMN sent_at TEXT;

UPDATE events SET transfer_duration =
    (SELECT sum(a.duration) FROM attempts AS a WHERE a.event_id = events.id AND a.result = 'XFER_LEG')
WHERE id IN (SELECT event_id FROM attempts WHERE result = 'XFER_LEG' AND duration IS NOT NULL);
-- Only where the old duration was the sum over every record (CallFire sent none of its own).
UPDATE events SET duration = duration - transfer_duration
WHERE transfer_duration IS NOT NULL
  AND duration = (SELECT sum(a.duration) FROM attempts AS a WHERE a.event_id = events.id);
UPDATE events SET event_time = COALESCE(modified, created, received_at),
                  from_e164 = mailhook_e164(from_number), to_e164 = mailhook_e164(to_number);
UPDATE deliveries SET sent_at = mailhook_sent_at(channel, raw) WHERE raw IS NOT NULL;
UPDATE deliveries SET sent_at = (SELECT f.sent_at FROM deliveries AS f
                                 WHERE f.message_id = deliveries.message_id AND f.raw IS NOT NULL ORDER BY f.id LIMIT 1)
WHERE raw IS NULL AND message_id IS NOT NULL;

DROP INDEX IF EXISTS events_occurred_at;
CREATE INDEX IF NOT EXISTS events_event_time ON events(event_time);
-- The newest events of one type (replies: inbound texts) without sorting all of that type.
CREATE INDEX IF NOT EXISTS events_type_time ON events(event_type, event_time);
CREATE INDEX IF NOT EXISTS events_from_e164 ON events(from_e164);
CREATE INDEX IF NOT EXISTS events_to_e164 ON events(to_e164);
CREATE INDEX IF NOT EXISTS events_text_to ON events(event_type, to_e164, from_e164, event_time);
CREATE INDEX IF NOT EXISTS events_text_from ON events(event_type, from_e164, to_e164, event_time);
CREATE INDEX IF NOT EXISTS events_reply_to ON events(reply_to) WHERE reply_to IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_sent_at ON deliveries(sent_at);

-- Full-text search as sqlite-utils names it (events_fts, events_ai/_ad/_au, quoted names), so its
-- enable-fts/disable-fts/rebuild-fts work on it; emoji (So, skin tones Sk) are words of their own.
DROP TRIGGER IF EXISTS events_fts_insert;
DROP TRIGGER IF EXISTS events_fts_delete;
DROP TRIGGER IF EXISTS events_fts_update;
DROP TABLE IF EXISTS events_fts;
CREATE VIRTUAL TABLE "events_fts" USING FTS5 (
    "message",
    tokenize='{FTS_TOKENIZER.replace("'", "''")}',
    content="events"
);
INSERT INTO "events_fts" (rowid, "message") SELECT id, message FROM events WHERE message IS NOT NULL;
CREATE TRIGGER "events_ai" AFTER INSERT ON "events" WHEN new."message" IS NOT NULL BEGIN
  INSERT INTO "events_fts" (rowid, "message") VALUES (new.rowid, new."message");
END;
CREATE TRIGGER "events_ad" AFTER DELETE ON "events" WHEN old."message" IS NOT NULL BEGIN
  INSERT INTO "events_fts" ("events_fts", rowid, "message") VALUES('delete', old.rowid, old."message");
END;
CREATE TRIGGER "events_au" AFTER UPDATE OF "message" ON "events" BEGIN
  INSERT INTO "events_fts" ("events_fts", rowid, "message")
    SELECT 'delete', old.rowid, old."message" WHERE old."message" IS NOT NULL;
  INSERT INTO "events_fts" (rowid, "message") SELECT new.rowid, new."message" WHERE new."message" IS NOT NULL;
END;

DROP VIEW IF EXISTS campaigns;
-- `+event_time`: campaign events are a few among millions, so sorting them by time must start
-- from their event type, not walk the whole event_time index looking for them.
CREATE VIEW IF NOT EXISTS campaign_events AS
SELECT id, delivery_id, event_type, event_type_source, api_version, resource_type,
       COALESCE(broadcast_id, resource_id) AS broadcast_id, subscription_id, account_id,
       broadcast_name, broadcast_status, broadcast_type, labels, created, modified, +event_time AS event_time,
       received_at
FROM events
WHERE event_type IN ('CAMPAIGN_STARTED', 'CAMPAIGN_STOPPED', 'CAMPAIGN_FINISHED');
{figures.TABLES}
{figures.FULL_SCAN}
{figure_triggers.TRIGGERS}

DROP VIEW IF EXISTS texts;
CREATE VIEW texts AS
SELECT e.id, e.delivery_id, e.event_type, e.event_type_source, e.api_version, e.resource_type,
       e.resource_id AS text_id, e.subscription_id, e.account_id, e.from_number, e.to_number, e.from_e164,
       e.to_e164, e.inbound, e.state, e.final_result, e.message, e.billed_amount, e.batch_id, e.broadcast_id,
       (SELECT c.name FROM campaigns AS c WHERE c.id = e.broadcast_id) AS campaign_name, e.contact_id, e.labels,
       e.reply_to, e.created, e.modified, e.event_time, e.received_at
FROM events AS e
WHERE e.event_type IN ('OUTBOUND_TEXT_FINISHED', 'INBOUND_TEXT_FINISHED');

DROP VIEW IF EXISTS calls;
CREATE VIEW calls AS
SELECT e.id, e.delivery_id, e.event_type, e.event_type_source, e.api_version, e.resource_type,
       e.resource_id AS call_id, e.subscription_id, e.account_id, e.from_number, e.to_number, e.from_e164,
       e.to_e164, e.inbound, e.state, e.final_result, e.billed_amount, e.duration, e.transfer_duration,
       (SELECT count(*) FROM attempts AS a WHERE a.event_id = e.id AND a.result IS NOT 'XFER_LEG') AS tries,
       e.batch_id, e.broadcast_id, (SELECT c.name FROM campaigns AS c WHERE c.id = e.broadcast_id) AS campaign_name,
       e.contact_id, e.labels, e.created, e.modified, e.event_time, e.received_at
FROM events AS e
WHERE e.event_type IN ('OUTBOUND_CALL_FINISHED', 'INBOUND_CALL_FINISHED');

CREATE VIEW IF NOT EXISTS replies AS
-- The text's columns by scalar subqueries, not a join: counting the replies and showing the newest
-- then read only the rows they need.
SELECT r.id, r.from_number, r.to_number, r.from_e164, r.to_e164, r.message, r.event_time AS replied_at,
       r.reply_to AS text_event_id,
       (SELECT o.broadcast_id FROM events AS o WHERE o.id = r.reply_to) AS broadcast_id,
       (SELECT c.name FROM events AS o JOIN campaigns AS c ON c.id = o.broadcast_id WHERE o.id = r.reply_to)
           AS campaign_name,
       (SELECT o.message FROM events AS o WHERE o.id = r.reply_to) AS text_message,
       (SELECT o.event_time FROM events AS o WHERE o.id = r.reply_to) AS texted_at
FROM events AS r
WHERE r.event_type = 'INBOUND_TEXT_FINISHED';

DROP VIEW IF EXISTS attempts_detail;
CREATE VIEW attempts_detail AS
SELECT a.id, a.event_id, e.event_type, e.api_version, e.resource_type, e.resource_id, e.broadcast_id,
       e.batch_id, e.contact_id, e.from_number, e.to_number, e.to_e164, e.inbound, e.final_result, a.record_id,
       a.result, a.finish_time, a.billed_amount, a.duration, a.originate_time, a.answer_time, a.message,
       e.event_time, e.received_at
FROM attempts AS a
JOIN events AS e ON e.id = a.event_id;

-- Statistics for the query planner: without them it sorts every call to show the latest 100.
ANALYZE events;
"""
