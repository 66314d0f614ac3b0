"""The store: migrations, group commit, both dedupe layers, quarantine and checkpoints."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from mailhook.errors import RetryLater
from mailhook.models import Attempt, Delivery, Event, Extraction, FolderPosition
from mailhook.store.connection import migrate, open_readonly
from mailhook.store.rows import PAYLOAD_RATIO, Completion, worker_rows
from mailhook.store.schema import MIGRATIONS
from mailhook.store.write import Store
from mailhook.store.writer import Writer


def text_event(resource_id: int = 11111111111, **changes: object) -> Event:
    fields: dict[str, object] = {
        "event_type": "OUTBOUND_TEXT_FINISHED",
        "event_type_source": "inferred",
        "api_version": "1.1",
        "format": "xml",
        "resource_type": "Text",
        "resource_id": resource_id,
        "billed_amount": Decimal("0.03"),
        "message": "Hello, CallFire!",
        "attempts": (Attempt(record_id=7, result="SENT", billed_amount=Decimal("0.03")),),
        "payload": {"Text": {"@id": str(resource_id)}},
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def email(message_id: str = "<n1@callfire.test>", body: bytes = b"hello") -> Delivery:
    return Delivery(
        channel="smtp",
        raw=b"Message-ID: " + message_id.encode() + b"\r\n\r\n" + body,
        received_at="2026-01-01T00:00:00Z",
    )


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mailhook.db"


@pytest.fixture
def writer(db: Path):  # type: ignore[no-untyped-def]
    w = Writer(db, busy_timeout=0.2)
    yield w
    w.close()


def test_migrations_are_safe_to_run_twice(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    assert migrate(conn) == len(MIGRATIONS)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert {"deliveries", "events", "attempts", "texts", "calls", "campaigns"} <= names


def test_database_is_in_wal_mode_with_full_sync(db: Path, writer: Writer) -> None:
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert writer.store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_new_database_is_made_with_the_chosen_page_size(db: Path) -> None:
    from mailhook.store.connection import PAGE_SIZE

    store = Store(db)
    try:
        store.write([(email(), Extraction(message_id="<n1@callfire.test>", events=(text_event(),)))])
        assert store.conn.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,)
    finally:
        store.close()
    assert rows(db, "PRAGMA page_size") == [(PAGE_SIZE,)]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize("made_with", [4096, 1024, 8192])
def test_an_existing_database_keeps_its_page_size_and_is_written_as_before(
    db: Path, made_with: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store import connection

    monkeypatch.setattr(connection, "PAGE_SIZE", made_with)  # as an older mailhook made it
    store = Store(db)
    store.write([(email("<a@t>"), Extraction(message_id="<a@t>", events=(text_event(1),)))])
    store.close()
    monkeypatch.undo()
    store = Store(db)
    try:
        receipts = store.write([(email("<b@t>"), Extraction(message_id="<b@t>", events=(text_event(2),)))])
        assert [(r.status, r.events) for r in receipts] == [("stored", 1)]  # type: ignore[union-attr]
    finally:
        store.close()
    assert rows(db, "PRAGMA page_size") == [(made_with,)]
    assert rows(db, "SELECT resource_id FROM events ORDER BY id") == [(1,), (2,)]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


def test_a_database_left_empty_by_a_crash_is_made_new_with_the_chosen_page_size(db: Path) -> None:
    from mailhook.store.connection import PAGE_SIZE

    db.touch()  # created, then killed before SQLite wrote its header
    Store(db).close()
    assert rows(db, "PRAGMA page_size") == [(PAGE_SIZE,)]


def test_delivery_and_events_are_stored_with_exact_values(db: Path, writer: Writer) -> None:
    big = 2**63 - 25
    receipt = writer.submit(email(), Extraction(events=(text_event(big),), message_id="<n1@callfire.test>")).result()
    assert (receipt.status, receipt.events, receipt.duplicates) == ("stored", 1, 0)
    assert rows(db, "SELECT resource_id, billed_amount, message FROM events") == [(big, 0.03, "Hello, CallFire!")]
    assert rows(db, "SELECT record_id, result FROM attempts") == [(7, "SENT")]
    raw, size, status = rows(db, "SELECT raw, size, status FROM deliveries")[0]
    assert raw == email().raw and size == len(email().raw) and status == "stored"


def test_same_event_in_a_second_delivery_adds_no_row(db: Path, writer: Writer) -> None:
    writer.submit(email("<a@x>"), Extraction(events=(text_event(),), message_id="<a@x>")).result()
    second = writer.submit(
        # (a document its event could come from: payloads are bounded by the bytes received)
        Delivery(channel="http", raw=b'<TextNotification><Text id="11111111111"/></TextNotification>',
                 received_at="x", kind="document"),
        Extraction(events=(text_event(),)),
    ).result()
    assert (second.status, second.events, second.duplicates) == ("duplicate", 0, 1)
    assert rows(db, "SELECT count(*) FROM events") == [(1,)]
    assert rows(db, "SELECT count(*) FROM attempts") == [(1,)]


def test_repeated_message_id_is_a_duplicate_and_identical_bytes_are_not_kept_twice(
    db: Path, writer: Writer
) -> None:
    extraction = Extraction(events=(text_event(),), message_id="<a@x>")
    writer.submit(email("<a@x>"), extraction).result()
    again = writer.submit(email("<a@x>"), extraction).result()
    changed = writer.submit(email("<a@x>", b"other bytes"), extraction).result()
    assert again.status == changed.status == "duplicate"
    assert rows(db, "SELECT status, raw IS NULL FROM deliveries ORDER BY id") == [
        ("stored", 0),
        ("duplicate", 1),
        ("duplicate", 0),
    ]


def test_a_redelivery_keeps_its_bytes_unless_the_first_delivery_of_its_message_id_has_the_same(db: Path) -> None:
    # The first delivery (lowest id) of a Message-ID is the one compared, whether the others came in
    # earlier commits or earlier in the same batch; a delivery with events asks inside its INSERT,
    # one without (or quarantined) by `_seen`: both give the same answer.
    extraction = Extraction(events=(text_event(),), message_id="<a@x>")
    store = Store(db)
    try:
        store.write([(email("<a@x>", b"first"), extraction)])
        store.write([(email("<a@x>", b"second"), extraction)])
        store.write([(email("<a@x>", b"second"), extraction), (email("<a@x>", b"first"), extraction),
                     (email("<b@x>", b"third"), Extraction(events=(text_event(2),), message_id="<b@x>")),
                     (email("<b@x>", b"third"), Extraction(events=(text_event(3),), message_id="<b@x>")),
                     (email("<b@x>", b"third"), Extraction(message_id="<b@x>")),
                     (email("<b@x>", b"third"), Extraction(reason="unreadable", message_id="<b@x>")),
                     (email("<c@x>", b"fourth"), Extraction(message_id="<c@x>"))])
    finally:
        store.close()
    assert rows(db, "SELECT message_id, status, raw FROM deliveries ORDER BY id") == [
        ("<a@x>", "stored", email("<a@x>", b"first").raw),
        ("<a@x>", "duplicate", email("<a@x>", b"second").raw),
        ("<a@x>", "duplicate", email("<a@x>", b"second").raw),  # the first one has other bytes
        ("<a@x>", "duplicate", None),
        ("<b@x>", "stored", email("<b@x>", b"third").raw),
        ("<b@x>", "stored", None),  # a new event: stored, its bytes kept once
        ("<b@x>", "duplicate", None),
        ("<b@x>", "duplicate", None),
        ("<c@x>", "stored", email("<c@x>", b"fourth").raw),
    ]


def test_a_delivery_with_events_looks_up_its_message_id_inside_its_insert(db: Path) -> None:
    store = Store(db)
    executed: list[str] = []
    try:
        store.conn.set_trace_callback(executed.append)
        store.write([(email(f"<{n}@t>"), Extraction(message_id=f"<{n}@t>", events=(text_event(n),))) for n in range(4)])
        store.write([(email("<none@t>"), Extraction(message_id="<none@t>"))])
        store.conn.set_trace_callback(None)
    finally:
        store.close()
    lookups = [sql for sql in executed if sql.startswith("SELECT sha256 FROM deliveries")]
    assert len(lookups) == 1 and "<none@t>" in lookups[0]  # only the delivery without events asks apart
    assert len([sql for sql in executed if sql.lstrip().startswith("INSERT INTO deliveries")]) == 5


def test_unreadable_delivery_is_quarantined_with_its_raw_bytes_and_reason(db: Path, writer: Writer) -> None:
    receipt = writer.submit(email(), Extraction(reason="no CallFire notification found")).result()
    assert receipt.status == "quarantined"
    assert rows(db, "SELECT status, error, raw FROM deliveries") == [
        ("quarantined", "no CallFire notification found", email().raw)
    ]


def test_campaign_events_recur_per_modification(db: Path, writer: Writer) -> None:
    def campaign(modified: str) -> Event:
        return Event(
            event_type="CAMPAIGN_STARTED", event_type_source="config", api_version="1.1", format="json",
            resource_type="Broadcast", resource_id=5, modified=modified,
        )

    for modified in ("2016-06-29T18:57:51Z", "2016-06-30T08:00:00Z", "2016-06-29T18:57:51Z"):
        writer.submit(email(f"<{modified}@x>"), Extraction(events=(campaign(modified),))).result()
    assert rows(db, "SELECT count(*) FROM events") == [(2,)]


def test_locked_database_answers_retry_later_and_recovers(db: Path, writer: Writer) -> None:
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RetryLater, match="storage unavailable"):
            writer.submit(email(), Extraction(events=(text_event(),))).result()
        with pytest.raises(RetryLater):
            writer.check().result()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert writer.submit(email(), Extraction(events=(text_event(),))).result().status == "stored"
    assert rows(db, "SELECT count(*) FROM deliveries") == [(1,)]


def test_deliveries_queued_during_a_commit_are_committed_together(db: Path) -> None:
    batches: list[int] = []
    writer = Writer(db, busy_timeout=5, observer=lambda size, _: batches.append(size))
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's first commit waits on this lock
    futures = [writer.submit(email(f"<{i}@x>"), Extraction(events=(text_event(i),))) for i in range(1, 41)]
    threading.Timer(0.3, lambda: (blocker.execute("ROLLBACK"), blocker.close())).start()
    receipts = [f.result() for f in futures]
    writer.close()
    assert [r.status for r in receipts] == ["stored"] * 40
    assert sum(batches) == 40
    assert max(batches) > 1


def test_close_commits_everything_already_submitted(db: Path) -> None:
    writer = Writer(db)
    futures = [writer.submit(email(f"<{i}@x>"), Extraction(events=(text_event(i),))) for i in range(1, 101)]
    writer.close()
    assert all(f.done() and f.result().status == "stored" for f in futures)
    assert rows(db, "SELECT count(*) FROM events") == [(100,)]


def test_submit_after_close_answers_retry_later(db: Path) -> None:
    writer = Writer(db)
    writer.close()
    with pytest.raises(RetryLater, match="shutting down"):
        writer.submit(email(), Extraction(events=(text_event(),))).result()


def test_imap_checkpoint_is_advanced_with_the_delivery(db: Path, writer: Writer) -> None:
    for uid in (3, 9, 5):
        delivery = Delivery(
            channel="imap", raw=email(f"<{uid}@x>").raw, received_at="x",
            position=FolderPosition("me@example.com", "INBOX", 77, uid),
        )
        writer.submit(delivery, Extraction(events=(text_event(uid),))).result()
    assert writer.store.position("me@example.com", "INBOX") == FolderPosition("me@example.com", "INBOX", 77, 9)
    changed = Delivery(
        channel="imap", raw=b"x", received_at="x", position=FolderPosition("me@example.com", "INBOX", 78, 1)
    )
    writer.submit(changed, Extraction(reason="unreadable")).result()
    assert writer.store.position("me@example.com", "INBOX") == FolderPosition("me@example.com", "INBOX", 78, 1)


def test_reextract_turns_a_quarantined_delivery_into_stored_once(db: Path, writer: Writer) -> None:
    receipt = writer.submit(email(), Extraction(reason="unknown shape")).result()
    stored = list(writer.store.stored_deliveries(quarantined_only=True))
    assert [s.id for s in stored] == [receipt.delivery_id] and stored[0].kind == "email"
    first = writer.store.reextract(receipt.delivery_id, Extraction(events=(text_event(),)))
    second = writer.store.reextract(receipt.delivery_id, Extraction(events=(text_event(),)))
    assert (first.status, first.events) == ("stored", 1)
    assert (second.status, second.events, second.duplicates) == ("stored", 0, 1)
    assert rows(db, "SELECT status, error FROM deliveries") == [("stored", None)]
    assert list(writer.store.stored_deliveries(quarantined_only=True)) == []


def test_readonly_connection_reads_but_cannot_write(db: Path, writer: Writer) -> None:
    writer.submit(email(), Extraction(events=(text_event(),))).result()
    ro = open_readonly(db)
    assert ro.execute("SELECT count(*) FROM events").fetchone() == (1,)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("DELETE FROM events")
    ro.conn.close()


def test_a_waiter_that_gives_up_does_not_stop_the_writer(db: Path) -> None:
    writer = Writer(db, busy_timeout=60)
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # keep the first commit waiting so the next future is still queued
    first = writer.submit(email("<1@x>"), Extraction(events=(text_event(1),)))
    # Only once the writer has taken the first into its commit (blocked on the lock) is the next one sure to
    # wait in the queue: submitted before that, both could be taken into one batch, and claimed.
    deadline = time.monotonic() + 60
    while not first.running():
        assert time.monotonic() < deadline, "the writer never took the first delivery"
        time.sleep(0.001)
    abandoned = writer.submit(email("<2@x>"), Extraction(events=(text_event(2),)))
    assert abandoned.cancel()
    blocker.execute("ROLLBACK")
    blocker.close()
    assert first.result().status == "stored"
    assert writer.submit(email("<3@x>"), Extraction(events=(text_event(3),))).result().status == "stored"
    writer.close()
    # The abandoned delivery is stored all the same: its sender will retry and be deduplicated.
    assert rows(db, "SELECT count(*) FROM events") == [(3,)]


def test_pending_delivery_gets_its_events_message_id_and_status_when_completed(db: Path, writer: Writer) -> None:
    pending = writer.submit(email("<p@x>"), None).result()
    assert pending.status == "pending"
    assert rows(db, "SELECT status, message_id, raw IS NULL FROM deliveries") == [("pending", None, 0)]
    extraction = Extraction(events=(text_event(),), message_id="<p@x>", subject="hi")
    done = writer.complete(Completion(pending.delivery_id, email("<p@x>").sha256, extraction)).result()
    assert (done.status, done.events, done.message_id) == ("stored", 1, "<p@x>")
    assert rows(db, "SELECT status, message_id, subject, event_count, raw IS NULL FROM deliveries") == [
        ("stored", "<p@x>", "hi", 1, 0)
    ]
    # Completed twice (the backlog racing `mailhook reprocess`): the second adds nothing and says so.
    again = writer.complete(Completion(pending.delivery_id, email("<p@x>").sha256, extraction)).result()
    assert (again.status, again.events, again.message_id) == ("stored", 0, "<p@x>")
    assert rows(db, "SELECT count(*) FROM events") == [(1,)]


def test_completed_redelivery_of_the_same_bytes_keeps_no_second_copy(db: Path, writer: Writer) -> None:
    extraction = Extraction(events=(text_event(),), message_id="<r@x>")
    writer.submit(email("<r@x>"), extraction).result()
    pending = writer.submit(email("<r@x>"), None).result()
    done = writer.complete(Completion(pending.delivery_id, email("<r@x>").sha256, extraction)).result()
    assert done.status == "duplicate"
    assert rows(db, "SELECT status, raw IS NULL FROM deliveries ORDER BY id") == [("stored", 0), ("duplicate", 1)]


def test_completion_whose_events_cannot_be_stored_quarantines_the_acknowledged_delivery(
    db: Path, writer: Writer
) -> None:
    pending = writer.submit(email(), None).result()
    # A value SQLite cannot hold: the events fail, the delivery (already acknowledged) is kept.
    extraction = Extraction(events=(text_event(resource_id=2**70),))
    done = writer.complete(Completion(pending.delivery_id, email().sha256, extraction)).result()
    assert done.status == "quarantined" and done.error and "events could not be stored" in done.error
    assert rows(db, "SELECT status, raw IS NOT NULL FROM deliveries") == [("quarantined", 1)]
    assert rows(db, "SELECT count(*) FROM events") == [(0,)]


def _amplified(size: int) -> Extraction:
    """An extraction whose payloads take just over PAYLOAD_RATIO x `size` bytes."""
    return Extraction(events=(text_event(payload={"x": "y" * (PAYLOAD_RATIO * size)}),))


def test_payloads_up_to_the_ratio_are_stored(db: Path, writer: Writer) -> None:
    delivery = email()
    event = text_event(payload={"x": "y" * (PAYLOAD_RATIO * len(delivery.raw) - len('{"x":""}') - 2)})
    assert writer.submit(delivery, Extraction(events=(event,))).result().status == "stored"


def test_payloads_beyond_the_ratio_quarantine_the_delivery_with_the_reason(db: Path, writer: Writer) -> None:
    delivery = email()
    receipt = writer.submit(delivery, _amplified(len(delivery.raw))).result()
    assert receipt.status == "quarantined"
    assert receipt.error and f"exceed {PAYLOAD_RATIO}x the {len(delivery.raw)} bytes received" in receipt.error
    assert rows(db, "SELECT status, raw IS NOT NULL FROM deliveries") == [("quarantined", 1)]
    assert rows(db, "SELECT count(*) FROM events") == [(0,)]


def test_payloads_beyond_the_ratio_quarantine_a_pending_delivery_when_completed(db: Path, writer: Writer) -> None:
    pending = writer.submit(email(), None).result()
    extraction = _amplified(len(email().raw))
    for found in (extraction, worker_rows(extraction, len(email().raw))):
        done = writer.complete(Completion(pending.delivery_id, email().sha256, found)).result()
        assert done.status == "quarantined" and done.error and "events not stored" in done.error
    assert rows(db, "SELECT count(*) FROM events") == [(0,)]


def test_reextract_keeps_the_payload_bound(db: Path, writer: Writer) -> None:
    delivery = email()
    receipt = writer.submit(delivery, Extraction(reason="unknown shape")).result()
    again = writer.store.reextract(receipt.delivery_id, _amplified(len(delivery.raw)), len(delivery.raw))
    assert again.status == "quarantined" and again.error and "events not stored" in again.error
    assert rows(db, "SELECT count(*) FROM events") == [(0,)]


def test_statistics_are_refreshed_once_per_doubling_of_the_events(tmp_path: Path) -> None:
    from analysis_support import event, store_events

    path = tmp_path / "m.db"
    texts = [event("OUTBOUND_TEXT_FINISHED", 100 + n, modified="2024-03-01T10:00:00Z") for n in range(1200)]
    # 50 replies fill the partial index on reply_to: its statistics count 50 rows, not 1,250.
    replies = [event("INBOUND_TEXT_FINISHED", 9000 + n, from_number=f"1213555{100 + n:04d}", to_number="67076",
                     modified="2024-03-01T11:00:00Z") for n in range(50)]
    store_events(path, texts + replies)
    assert query_one(path, "SELECT count(*) FROM events WHERE reply_to IS NOT NULL") == 50
    store = Store(path)
    try:
        # Just analyzed at close: not again (a partial index's smaller count must not fool it) ...
        assert store.analyze_if_grown() is False
    finally:
        store.close()
    store_events(path, [event("OUTBOUND_TEXT_FINISHED", 5000 + n) for n in range(1300)])
    store = Store(path)
    try:
        assert store.analyze_if_grown() is False  # ... and the close after 2,500 events (> 2 x 1,200) did it
    finally:
        store.close()


def query_one(path: Path, sql: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchone()[0]


def _batch_with_failures() -> list[tuple[Delivery, Extraction | None]]:
    """Good items around one SQLite cannot store (an integer past 64 bits) and one with a lone surrogate."""
    return [
        (email("<a@t>"), Extraction(message_id="<a@t>", events=(text_event(1),))),
        (email("<b@t>"), Extraction(message_id="<b@t>", events=(text_event(2, duration=2**70),))),
        (email("<c@t>"), Extraction(message_id="<c@t>", events=(text_event(3, message="bad \udc80 byte"),))),
        (email("<a@t>"), Extraction(message_id="<a@t>", events=(text_event(1),))),  # a duplicate of the first
        (email("<d@t>"), None),  # stored pending
        (email("<e@t>"), Extraction(message_id="<e@t>", events=(text_event(5),))),
    ]


_STORED = ("SELECT d.id, d.status, d.error, d.message_id, d.event_count, d.duplicate_count, e.resource_id, e.message"
           " FROM deliveries AS d LEFT JOIN events AS e ON e.delivery_id = d.id ORDER BY d.id")


def test_a_batch_with_failing_items_stores_what_each_item_written_alone_would(tmp_path: Path) -> None:
    together, alone = Store(tmp_path / "together.db"), Store(tmp_path / "alone.db")
    try:
        results = together.write(_batch_with_failures())
        one_by_one = [alone.write([item])[0] for item in _batch_with_failures()]
    finally:
        together.close()
        alone.close()
    assert [type(r).__name__ for r in results] == [type(r).__name__ for r in one_by_one] == [
        "Receipt", "OverflowError", "Receipt", "Receipt", "Receipt", "Receipt"]
    assert [getattr(r, "status", None) for r in results] == ["stored", None, "stored", "duplicate", "pending", "stored"]
    assert rows(tmp_path / "together.db", _STORED) == rows(tmp_path / "alone.db", _STORED)
    assert ("bad \ufffd byte",) in rows(tmp_path / "together.db", "SELECT message FROM events")


def test_a_batch_no_item_of_which_fails_takes_no_savepoint(db: Path) -> None:
    store = Store(db)
    executed: list[str] = []
    try:
        store.conn.set_trace_callback(executed.append)
        results = store.write([(email(f"<{n}@t>"), Extraction(message_id=f"<{n}@t>", events=(text_event(n),)))
                               for n in range(6)])
        store.conn.set_trace_callback(None)
    finally:
        store.close()
    assert [getattr(r, "status", None) for r in results] == ["stored"] * 6
    assert [sql for sql in executed if sql.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))] == []


def test_a_batch_with_a_failing_item_is_undone_and_written_again_item_by_item(db: Path) -> None:
    store = Store(db)
    executed: list[str] = []
    try:
        store.conn.set_trace_callback(executed.append)
        results = store.write(_batch_with_failures())
        store.conn.set_trace_callback(None)
    finally:
        store.close()
    assert [type(r).__name__ for r in results] == [
        "Receipt", "OverflowError", "Receipt", "Receipt", "Receipt", "Receipt"]
    # The first attempt at the batch went in one transaction, rolled back at the failing item; the items
    # then went in a second one, each in its own savepoint (the surrogate's written again, mended).
    transactions = [sql for sql in executed if sql.startswith(("BEGIN", "ROLLBACK", "COMMIT", "SAVEPOINT"))]
    assert transactions[:3] == ["BEGIN IMMEDIATE", "ROLLBACK", "BEGIN IMMEDIATE"]
    assert transactions[-1] == "COMMIT"
    assert transactions.count("SAVEPOINT item") == 6
    assert rows(db, "SELECT count(*) FROM deliveries") == [(5,)]


def _mixed_batch() -> list[tuple[Delivery, Extraction | None]]:
    """Forty deliveries: several events each, attempts, replies, campaigns, duplicates within and across them."""
    from analysis_support import IN_TEXT, OUT_CALL, OUT_TEXT, event

    items: list[tuple[Delivery, Extraction | None]] = []
    for n in range(40):
        when = f"2026-03-0{1 + n % 3}T10:{n:02d}:00Z"
        events = [event(OUT_TEXT, 500 + n, result="SENT", modified=when, broadcast=7 + n % 2, message=f"offer {n}",
                        attempts=("SENT",)),
                  event(OUT_CALL, 900 + n % 25, result="LA", modified=when, duration=n, billed="0.5",
                        attempts=("LA", "XFER_LEG"))]  # the same call again from n = 25 on: a duplicate
        if n % 5 == 0:  # a reply to the text above (from its recipient, to its sender)
            events.append(event(IN_TEXT, 7000 + n, modified=f"2026-03-0{1 + n % 3}T11:{n:02d}:00Z",
                                from_number=f"1213555{(500 + n) % 10000:04d}", to_number="67076", message="yes 👍"))
        if n % 7 == 0:
            events.append(events[0])  # the same event twice in one delivery
        message_id = f"<m{n % 33}@t>"  # a Message-ID seen again from n = 33 on
        body = f"notification {n} ".encode() * 20  # payloads stay within PAYLOAD_RATIO of it
        items.append((email(message_id, body), Extraction(message_id=message_id, events=tuple(events))))
    items[11] = (email("<pending@t>"), None)
    items[12] = (email("<none@t>"), Extraction(message_id="<none@t>"))
    return items


_COMPARED = {
    "deliveries": "id, status, error, message_id, event_count, duplicate_count, raw IS NULL",
    "events": "id, delivery_id, dedupe_key, event_type, resource_id, event_time, reply_to, message",
    "attempts": "id, event_id, record_id, result",
    "event_totals": "day, campaign_id, event_type, final_result, events, tries, duration, billed_amount",
    "campaigns": "id, first_seen, last_seen, events, calls, texts, tries, replies, replied_texts",
}


def test_a_batch_stores_the_rows_ids_and_figures_of_its_items_written_one_by_one(tmp_path: Path) -> None:
    together, alone = Store(tmp_path / "together.db"), Store(tmp_path / "alone.db")
    try:
        batched = together.write(_mixed_batch())
        one_by_one = [alone.write([item])[0] for item in _mixed_batch()]
    finally:
        together.close()
        alone.close()
    assert batched == one_by_one
    assert sum(r.duplicates for r in batched if not isinstance(r, Exception)) == 19  # within and across deliveries
    for table, columns in _COMPARED.items():
        sql = f"SELECT {columns} FROM {table} ORDER BY 1, 2, 3, 4"
        assert rows(tmp_path / "together.db", sql) == rows(tmp_path / "alone.db", sql), table
    search = "SELECT rowid FROM events_fts WHERE events_fts MATCH ? ORDER BY rowid"
    for words in ("offer", "yes", "👍", "offer 17"):
        with sqlite3.connect(tmp_path / "together.db") as a, sqlite3.connect(tmp_path / "alone.db") as b:
            assert a.execute(search, (words,)).fetchall() == b.execute(search, (words,)).fetchall() != []


def test_a_batchs_events_make_one_full_text_segment_not_one_per_event(db: Path) -> None:
    store = Store(db)
    executed: list[str] = []
    try:
        store.conn.set_trace_callback(executed.append)
        store.write([(email(f"<{n}@t>"), Extraction(message_id=f"<{n}@t>", events=(
            text_event(n, message=f"first {n}"), text_event(100 + n, message=f"second {n}")))) for n in range(12)])
        store.conn.set_trace_callback(None)
    finally:
        store.close()
    # FTS5 writes a segment (with its row in events_fts_idx) whenever a statement that added text ends:
    # 24 events, 16 then 8 a statement (main wrote 25).
    assert len([sql for sql in executed if "INSERT INTO 'main'.'events_fts_idx'" in sql]) == 2


def _write_texts(store: Store, count: int, executed: list[str] | None = None) -> list[str]:
    """Write `count` text events (two attempts each) in one batch; return the full-text segments it wrote.

    Every statement it runs is appended to `executed`, if given.
    """
    executed = [] if executed is None else executed
    store.conn.set_trace_callback(executed.append)
    store.write([(email(f"<{n}@t>"), Extraction(message_id=f"<{n}@t>", events=(text_event(
        n, message=f"word{n} shared", attempts=(Attempt(record_id=n, result="SENT"), Attempt(record_id=n))),)))
        for n in range(count)])
    store.conn.set_trace_callback(None)
    return [sql for sql in executed if "INSERT INTO 'main'.'events_fts_idx'" in sql]


@pytest.mark.parametrize(("count", "segments"), [(15, 1), (16, 1), (63, 4), (64, 1), (65, 2), (150, 4)])
def test_a_large_batchs_events_go_in_statements_of_64_then_16_rows_one_full_text_segment_each(
        db: Path, count: int, segments: int) -> None:
    store = Store(db)
    try:
        assert len(_write_texts(store, count)) == segments  # 63: 16 + 16 + 16 + 15; 150: 64 + 64 + 16 + 6
    finally:
        store.close()
    assert rows(db, "SELECT count(*), min(id), max(id), count(DISTINCT resource_id) FROM events") == [
        (count, 1, count, count)]
    assert rows(db, "SELECT count(*), count(DISTINCT event_id) FROM attempts") == [(2 * count, count)]
    assert rows(db, "SELECT count(*) FROM events_fts WHERE events_fts MATCH 'shared'") == [(count,)]
    assert rows(db, f"SELECT rowid FROM events_fts WHERE events_fts MATCH 'word{count - 1}'") == [(count,)]


@pytest.mark.parametrize(("limit", "segments"), [(64 * 34 - 1, 10), (64 * 34, 4)])
def test_a_sqlite_allowing_fewer_parameters_than_64_events_take_gets_statements_of_16(
        db: Path, limit: int, segments: int) -> None:
    store = Store(db)
    try:
        store.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        assert len(_write_texts(store, 150)) == segments  # nine of 16 + 6, or 64 + 64 + 16 + 6
    finally:
        store.close()
    assert rows(db, "SELECT count(*), count(DISTINCT resource_id) FROM events") == [(150, 150)]
    assert rows(db, "SELECT count(*) FROM attempts") == [(300,)]


def _attempts_on_their_events(db: Path) -> list[tuple[object, ...]]:
    return rows(db, "SELECT count(*), sum(a.record_id = e.resource_id) FROM attempts AS a JOIN events AS e"
                    " ON e.id = a.event_id WHERE e.resource_id < 1000")


@pytest.mark.parametrize("count", [2, 4, 65])
def test_a_batchs_new_events_get_their_own_ids_without_returning_them(db: Path, count: int) -> None:
    store = Store(db)
    try:
        store.write([(email("<old@t>"), Extraction(message_id="<old@t>", events=(text_event(500),)))])
        executed: list[str] = []
        store.conn.set_trace_callback(executed.append)
        # Event 500 again, and each new event twice: the duplicates' rows are skipped, the new ones read back.
        receipts = store.write([(email(f"<d{n}@t>"), Extraction(message_id=f"<d{n}@t>", events=(
            text_event(n, attempts=(Attempt(record_id=n),)), text_event(n)))) for n in range(500, 500 + count)])
        _write_texts(store, count, executed)  # every event new: their ids from the count alone
    finally:
        store.close()
    assert [(r.events, r.duplicates) for r in receipts if not isinstance(r, Exception)] == (
        [(0, 2)] + [(1, 1)] * (count - 1))
    assert not [sql for sql in executed if "RETURNING" in sql]
    # Event 500's one attempt is record 7 (text_event's); every other attempt is its event's resource id.
    assert _attempts_on_their_events(db) == [(3 * count, 3 * count - 1)]
    assert rows(db, "SELECT max(id) FROM events") == [(2 * count,)]


def test_a_table_holding_the_largest_rowid_gets_its_events_ids_returned(db: Path) -> None:
    Store(db).close()
    with sqlite3.connect(db) as conn:  # a hand-made row: SQLite now picks new rowids at random
        conn.execute("INSERT INTO deliveries (id, channel, received_at, status, size, sha256)"
                     " VALUES (1, 'file', '2026-01-01T00:00:00Z', 'stored', 1, 'x')")
        conn.execute("INSERT INTO events (id, delivery_id, dedupe_key, event_type, event_type_source, api_version,"
                     " format, resource_id, received_at, event_time, payload) VALUES (9223372036854775807, 1, 'hand',"
                     " 'X', 'inferred', '1.1', 'json', 5000, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '{}')")
    store = Store(db)
    executed: list[str] = []
    try:
        _write_texts(store, 40, executed)
    finally:
        store.close()
    assert _attempts_on_their_events(db) == [(80, 80)]
    assert rows(db, "SELECT count(*) FROM events WHERE id > 1000000") == [(41,)]  # picked at random
    # Written together, their ids returned (ids guessed wrong would fail the attempts' foreign key).
    assert "SAVEPOINT item" not in executed and any("RETURNING" in sql for sql in executed)


def test_the_writers_journals_stay_in_memory_not_in_a_temporary_file_per_commit(db: Path) -> None:
    store = Store(db)
    try:
        assert store.conn.execute("PRAGMA temp_store").fetchone() == (2,)  # MEMORY
    finally:
        store.close()


@pytest.mark.parametrize(("made_with", "pages"), [(2048, 8000), (4096, 4000), (1024, 16000)])
def test_the_wal_is_checkpointed_every_16_mb_of_pages_whatever_their_size_and_stays_bounded(
    db: Path, made_with: int, pages: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhook.store import connection
    from mailhook.store.connection import WAL_SIZE_LIMIT
    from mailhook.store.write import CHECKPOINT_BYTES

    monkeypatch.setattr(connection, "PAGE_SIZE", made_with)  # 2048 as mailhook makes it, the others as older files
    store = Store(db)
    try:
        assert store.conn.execute("PRAGMA page_size").fetchone() == (made_with,)
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (pages,)
        assert pages * made_with == CHECKPOINT_BYTES == 16_384_000
        big = "x" * 3000  # about a page per delivery, with its indexes a few more
        for start in range(0, 6000, 100):
            store.write([(email(f"<{n}@t>", big.encode()), Extraction(message_id=f"<{n}@t>",
                                                                     events=(text_event(n),)))
                         for n in range(start, start + 100)])
        wal = Path(f"{db}-wal").stat().st_size
    finally:
        store.close()
    # More than a checkpoint's worth was written: the WAL was reset, not grown past its bound.
    assert (db.stat().st_size + wal) > CHECKPOINT_BYTES
    assert wal < min(WAL_SIZE_LIMIT, CHECKPOINT_BYTES * 1.5)


def _campaign_event(campaign: int, day: int, *, broadcast: bool) -> Event:
    return Event(
        event_type="CAMPAIGN_STARTED", event_type_source="inferred", api_version="1.1", format="json",
        resource_type="Broadcast", resource_id=campaign, broadcast_id=campaign if broadcast else None,
        broadcast_name=f"campaign {campaign}", broadcast_status="RUNNING",
        modified=f"2026-01-{day:02d}T10:00:00Z",
    )


def _vm_steps(conn: sqlite3.Connection, action: Callable[[], object]) -> int:
    """Return the SQLite virtual machine's steps (in hundreds) that `action` takes on `conn`: a count, not a time."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        action()
    finally:
        conn.set_progress_handler(None, 100)
    return steps


