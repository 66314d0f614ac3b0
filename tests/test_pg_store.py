"""The PostgreSQL store: the SQLite store's rows for the same input, dedupe across nodes, commits or RetryLater."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psycopg
import pytest
from analysis_support import fixture_files
from postgres_support import PASSWORD, Cluster
from process_support import ALLOW_ROOT, wait_until

from mailhook.cli import main
from mailhook.errors import RetryLater
from mailhook.extract import extract
from mailhook.models import Delivery, Event, Extraction, FolderPosition, Receipt
from mailhook.store.open import open_storage
from mailhook.store.pg.attempts import ATTEMPT_ROWS
from mailhook.store.pg.schema import MIGRATIONS
from mailhook.store.pg.write import PgStore
from mailhook.store.pg.writer import PgWriter
from mailhook.store.rows import Completion, rows
from mailhook.store.schema import ATTEMPT_COLUMNS
from mailhook.store.target import PostgresTarget
from mailhook.store.writer import Writer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# Kept by the figure triggers (reply attribution), which the PostgreSQL schema adds in a later migration.
NOT_YET = {"reply_to"}
# When each copy was stored: differs between any two runs.
CLOCK = {"received_at"}


def corpus() -> list[Delivery]:
    """Every fixture as a delivery read from its file."""
    from mailhook.files.deliveries import deliveries

    return [d for d in deliveries(fixture_files(), received_at="2026-01-01T00:00:00Z", max_size=10 * 1024 * 1024)
            if isinstance(d, Delivery)]


def sqlite_rows(path: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    found = [dict(row) for row in conn.execute(sql)]
    conn.close()
    return found


def pg_rows(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return list(cursor.execute(sql))


def normalized(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with payloads parsed (jsonb orders keys its own way), times of storing and later columns left out."""
    result = []
    for row in found:
        if "event_time" in row and row["event_time"] == row.get("received_at"):
            row["event_time"] = "(when stored)"  # an event without a time of its own
        row = {k: v for k, v in row.items() if k not in CLOCK | NOT_YET | {"message_tsv"}}
        if isinstance(row.get("payload"), str):
            row["payload"] = json.loads(row["payload"])
        if isinstance(row.get("raw"), memoryview):
            row["raw"] = bytes(row["raw"])
        result.append(row)
    return result


DELIVERIES = "SELECT * FROM deliveries ORDER BY source, sha256, id"
EVENTS = ("SELECT d.source AS delivery_source, e.* FROM events AS e JOIN deliveries AS d ON d.id = e.delivery_id"
          " ORDER BY e.dedupe_key")
ATTEMPTS = ("SELECT e.dedupe_key AS event_key, a.* FROM attempts AS a JOIN events AS e ON e.id = a.event_id"
            " ORDER BY e.dedupe_key, a.id")


def without_ids(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in ("id", "delivery_id", "event_id")} for row in found]


def test_every_fixture_gives_the_same_deliveries_events_and_attempts_as_in_sqlite(
    postgres_url: str, tmp_path: Path
) -> None:
    files = fixture_files()
    assert len(files) > 100
    sqlite_path = tmp_path / "m.db"
    assert main(["ingest", "--quiet", "--db", str(sqlite_path), *files], env=ALLOW_ROOT) in (0, 65)
    assert main(["ingest", "--quiet", "--db", postgres_url, *files], env=ALLOW_ROOT) in (0, 65)
    for sql in (DELIVERIES, EVENTS, ATTEMPTS):
        lite, pg = normalized(sqlite_rows(sqlite_path, sql)), normalized(pg_rows(postgres_url, sql))
        assert len(pg) == len(lite) > 0, sql
        assert without_ids(pg) == without_ids(lite), sql
    counts = pg_rows(postgres_url, "SELECT status, count(*) AS n FROM deliveries GROUP BY status ORDER BY status")
    assert {row["status"] for row in counts} >= {"stored", "quarantined", "duplicate"}


def test_ingesting_the_fixtures_again_stores_every_event_once(postgres_url: str) -> None:
    files = fixture_files()
    assert main(["ingest", "--quiet", "--db", postgres_url, *files], env=ALLOW_ROOT) in (0, 65)
    first = pg_rows(postgres_url, "SELECT count(*) AS n FROM events")[0]["n"]
    assert main(["ingest", "--quiet", "--db", postgres_url, *files], env=ALLOW_ROOT) in (0, 65)
    assert pg_rows(postgres_url, "SELECT count(*) AS n FROM events")[0]["n"] == first > 0
    again = pg_rows(postgres_url, "SELECT status, sum(event_count) AS new FROM deliveries"
                    " WHERE id > (SELECT max(id) / 2 FROM deliveries) GROUP BY status")
    assert all(row["new"] == 0 for row in again)


