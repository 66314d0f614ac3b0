"""Hostile and surprising input on the PostgreSQL store: stored as SQLite stores it, or kept quarantined with the
reason; never a temporary failure met again on every retry, never one delivery failing its whole batch."""

from __future__ import annotations

import json
import os
import re
import smtplib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import psycopg.sql
import pytest
from postgres_support import PASSWORD
from process_support import ALLOW_ROOT, free_port
from smtp_support import ServerProcess, notification

from mailhook.extract import extract
from mailhook.models import Delivery, Event, Extraction, FolderPosition, Kind, Receipt
from mailhook.store.pg.copy import copy_database
from mailhook.store.pg.schema import TSV_CHARACTERS
from mailhook.store.pg.text import clean_json
from mailhook.store.pg.write import PgStore
from mailhook.store.pg.writer import PgWriter
from mailhook.store.target import PostgresTarget
from mailhook.store.write import Store

BTREE_MAX = 2704
"""The most bytes a btree index entry holds (PostgreSQL's default 8 KiB pages); longer ones failed the insert."""


def noise(characters: int) -> str:
    """Incompressible text (PostgreSQL compresses long index entries first; repeated letters would fit)."""
    return os.urandom(characters // 2 + 1).hex()[:characters]


def text_notification(text_id: int = 826451071099, **fields: Any) -> bytes:
    """A CallFire v1.1 JSON text notification with `fields` set in its Text."""
    text: dict[str, Any] = {"@id": text_id, "FromNumber": "+16505754427", "ToNumber": "67076",
                            "Created": "2016-04-08T14:30:07Z", "FinalResult": "SENT", "Message": "hi"}
    text.update(fields)
    return json.dumps({"TextNotification": {"SubscriptionId": "5", "Text": text}}).encode()


def email(message_id: str, body: bytes | None = None) -> bytes:
    return (f"Message-ID: {message_id}\r\nSubject: s\r\nContent-Type: application/json\r\n\r\n".encode()
            + (body or text_notification()))


def item(raw: bytes, kind: Kind = "document", **delivery: Any) -> tuple[Delivery, Extraction]:
    return (Delivery(channel="smtp" if kind == "email" else "http", raw=raw, received_at="x", kind=kind, **delivery),
            extract(raw, kind=kind))


def on_both(postgres_url: str, tmp_path: Path, *batches: list[Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    """Write the same batches to a new SQLite file and to PostgreSQL; return each store's results per batch."""
    lite, pg = Store(tmp_path / "m.db"), PgStore(PostgresTarget(postgres_url))
    try:
        return [lite.write(b) for b in batches], [pg.write(b) for b in batches]
    finally:
        lite.close()
        pg.close()


def statuses(results: list[Any]) -> list[str]:
    return [r.status if isinstance(r, Receipt) else type(r).__name__ for r in results]


def pg_rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def lite_rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("length", [BTREE_MAX - 200, BTREE_MAX + 200, 15_000])
def test_a_message_id_longer_than_a_btree_entry_is_stored_and_deduplicated_as_on_sqlite(
    postgres_url: str, tmp_path: Path, length: int
) -> None:
    message_id = f"<{noise(length)}@x>"
    first, again = item(email(message_id), "email"), item(email(message_id), "email")
    lite, pg = on_both(postgres_url, tmp_path, [first], [again])
    assert [statuses(b) for b in pg] == [statuses(b) for b in lite] == [["stored"], ["duplicate"]]
    assert pg_rows(postgres_url, "SELECT message_id, status FROM deliveries ORDER BY id") == lite_rows(
        tmp_path / "m.db", "SELECT message_id, status FROM deliveries ORDER BY id")


def test_phone_numbers_longer_than_a_btree_entry_are_stored_as_on_sqlite(postgres_url: str, tmp_path: Path) -> None:
    numbers = noise(5000), noise(6000)
    lite, pg = on_both(postgres_url, tmp_path,
                       [item(text_notification(FromNumber=numbers[0], ToNumber=numbers[1]))])
    assert statuses(pg[0]) == statuses(lite[0]) == ["stored"]
    assert pg_rows(postgres_url, "SELECT from_number, to_number, from_e164 FROM events") == [(*numbers, None)]


def test_a_message_text_larger_than_a_tsvector_holds_is_stored_and_its_start_is_searchable(
    postgres_url: str, tmp_path: Path
) -> None:
    # 300,000 different words: 2 MB of lexemes, past the 1 MiB a tsvector holds.
    message = " ".join(f"w{i}" for i in range(300_000))
    lite, pg = on_both(postgres_url, tmp_path, [item(text_notification(Message=message))])
    assert statuses(pg[0]) == statuses(lite[0]) == ["stored"]
    assert pg_rows(postgres_url, "SELECT message = %s FROM events", message) == [(True,)]
    found = "SELECT count(*) FROM events WHERE message_tsv @@ to_tsquery('simple', %s)"
    assert pg_rows(postgres_url, found, "w10") == [(1,)]
    beyond = len(" ".join(f"w{i}" for i in range(30_000)))
    assert beyond > TSV_CHARACTERS
    assert pg_rows(postgres_url, found, "w29999") == [(0,)]  # past the searchable start


def test_a_value_postgresql_cannot_index_keeps_its_delivery_quarantined_and_the_rest_of_the_batch_stored(
    postgres_url: str, tmp_path: Path
) -> None:
    batch = [item(text_notification(1)), item(text_notification(2, FinalResult=noise(6000))),
             item(text_notification(3))]
    lite, pg = on_both(postgres_url, tmp_path, batch)
    assert statuses(lite[0]) == ["stored", "stored", "stored"]
    # SQLite has no limit on an index entry; PostgreSQL's btree has: the delivery is kept, not refused forever.
    assert statuses(pg[0]) == ["stored", "quarantined", "stored"]
    kept = pg[0][1]
    assert isinstance(kept, Receipt) and kept.error is not None
    assert kept.error.startswith("not stored on PostgreSQL: index row size")
    assert re.search(r'index "events_(type_result|broadcast_type)"', kept.error)  # final_result has no index alone
    raw = pg_rows(postgres_url, "SELECT raw, status, error FROM deliveries WHERE status = 'quarantined'")
    assert [(bytes(r[0]), r[1], r[2]) for r in raw] == [(batch[1][0].raw, "quarantined", kept.error)]
    assert pg_rows(postgres_url, "SELECT resource_id FROM events ORDER BY resource_id") == [(1,), (3,)]


def test_a_delivery_postgresql_refuses_is_acknowledged_by_the_writer_not_answered_retry_later(
    postgres_url: str
) -> None:
    writer = PgWriter(PostgresTarget(postgres_url))
    try:
        delivery, extraction = item(text_notification(4, TextRecord=[{"@id": "5", "Result": noise(6000)}]))
        receipt = writer.submit(delivery, extraction).result(timeout=60)
    finally:
        writer.close()
    assert receipt.status == "quarantined"
    assert receipt.error is not None and "attempts_result" in receipt.error


def test_lone_surrogates_in_the_envelope_and_the_payload_are_stored_as_replacement_characters(
    postgres_url: str, tmp_path: Path
) -> None:
    # A JSON "\udc80" escape decodes to a lone surrogate; undecodable envelope bytes (surrogateescape) are too.
    body = b'{"TextNotification": {"Text": {"@id": 7, "Message": "a\\udc80b", "Extra": "\\ud83d\\ude00"}}}'
    raw = email("<surrogate@x>", body)
    batch = [item(raw, "email", envelope_from="a\udc80@x", envelope_to=("b\udcff@x",))]
    _, pg = on_both(postgres_url, tmp_path, batch)
    assert statuses(pg[0]) == ["stored"]
    assert pg_rows(postgres_url, "SELECT envelope_from, envelope_to FROM deliveries") == [
        ("a\ufffd@x", '["b\ufffd@x"]')]
    (stored,) = pg_rows(postgres_url, "SELECT message, payload FROM events")
    assert stored[0] == "a\ufffdb"
    assert stored[1]["TextNotification"]["Text"]["Extra"] == "\U0001f600"  # a whole pair stays one character


def test_clean_json_replaces_escaped_lone_surrogates_and_nul_but_keeps_pairs_and_escaped_backslashes() -> None:
    assert clean_json(r'["\ud800", "\udc80x", "\ud83d\ude00", "\\ud800", "\u0000"]') == (
        r'["\ufffd", "\ufffdx", "\ud83d\ude00", "\\ud800", "\ufffd"]')
    assert json.loads(clean_json('["a\ud800b"]')) == ["a\ufffdb"]


def test_migrate_to_copies_nul_characters_that_sqlite_holds_as_replacement_characters(
    postgres_url: str, tmp_path: Path
) -> None:
    event = Event(event_type="INBOUND_TEXT_FINISHED", event_type_source="payload", api_version="1.1",
                  format="json", resource_type="Text", resource_id=4242, message="stop\x00now",
                  payload={"Text": {"Message": "stop\x00now"}})
    lite = Store(tmp_path / "m.db")
    try:
        lite.write([(Delivery(channel="file", raw=b"stop\x00now" * 50, received_at="x", kind="document"),
                     Extraction(events=(event,), subject="x\x00y"))])
    finally:
        lite.close()
    assert lite_rows(tmp_path / "m.db", "SELECT message FROM events") == [("stop\x00now",)]
    with psycopg.connect(postgres_url) as conn:
        PgStore(PostgresTarget(postgres_url)).close()  # migrated
        copied = copy_database(tmp_path / "m.db", conn)
    assert copied.events == 1
    assert pg_rows(postgres_url, "SELECT e.message, e.payload, d.subject FROM events AS e JOIN deliveries AS d"
                   " ON d.id = e.delivery_id") == [("stop\ufffdnow", {"Text": {"Message": "stop\ufffdnow"}},
                                                     "x\ufffdy")]


@pytest.mark.slow
def test_serve_on_postgresql_accepts_a_long_message_id_over_smtp_and_a_lone_surrogate_over_http(
    postgres_url: str
) -> None:
    port = free_port()
    server = ServerProcess(postgres_url, "--http-listen", f"127.0.0.1:{port}")  # type: ignore[arg-type]
    try:
        # Over HTTP, a JSON "\udc80" escape (a lone surrogate once decoded): 200, where it was 503 on every retry.
        surrogate = b'{"TextNotification": {"Text": {"@id": 83, "Message": "a\\udc80b"}}}'
        with httpx.Client(timeout=60) as http:
            answer = http.post(f"http://127.0.0.1:{port}/notifications", content=surrogate,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        long_id = f"<{noise(6000)}@callfire.test>"
        # Folded over lines of 900 characters (SMTP's lines hold 1,000); unfolded it is one 6 KB Message-ID.
        folded = "\n ".join(long_id[i:i + 900] for i in range(0, len(long_id), 900)).encode()
        message = notification(81).replace(b"<81.notify@callfire.test>", folded)
        assert folded in message
        with smtplib.SMTP(*server.address, timeout=60) as smtp:
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], message)
            # Its retransmission is a duplicate, as on SQLite; a plain one in the same session still stored.
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], message)
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(82))
    finally:
        server.stop()
    assert pg_rows(postgres_url, "SELECT length(message_id), status FROM deliveries WHERE channel = 'smtp'"
                   " ORDER BY id") == [
        (len(long_id), "stored"), (len(long_id), "duplicate"), (len("<82.notify@callfire.test>"), "stored")]
    assert pg_rows(postgres_url, "SELECT message FROM events WHERE resource_id = 83") == [("a\ufffdb",)]
    assert PASSWORD not in "".join(server.log)


