"""Schema versions 1 to 3: deliveries, events and attempts, their views, and the first full-text index.

Released migrations: never edited, only followed by new ones (`store.schema.MIGRATIONS`).
"""

from __future__ import annotations

V1 = """
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
V2_ANALYSIS = """
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
V3_LEANER = """
DROP INDEX IF EXISTS events_event_type;
DROP INDEX IF EXISTS events_broadcast_id;
"""