@pytest.fixture
def writers(postgres_url: str) -> Iterator[list[PgWriter]]:
    """Two writers on one database: two nodes."""
    made = [PgWriter(PostgresTarget(postgres_url), max_batch=64) for _ in range(2)]
    yield made
    for writer in made:
        writer.close()


def extracted(deliveries: list[Delivery]) -> list[tuple[Delivery, Extraction]]:
    return [(d, extract(d.raw, kind=d.kind, content_type=d.content_type)) for d in deliveries]


def test_two_nodes_storing_the_same_corpus_at_the_same_instant_store_each_event_once(
    writers: list[PgWriter], postgres_url: str
) -> None:
    work = extracted(corpus())
    expected_keys = {values[0] for _, e in work for _, values, _ in rows(e).events}
    start = threading.Barrier(len(writers))
    receipts: list[list[Receipt]] = [[] for _ in writers]

    def node(index: int) -> None:
        mine = work if index % 2 == 0 else list(reversed(work))  # the same notifications, in another order
        start.wait()
        futures = [writers[index].submit(d, e) for d, e in mine]
        receipts[index] = [f.result(timeout=120) for f in futures]

    threads = [threading.Thread(target=node, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(r) == len(work) for r in receipts)
    keys = pg_rows(postgres_url, "SELECT dedupe_key, count(*) AS n FROM events GROUP BY dedupe_key")
    assert {row["dedupe_key"] for row in keys} == expected_keys
    assert all(row["n"] == 1 for row in keys)
    # Each event was new on exactly one node, and a duplicate on the other.
    assert sum(r.events for node in receipts for r in node) == len(expected_keys)
    assert sum(r.duplicates for node in receipts for r in node) >= len(expected_keys)


def test_a_message_id_stored_by_one_node_is_a_duplicate_on_the_other(writers: list[PgWriter]) -> None:
    raw = b"Message-ID: <same@example.com>\r\nSubject: nothing to read\r\n\r\nhello\r\n"
    deliveries = [Delivery(channel="smtp", raw=raw, received_at="x", kind="email") for _ in writers]
    start = threading.Barrier(len(writers))
    results: list[Receipt] = []

    def node(index: int) -> None:
        start.wait()
        results.append(writers[index].submit(deliveries[index], extract(raw, kind="email")).result(timeout=30))

    threads = [threading.Thread(target=node, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status for r in results) == ["duplicate", "quarantined"]


def test_pending_deliveries_are_completed_with_their_events(writers: list[PgWriter], postgres_url: str) -> None:
    delivery = corpus()[0]
    pending = writers[0].submit(delivery, None).result(timeout=30)
    assert pending.status == "pending"
    found = extract(delivery.raw, kind=delivery.kind, content_type=delivery.content_type)
    done = writers[1].complete(Completion(pending.delivery_id, delivery.sha256, rows(found))).result(timeout=30)
    assert done.status in ("stored", "quarantined")
    again = writers[0].complete(Completion(pending.delivery_id, delivery.sha256, rows(found))).result(timeout=30)
    assert (again.delivery_id, again.status, again.events) == (done.delivery_id, done.status, 0)
    stored = pg_rows(postgres_url, "SELECT status, event_count FROM deliveries")
    assert stored == [{"status": done.status, "event_count": done.events}]


def test_the_imap_position_is_committed_with_the_delivery_and_never_goes_back(writers: list[PgWriter]) -> None:
    writer = writers[0]
    delivery = corpus()[0]
    for uid in (7, 5):
        moved = Delivery(channel="imap", raw=delivery.raw + str(uid).encode(), received_at="x", kind=delivery.kind,
                         position=FolderPosition("acct", "INBOX", 42, uid), source=f"imap:{uid}")
        writer.submit(moved, extract(moved.raw, kind=moved.kind)).result(timeout=30)
    assert writer.committed_position("acct", "INBOX") == FolderPosition("acct", "INBOX", 42, 7)
    assert writers[1].committed_position("acct", "INBOX") == FolderPosition("acct", "INBOX", 42, 7)
    assert writers[1].committed_position("acct", "Other") is None


def test_quarantined_sources_and_totals_are_read_from_postgresql(writers: list[PgWriter]) -> None:
    raw = b"Subject: no notification here\r\n\r\nhello\r\n"
    bad = Delivery(channel="imap", raw=raw, received_at="x", kind="email", source="imap:INBOX:1:9")
    assert writers[0].submit(bad, extract(raw, kind="email")).result(timeout=30).status == "quarantined"
    assert writers[1].quarantined_sources(["imap:INBOX:1:9", "imap:INBOX:1:10"]) == {"imap:INBOX:1:9"}
    assert writers[1].totals() == (1, 1, 0)


def test_a_nul_character_is_stored_as_a_replacement_character_and_the_raw_bytes_keep_it(
    writers: list[PgWriter], postgres_url: str
) -> None:
    event = Event(event_type="INBOUND_TEXT_FINISHED", event_type_source="payload", api_version="1.1", format="xml",
                  resource_type="Text", resource_id=4242, message="stop\x00now",
                  payload={"Text": {"Message": "stop\x00now"}})
    raw = b"<Text>stop\x00now</Text>"
    delivery = Delivery(channel="file", raw=raw, received_at="x", kind="document", source="nul")
    receipt = writers[0].submit(delivery, Extraction(events=(event,))).result(timeout=30)
    assert receipt.status == "stored"
    stored = pg_rows(postgres_url, "SELECT e.message, e.payload, d.raw FROM events AS e JOIN deliveries AS d"
                     " ON d.id = e.delivery_id")
    assert stored[0]["message"] == "stop\ufffdnow"
    assert stored[0]["payload"] == {"Text": {"Message": "stop\ufffdnow"}}
    assert bytes(stored[0]["raw"]) == raw


def test_the_database_stopped_answers_retry_later_and_the_writer_recovers_by_itself(
    postgres_cluster: Cluster, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    writer = PgWriter(PostgresTarget(postgres_url))
    deliveries = corpus()[:6]
    try:
        assert writer.submit(deliveries[0], extract(deliveries[0].raw, kind=deliveries[0].kind)).result(30)
        assert writer.health() is None
        postgres_cluster.stop()
        for delivery in deliveries[1:3]:
            with pytest.raises(RetryLater):
                writer.submit(delivery, extract(delivery.raw, kind=delivery.kind)).result(timeout=60)
        reason = writer.health()
        assert reason is not None and "database unreachable" in reason
        postgres_cluster.start()
        wait_until(lambda: writer.health() is None, 30, "health to recover")

        def stores() -> bool:
            delivery = deliveries[3]
            future: Future[Receipt] = writer.submit(delivery, extract(delivery.raw, kind=delivery.kind))
            try:
                return future.result(timeout=30).status in ("stored", "quarantined", "duplicate")
            except RetryLater:
                return False

        wait_until(stores, 30, "a delivery stored again")
    finally:
        if not postgres_cluster.running():
            postgres_cluster.start()
        writer.close()
    stored = pg_rows(postgres_url, "SELECT sha256 FROM deliveries")
    assert {row["sha256"] for row in stored} == {deliveries[0].sha256, deliveries[3].sha256}
    assert PASSWORD not in caplog.text


def test_open_storage_gives_the_sqlite_writer_for_a_file_and_the_postgresql_one_for_a_url(
    postgres_url: str, tmp_path: Path
) -> None:
    lite = open_storage(tmp_path / "m.db")
    pg = open_storage(PostgresTarget(postgres_url))
    try:
        assert type(lite) is Writer
        assert isinstance(pg, PgWriter)
    finally:
        lite.close()
        pg.close()


def _text_event(resource_id: int, message: str = "hi") -> Event:
    return Event(event_type="OUTBOUND_TEXT_FINISHED", event_type_source="payload", api_version="1.1", format="xml",
                 resource_type="Text", resource_id=resource_id, message=message, payload={"Text": {"@id": "1"}})


def test_an_item_postgresql_refuses_is_kept_quarantined_alone_and_the_rest_of_its_batch_is_stored(
    postgres_url: str
) -> None:
    store = PgStore(PostgresTarget(postgres_url))
    try:
        items: list[Any] = [
            (Delivery(channel="file", raw=f"d{i}".encode() * 200, received_at="x", kind="document", source=f"s{i}"),
             Extraction(events=(_text_event(2**70 if i == 1 else 100 + i),)))
            for i in range(3)
        ]
        pending = Delivery(channel="smtp", raw=b"Subject: x\r\n\r\n" + b"x" * 500, received_at="x", kind="email")
        (kept,) = store.write([(pending, None)])
        assert isinstance(kept, Receipt) and kept.status == "pending"
        items.append(Completion(kept.delivery_id, pending.sha256, Extraction(events=(_text_event(2**70),))))
        results = store.write(items)
    finally:
        store.close()
    # Refused by PostgreSQL, the delivery is kept quarantined with the refusal (a failure would be answered
    # 451/503, and the sender's every retry would meet it again).
    assert [r.status if isinstance(r, Receipt) else "failed" for r in results] == [
        "stored", "quarantined", "stored", "quarantined"]
    assert isinstance(results[1], Receipt)
    assert results[1].error == "not stored on PostgreSQL: bigint out of range; raw bytes kept, events not stored"
    assert isinstance(results[3], Receipt) and (results[3].error or "").startswith("events could not be stored")
    stored = pg_rows(postgres_url, "SELECT source, status, event_count, raw IS NOT NULL AS raw FROM deliveries"
                     " ORDER BY id")
    assert stored == [{"source": None, "status": "quarantined", "event_count": 0, "raw": True},
                      {"source": "s0", "status": "stored", "event_count": 1, "raw": True},
                      {"source": "s1", "status": "quarantined", "event_count": 0, "raw": True},
                      {"source": "s2", "status": "stored", "event_count": 1, "raw": True}]


def test_a_message_id_repeated_within_one_batch_is_a_duplicate_and_keeps_no_second_copy(postgres_url: str) -> None:
    raw = b"Message-ID: <twice@example.com>\r\nSubject: nothing\r\n\r\nhello\r\n"
    store = PgStore(PostgresTarget(postgres_url))
    try:
        results = store.write([(Delivery(channel="smtp", raw=raw, received_at="x", kind="email"),
                                extract(raw, kind="email")) for _ in range(2)])
    finally:
        store.close()
    assert [r.status for r in results if isinstance(r, Receipt)] == ["quarantined", "duplicate"]
    assert pg_rows(postgres_url, "SELECT raw IS NULL AS dropped FROM deliveries ORDER BY id") == [
        {"dropped": False}, {"dropped": True}]


def test_two_ingest_processes_racing_the_fixtures_into_an_empty_database_store_each_event_once(
    postgres_url: str,
) -> None:
    import os
    import subprocess
    import sys

    files = fixture_files()
    env = {**os.environ, **ALLOW_ROOT, "MAILHOOK_CONFIG": ""}
    command = [sys.executable, "-m", "mailhook", "ingest", "--quiet", "--db", postgres_url]
    # Both start on an empty database: they migrate it together, then store the same corpus (one in reverse).
    racing = [subprocess.Popen([*command, *order], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True) for order in (files, list(reversed(files)))]
    outcomes = [process.communicate(timeout=300) for process in racing]
    assert all(p.returncode in (0, 65) for p in racing), [err[-2000:] for _, err in outcomes]
    assert all(PASSWORD not in err for _, err in outcomes)
    keys = pg_rows(postgres_url, "SELECT count(*) AS events, count(DISTINCT dedupe_key) AS keys FROM events")[0]
    new = pg_rows(postgres_url, "SELECT sum(event_count) AS new FROM deliveries")[0]["new"]
    assert keys["events"] == keys["keys"] == new > 0
    assert pg_rows(postgres_url, "SELECT count(*) AS n FROM schema_migrations")[0]["n"] == len(MIGRATIONS)


@pytest.mark.parametrize("extra", [0, 1])
def test_an_event_with_more_attempts_than_one_insert_holds_stores_every_one_in_order(
    postgres_url: str, extra: int
) -> None:
    # One INSERT per ATTEMPT_ROWS attempts: at the limit one, past it two.
    delivery = next(d for d in corpus() if any(e.attempts for e in extract(d.raw, kind=d.kind).events))
    found = rows(extract(delivery.raw, kind=delivery.kind))
    index = next(i for i, (_, _, attempts) in enumerate(found.events) if attempts)
    event_type, values, attempts = found.events[index]
    record, payload = ATTEMPT_COLUMNS.index("record_id"), ATTEMPT_COLUMNS.index("payload")
    many = tuple(tuple(-1 - n if i == record else "{}" if i == payload else v for i, v in enumerate(attempts[0]))
                 for n in range(ATTEMPT_ROWS + extra))
    grown = found._replace(events=(*found.events[:index], (event_type, values, many), *found.events[index + 1:]))
    big = Delivery(channel=delivery.channel, raw=delivery.raw + b" " * 20 * len(many), received_at="x",
                   kind=delivery.kind)
    store = PgStore(PostgresTarget(postgres_url))
    try:
        receipt = store.write([(big, grown)])[0]
    finally:
        store.close()
    assert not isinstance(receipt, Exception) and receipt.status == "stored", receipt
    with psycopg.connect(postgres_url) as conn:
        stored = [r[0] for r in conn.execute("SELECT record_id FROM attempts ORDER BY id")]
    assert len(stored) >= len(many)
    assert [r for r in stored if r is not None and r < 0] == [-1 - n for n in range(ATTEMPT_ROWS + extra)]
