"""The database schema as numbered migrations, applied in order on open.

Each entry is one SQL script; `PRAGMA user_version` records how many have
run. Append new migrations at the end, never edit a released one.
"""

from __future__ import annotations

from mailhook.store import figure_triggers, figures
from mailhook.store.analysts import FTS_TOKENIZER as FTS_TOKENIZER
from mailhook.store.analysts import V4_ANALYSTS
from mailhook.store.tables import EVENT_TIME as EVENT_TIME
from mailhook.store.tables import V1, V2_ANALYSIS, V3_LEANER

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

# Less CPU per outbound text stored row by row (store9): that trigger does its work only when a reply
# waits to be taken, found by one index seek in its WHEN (figure_triggers.TAKE_REPLIES_WHEN_FOUND).
# The same figures.
_V11_TAKE_REPLIES_WHEN_FOUND = figure_triggers.TAKE_REPLIES_WHEN_FOUND

MIGRATIONS: tuple[str, ...] = (V1, V2_ANALYSIS, V3_LEANER, V4_ANALYSTS, _V5_DEFERRABLE, _V6_FEWER_PAGES,
                               _V7_CAMPAIGN_INDEX, _V8_NO_TEMPORARY_TABLES, _V9_NO_SORTS, _V10_TAKE_REPLIES_APART,
                               _V11_TAKE_REPLIES_WHEN_FOUND)