def test_storing_a_campaign_event_takes_the_same_work_however_many_other_campaigns_are_stored(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "campaigns.db")

    def items(first: int, count: int) -> list[tuple[Delivery, Extraction | None]]:
        return [(email(f"<c{n}@x>", f"campaign {n}".encode()),
                 Extraction(events=(_campaign_event(n, 1 + n % 28, broadcast=n % 2 == 0),)))
                for n in range(first, first + count)]

    try:
        store.write(items(1, 20))
        # One at a time (the row-by-row triggers) and in a batch (the set-based settling), both id forms.
        few = [_vm_steps(store.conn, functools.partial(store.write, items(n, count)))
               for n, count in ((100, 1), (101, 1), (110, 4))]
        for first in range(1_000, 4_000, 500):
            store.write(items(first, 500))
        many = [_vm_steps(store.conn, functools.partial(store.write, items(n, count)))
                for n, count in ((200, 1), (201, 1), (210, 4))]
        # 3,000 more campaigns' events: a lookup that walked them would take thousands of hundreds more.
        for before, after in zip(few, many, strict=True):
            assert after <= before * 1.3 + 5, (few, many)
        names = rows(tmp_path / "campaigns.db", "SELECT name, status FROM campaigns WHERE id IN (200, 201)")
        assert names == [("campaign 200", "RUNNING"), ("campaign 201", "RUNNING")]
    finally:
        store.close()


