"""The database schema as numbered migrations, applied in order on open.

Each entry is one SQL script; `PRAGMA user_version` records how many have
run. Append new migrations at the end, never edit a released one.
"""

from __future__ import annotations

from mailhook.store import figure_triggers, figures

EVENT_COLUMNS = (
    "dedupe_key",
    "event_type",
    "event_type_source",
    "api_version",
    "format",
    "resource_type",
    "resource_id",
    "subscription_id",
    "account_id",
    "webhook_id",
    "from_number",
    "to_number",
    "inbound",
    "state",
    "final_result",
    "message",
    "billed_amount",
    "duration",
    "batch_id",
    "broadcast_id",
    "contact_id",
    "broadcast_name",
    "broadcast_status",
    "broadcast_type",
    "labels",
    "created",
    "modified",
    "payload",
    "transfer_duration",
)

ATTEMPT_COLUMNS = (
    "record_id",
    "result",
    "finish_time",
    "billed_amount",
    "duration",
    "originate_time",
    "answer_time",
    "message",
    "payload",
)

_V1 = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    message_id TEXT,
    envelope_from TEXT,
    envelope_to TEXT,
    subject TEXT,
    content_type TEXT,
    remote_addr TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    raw BLOB,
    notes TEXT,
    source TEXT,
    event_count INTEGER NOT NULL DEFAULT 0,
    duplicate_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_message_id ON deliveries(message_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_received_at ON deliveries(received_at);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries(status);

CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    dedupe_key TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_type_source TEXT NOT NULL,
    api_version TEXT NOT NULL,
    format TEXT NOT NULL,
    resource_type TEXT,
    resource_id INTEGER,
    subscription_id INTEGER,
    account_id INTEGER,
    webhook_id INTEGER,
    from_number TEXT,
    to_number TEXT,
    inbound INTEGER,
    state TEXT,
    final_result TEXT,
    message TEXT,
    billed_amount REAL,
    duration INTEGER,
    batch_id INTEGER,
    broadcast_id INTEGER,
    contact_id INTEGER,
    broadcast_name TEXT,
    broadcast_status TEXT,
    broadcast_type TEXT,
    labels TEXT,
    created TEXT,
    modified TEXT,
    received_at TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_delivery_id ON events(delivery_id);
CREATE INDEX IF NOT EXISTS events_event_type ON events(event_type);
CREATE INDEX IF NOT EXISTS events_received_at ON events(received_at);
CREATE INDEX IF NOT EXISTS events_broadcast_id ON events(broadcast_id);
CREATE INDEX IF NOT EXISTS events_from_number ON events(from_number);
CREATE INDEX IF NOT EXISTS events_to_number ON events(to_number);
CREATE INDEX IF NOT EXISTS events_final_result ON events(final_result);
CREATE INDEX IF NOT EXISTS events_resource ON events(resource_type, resource_id);

CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    record_id INTEGER,
    result TEXT,
    finish_time TEXT,
    billed_amount REAL,
    duration INTEGER,
    originate_time TEXT,
    answer_time TEXT,
    message TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_event_id ON attempts(event_id);
CREATE INDEX IF NOT EXISTS attempts_result ON attempts(result);

CREATE VIEW IF NOT EXISTS texts AS
SELECT id, delivery_id, event_type, event_type_source, resource_id AS text_id, subscription_id,
       account_id, from_number, to_number, inbound, state, final_result, message, billed_amount,
       batch_id, broadcast_id, contact_id, labels, created, modified, received_at
FROM events
WHERE event_type IN ('OUTBOUND_TEXT_FINISHED', 'INBOUND_TEXT_FINISHED');

CREATE VIEW IF NOT EXISTS calls AS
SELECT id, delivery_id, event_type, event_type_source, resource_id AS call_id, subscription_id,
       account_id, from_number, to_number, inbound, state, final_result, billed_amount, duration,
       batch_id, broadcast_id, contact_id, labels, created, modified, received_at
FROM events
WHERE event_type IN ('OUTBOUND_CALL_FINISHED', 'INBOUND_CALL_FINISHED');

CREATE VIEW IF NOT EXISTS campaigns AS
SELECT id, delivery_id, event_type, event_type_source, resource_type,
       COALESCE(broadcast_id, resource_id) AS broadcast_id, subscription_id, account_id,
       broadcast_name, broadcast_status, broadcast_type, labels, created, modified, received_at
FROM events
WHERE event_type IN ('CAMPAIGN_STARTED', 'CAMPAIGN_STOPPED', 'CAMPAIGN_FINISHED');

CREATE TABLE IF NOT EXISTS imap_checkpoints (
    account TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (account, folder)
);
"""

EVENT_TIME = "COALESCE(modified, created, received_at)"
"""When an event happened: CallFire's last-modified time, else its creation time, else when stored.

Stats filter and group on exactly this expression so the `events_occurred_at` index serves them.
"""

# Analysts' additions: full-text search over message bodies, attempts with their event, and
# indexes for the filters stats and Datasette facets use.
_V2_ANALYSIS = """
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(
    message, content="events", content_rowid="id", tokenize="unicode61 remove_diacritics 2"
);
INSERT INTO events_fts(rowid, message) SELECT id, message FROM events WHERE message IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS events_fts_insert AFTER INSERT ON events WHEN new.message IS NOT NULL BEGIN
    INSERT INTO events_fts(rowid, message) VALUES (new.id, new.message);
END;
CREATE TRIGGER IF NOT EXISTS events_fts_delete AFTER DELETE ON events WHEN old.message IS NOT NULL BEGIN
    INSERT INTO events_fts(events_fts, rowid, message) VALUES ('delete', old.id, old.message);
END;
CREATE TRIGGER IF NOT EXISTS events_fts_update AFTER UPDATE OF message ON events BEGIN
    INSERT INTO events_fts(events_fts, rowid, message)
        SELECT 'delete', old.id, old.message WHERE old.message IS NOT NULL;
    INSERT INTO events_fts(rowid, message) SELECT new.id, new.message WHERE new.message IS NOT NULL;
END;

CREATE VIEW IF NOT EXISTS attempts_detail AS
SELECT a.id, a.event_id, e.event_type, e.resource_type, e.resource_id, e.broadcast_id, e.batch_id,
       e.contact_id, e.from_number, e.to_number, e.inbound, e.final_result, a.record_id, a.result,
       a.finish_time, a.billed_amount, a.duration, a.originate_time, a.answer_time, a.message,
       e.received_at
FROM attempts AS a
JOIN events AS e ON e.id = a.event_id;

CREATE INDEX IF NOT EXISTS events_occurred_at ON events(COALESCE(modified, created, received_at));
CREATE INDEX IF NOT EXISTS events_type_result ON events(event_type, final_result);
CREATE INDEX IF NOT EXISTS events_broadcast_type ON events(broadcast_id, event_type, final_result);
CREATE INDEX IF NOT EXISTS attempts_finish_time ON attempts(finish_time);
"""

# Two indexes of version 1 are prefixes of version 2's composite ones, which serve the
# same queries; each costs every event insert (and the WAL) pages for nothing.
_V3_LEANER = """
DROP INDEX IF EXISTS events_event_type;
DROP INDEX IF EXISTS events_broadcast_id;
"""

FTS_TOKENIZER = "unicode61 remove_diacritics 2 categories 'L* N* Co So Sk'"
"""Words are letters and digits (case and accents folded) and, so that 👍 can be searched, emoji."""

# Figures analysts can trust, and columns they ask for (issue 14). Statements marked with a
# `mailhook_*` function are filled by Python functions `migrate` registers (phonenumbers, email dates).
_V4_ANALYSTS = f"""
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

# The figures of a large batch settled in one set-based pass at its end, not row by row (issue 15):
# the table `figures_deferred` and the two insert triggers made to skip their work while it has a row.
_V5_DEFERRABLE = figure_triggers.DEFERRAL

# Fewer pages per message (issue 15): every index is a page of the WAL per event, written on
# commit and again at the checkpoint. The raw-number indexes (the E.164 ones find the same
# numbers), final_result alone (no query of mailhook's filters on it without the event type,
# which (event_type, final_result) serves), and the reply-attribution indexes over every event
# where only outbound texts (to, from) and inbound texts (from, to) are ever looked up.
_V6_FEWER_PAGES = """
DROP INDEX IF EXISTS events_from_number;
DROP INDEX IF EXISTS events_to_number;
DROP INDEX IF EXISTS events_final_result;
DROP INDEX IF EXISTS events_text_to;
DROP INDEX IF EXISTS events_text_from;
CREATE INDEX IF NOT EXISTS events_text_to ON events(to_e164, from_e164, event_time)
    WHERE event_type = 'OUTBOUND_TEXT_FINISHED';
CREATE INDEX IF NOT EXISTS events_text_from ON events(from_e164, to_e164, event_time)
    WHERE event_type = 'INBOUND_TEXT_FINISHED';
"""

# A campaign's latest name, labels and status found by an index (issue 15): the lookup walked every
# campaign event of the database, per campaign event stored, so the cost per message grew with the
# database. The triggers that make that lookup are made again with the indexed form; the insert
# triggers as schema 5 left them (`figure_triggers.DEFERRAL` drops and makes them).
_V7_CAMPAIGN_INDEX = (figures.CAMPAIGN_INDEX + "DROP TRIGGER IF EXISTS events_figures_delete;\n"
                      + figure_triggers.TRIGGERS + figure_triggers.DEFERRAL)

# Less CPU per event stored row by row (store-cut3): the figures triggers test "is a campaign event"
# by comparisons, not by an IN list of three, which SQLite built as a temporary table each time a
# trigger ran (figures.is_campaign_event). The same figures; the four triggers made again.
_V8_NO_TEMPORARY_TABLES = ("DROP TRIGGER IF EXISTS events_figures_delete;\n"
                           "DROP TRIGGER IF EXISTS attempts_figures_delete;\n"
                           + figure_triggers.TRIGGERS + figure_triggers.DEFERRAL)

# Less CPU per event stored row by row (store-trigger): the insert trigger takes a campaign's name,
# labels and status from the event just stored, and finds a reply's text, by index seeks without the
# temporary B-trees that sorted and listed the candidates per event; `events_campaign` is made again
# over a range of event types, not an IN list that SQLite built as a temporary table per insert
# (figures.CAMPAIGN_INDEX_BY_RANGE). The same figures; the triggers that read the index made again.
_V9_NO_SORTS = (figures.CAMPAIGN_INDEX_BY_RANGE + "DROP TRIGGER IF EXISTS events_figures_delete;\n"
                + figure_triggers.TRIGGERS + figure_triggers.DEFERRAL)

# Less CPU per event stored row by row (store7): the UPDATE by which a new outbound text takes older
# replies moved from the insert trigger into `events_figures_take_replies`, fired for outbound texts
# only, so that other events no longer open its temporary table (figure_triggers.TAKE_REPLIES_APART).
# The same figures.
_V10_TAKE_REPLIES_APART = figure_triggers.TAKE_REPLIES_APART

MIGRATIONS: tuple[str, ...] = (_V1, _V2_ANALYSIS, _V3_LEANER, _V4_ANALYSTS, _V5_DEFERRABLE, _V6_FEWER_PAGES,
                               _V7_CAMPAIGN_INDEX, _V8_NO_TEMPORARY_TABLES, _V9_NO_SORTS, _V10_TAKE_REPLIES_APART)