ODD_PASSWORD = "p@ss:w/rd#?%&x y"


@pytest.fixture
def odd_role(postgres_url: str) -> Iterator[str]:
    """A role whose password holds every character a URL gives a meaning to."""
    name = f"odd_{os.urandom(4).hex()}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Literal(ODD_PASSWORD)))
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(name)))


def run_mailhook(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT | {"MAILHOOK_CONFIG": ""}
    return subprocess.run([sys.executable, "-m", "mailhook", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_percent_encoded_password_with_url_characters_connects_and_never_shows(
    postgres_url: str, odd_role: str
) -> None:
    server = postgres_url.split("@", 1)[1]
    url = f"postgresql://{odd_role}:{quote(ODD_PASSWORD, safe='')}@{server}"
    done = run_mailhook("status", "--db", url)
    assert "schema_version" in done.stdout, done.stderr
    assert "error:" not in done.stdout
    assert f"postgresql://{odd_role}:********@{server}" in done.stdout
    for text in (done.stdout + done.stderr, str(PostgresTarget(url)), repr(PostgresTarget(url))):
        assert quote(ODD_PASSWORD, safe="") not in text and "rd#" not in text and "x y" not in text


def test_a_password_written_unencoded_in_the_url_is_refused_without_showing_any_of_it(
    postgres_url: str, odd_role: str
) -> None:
    url = f"postgresql://{odd_role}:{ODD_PASSWORD}@{postgres_url.split('@', 1)[1]}"
    for command in ("status", "check-config"):
        done = run_mailhook(command, "--db", url)
        assert done.returncode == 78, (command, done.stdout, done.stderr)  # EX_CONFIG
        shown = done.stdout + done.stderr
        assert "must be percent-encoded" in shown
        # Before: "postgresql://odd:********@ss:w/rd#?%&x y@..." and libpq's quote of a piece of it.
        for piece in ("ss:w", "rd#", "x y", '"%"'):
            assert piece not in shown, (command, shown)
    assert str(PostgresTarget(url)).startswith(f"postgresql://{odd_role}:********@127.0.0.1:")


def test_a_wrong_password_stops_serve_with_exit_78_and_a_line_without_the_password(postgres_url: str) -> None:
    wrong = postgres_url.replace(PASSWORD, "wrong-secret-123")
    done = run_mailhook("serve", "--db", wrong, "--smtp-listen", "127.0.0.1:0", "--http-listen", "")
    assert done.returncode == 78, done.stderr  # a configuration error: retrying (or restarting) cannot help
    assert "password authentication failed" in done.stderr
    assert "wrong-secret-123" not in done.stderr + done.stdout
    status = run_mailhook("status", "--db", wrong)
    assert status.returncode == 69
    assert "wrong-secret-123" not in status.stderr + status.stdout


def test_an_imap_delivery_kept_quarantined_moves_its_folder_past_it(postgres_url: str) -> None:
    raw = text_notification(6, FinalResult=noise(6000))
    delivery = Delivery(channel="imap", raw=raw, received_at="x", kind="document",
                        position=FolderPosition("acct", "INBOX", 42, 9), source="imap:INBOX:42:9")
    store = PgStore(PostgresTarget(postgres_url))
    try:
        (receipt,) = store.write([(delivery, extract(raw, kind="document"))])
        assert isinstance(receipt, Receipt) and receipt.status == "quarantined"
        # Not moved, the poller would fetch and keep it again on every poll.
        assert store.position("acct", "INBOX") == FolderPosition("acct", "INBOX", 42, 9)
    finally:
        store.close()


def test_reprocess_on_postgresql_stores_nul_and_lone_surrogates_as_replacement_characters(postgres_url: str) -> None:
    from mailhook.store.pg.reprocess import ReprocessStore

    raw = b"x" * 400
    store = PgStore(PostgresTarget(postgres_url))
    try:
        (kept,) = store.write([(Delivery(channel="file", raw=raw, received_at="x", kind="document"),
                                Extraction(reason="not read yet"))])
    finally:
        store.close()
    assert isinstance(kept, Receipt)
    event = Event(event_type="INBOUND_TEXT_FINISHED", event_type_source="payload", api_version="1.1", format="json",
                  resource_type="Text", resource_id=77, message="a\udc80b\x00c", payload={"Text": {"M": "a\udc80b"}})
    again = ReprocessStore(PostgresTarget(postgres_url))
    try:
        receipt = again.reextract(kept.delivery_id, Extraction(events=(event,), notes=("note\x00",)))
    finally:
        again.close()
    assert receipt.status == "stored"
    assert pg_rows(postgres_url, "SELECT e.message, e.payload, d.notes FROM events AS e JOIN deliveries AS d"
                   " ON d.id = e.delivery_id") == [("a\ufffdb\ufffdc", {"Text": {"M": "a\ufffdb"}}, "note\ufffd")]