def test_deleting_a_campaigns_earliest_event_takes_the_same_work_however_many_other_events_are_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prune.db"
    store = Store(path)

    def calls(campaign: int, first: int, count: int) -> list[tuple[Delivery, Extraction | None]]:
        return [(email(f"<call{n}@x>", f"call {n}".encode()),
                 Extraction(events=(text_event(n, event_type="OUTBOUND_CALL_FINISHED", resource_type="Call",
                                               broadcast_id=campaign,
                                               modified=f"2026-02-{1 + n % 28:02d}T10:00:00Z"),)))
                for n in range(first, first + count)]

    def delete_earliest(campaign: int) -> int:
        (earliest,) = store.conn.execute("SELECT id FROM events WHERE broadcast_id = ? ORDER BY event_time, id "
                                         "LIMIT 1", (campaign,)).fetchone()
        return _vm_steps(store.conn, lambda: store.conn.execute("DELETE FROM events WHERE id = ?", (earliest,)))

    try:
        store.write(calls(7, 1, 10) + calls(8, 11, 10) + calls(9, 21, 20))
        few = delete_earliest(7)
        for first in range(1_000, 4_000, 500):
            store.write(calls(9, first, 500))
        many = delete_earliest(8)
        # 3,000 more events of another campaign: first_seen found again from campaign 8's own events.
        assert many <= few * 1.3 + 5, (few, many)
        assert store.conn.execute("SELECT first_seen, events FROM campaigns WHERE id = 8").fetchone() == (
            store.conn.execute("SELECT min(event_time), count(*) FROM events WHERE broadcast_id = 8").fetchone())
    finally:
        store.close()


def test_a_lone_event_is_inserted_without_returning_its_attempts_on_its_id_and_a_repeat_a_duplicate(db: Path) -> None:
    store = Store(db)
    executed: list[str] = []
    try:
        store.write([(email("<first@t>"), Extraction(message_id="<first@t>", events=(text_event(1),)))])
        store.conn.set_trace_callback(executed.append)
        # The triggers insert rows of their own (totals, campaign, full text) after the event's.
        again = store.write([(email("<again@t>"), Extraction(message_id="<again@t>", events=(
            text_event(1, broadcast_id=5),)))])
        new = store.write([(email("<new@t>"), Extraction(message_id="<new@t>", events=(
            text_event(2, broadcast_id=5, message="new words"),)))])
        store.conn.set_trace_callback(None)
    finally:
        store.close()
    assert [(r.status, r.events, r.duplicates) for r in again + new] == [("duplicate", 0, 1), ("stored", 1, 0)]
    inserts = {sql for sql in executed if sql.startswith("INSERT INTO events ")}  # traced again as each trigger starts
    assert len(inserts) == 2 and not any("RETURNING" in sql for sql in inserts)
    assert rows(db, "SELECT e.resource_id, a.record_id FROM attempts AS a JOIN events AS e ON e.id = a.event_id"
                    " ORDER BY e.id") == [(1, 7), (2, 7)]
    assert rows(db, "SELECT count(*) FROM attempts") == [(2,)]
    assert rows(db, "SELECT rowid FROM events_fts WHERE events_fts MATCH 'new'") == \
        rows(db, "SELECT id FROM events WHERE resource_id = 2")
