"""Lone surrogates (a JSON `"\\udc80"` escape, an undecodable byte) on the SQLite store: stored as U+FFFD, as on
PostgreSQL, never a UnicodeEncodeError answered 451/503 on every retry; the raw bytes keep them exactly."""

from __future__ import annotations

import json
import smtplib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from process_support import ALLOW_ROOT
from test_http_door import StartWebhook, start_webhook  # noqa: F401 - start_webhook is a fixture

from mailhook.cli import main
from mailhook.extract import extract
from mailhook.models import Delivery, Event, Extraction, Receipt
from mailhook.store.pg.write import PgStore
from mailhook.store.rows import mend_json, mended, rows
from mailhook.store.target import PostgresTarget
from mailhook.store.write import Store

# A v1.1 JSON text notification: a lone low surrogate in its Message, a lone high one in another field,
# and an escaped pair (one emoji) that must stay one character.
V1 = (b'{"TextNotification": {"SubscriptionId": "5", "Text": {"@id": 826451071099, "FromNumber": "+16505754427",'
      b' "ToNumber": "67076", "Created": "2016-04-08T14:30:07Z", "FinalResult": "SENT",'
      b' "Message": "a\\udc80b \\ud83d\\ude00", "Extra": "x\\ud800"}}}')
# A v2 webhook whose resource's deliveryState carries one.
V2 = (b'{"timestamp": 1510000000500, "webhookId": 10003, "resourceType": "OutboundTextDeliveryReport", "events": [{'
      b'"timestamp": 1510000000500, "webhookId": 10003, "resourceType": "OutboundTextDeliveryReport",'
      b' "eventType": "received", "resource": {"id": 77001, "toNumber": "12136666123", "fromNumber": "67076",'
      b' "timestamp": 1510000000400, "deliveryState": "DELIVERED\\udc80", "note": "\\ud83d\\ude00"}}]}')


def lite(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def email(body: bytes, message_id: str = "<surrogate@x>") -> bytes:
    return f"Message-ID: {message_id}\r\nSubject: s\r\nContent-Type: application/json\r\n\r\n".encode() + body


def test_a_lone_surrogate_posted_in_v1_json_is_stored_as_a_replacement_character_and_the_pair_kept(
    start_webhook: StartWebhook,  # noqa: F811 - the fixture imported above
) -> None:
    webhook = start_webhook()
    answer = webhook.post(V1, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text  # was 503 on every retry
    (raw, status), = webhook.rows("SELECT raw, status FROM deliveries")
    assert (raw, status) == (V1, "stored")
    (message, payload), = webhook.rows("SELECT message, payload FROM events")
    assert message == "a\ufffdb \U0001f600"
    text = json.loads(payload)["TextNotification"]["Text"]
    assert (text["Message"], text["Extra"]) == ("a\ufffdb \U0001f600", "x\ufffd")


def test_a_lone_surrogate_in_a_v2_webhook_is_stored_and_a_plain_post_after_it_too(
    start_webhook: StartWebhook,  # noqa: F811
) -> None:
    webhook = start_webhook()
    answer = webhook.post(V2, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    plain = V2.replace(b"\\udc80", b"").replace(b"77001", b"77002")
    assert webhook.post(plain, headers={"Content-Type": "application/json"}).status_code == 200
    assert webhook.rows("SELECT raw FROM deliveries ORDER BY id") == [(V2,), (plain,)]
    (payload,), _ = webhook.rows("SELECT payload FROM events ORDER BY id")
    resource = json.loads(payload)["events"][0]["resource"]
    assert (resource["deliveryState"], resource["note"]) == ("DELIVERED\ufffd", "\U0001f600")


def test_an_undecodable_content_type_header_is_stored_as_a_replacement_character(
    start_webhook: StartWebhook,  # noqa: F811
) -> None:
    # aiohttp decodes header bytes with surrogateescape: a \xff reaches deliveries.content_type as a lone surrogate.
    webhook = start_webhook()
    answer = webhook.post(V1.replace(b"\\udc80", b""), headers={"Content-Type": b"application/json; x=\xff"})
    assert answer.status_code == 200, answer.text
    assert webhook.rows("SELECT content_type, status FROM deliveries") == [("application/json; x=\ufffd", "stored")]


def test_an_email_whose_json_body_holds_a_lone_surrogate_gets_250_and_is_stored(
    start_webhook: StartWebhook,  # noqa: F811
) -> None:
    webhook = start_webhook(with_smtp=True)
    smtp_door = next(d for d in webhook.runtime.doors if d.name == "smtp")
    host, _, port = smtp_door.addresses()[0].rpartition(":")
    message = email(V1)
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        assert client.sendmail("notifications@callfire.com", ["ops@example.com"], message) == {}  # was 451
        # Undecodable envelope bytes never reach the store: the door refuses them (tests/test_smtp_*).
        client.send(b"MAIL FROM:<a\x80@x>\r\n")
        assert client.getreply()[0] == 501
    (raw, status), = webhook.rows("SELECT raw, status FROM deliveries")
    assert status == "stored" and raw.startswith(message)  # smtplib adds a final CRLF
    assert webhook.rows("SELECT message FROM events") == [("a\ufffdb \U0001f600",)]


def test_ingest_of_a_file_with_a_lone_surrogate_exits_0_and_stores_it(tmp_path: Path) -> None:
    (tmp_path / "n.json").write_bytes(V1)
    code = main(["ingest", "--quiet", "--db", f"{tmp_path}/m.db", f"{tmp_path}/n.json"],
                env={"MAILHOOK_CONFIG": ""} | ALLOW_ROOT)
    assert code == 0  # was 75 (storage unavailable)
    assert lite(tmp_path / "m.db", "SELECT raw, status FROM deliveries") == [(V1, "stored")]
    assert lite(tmp_path / "m.db", "SELECT message FROM events") == [("a\ufffdb \U0001f600",)]


def hostile_batch() -> list[Any]:
    """A batch: every text column of a delivery and its rows holding a lone surrogate, then a plain delivery."""
    event = Event(event_type="INBOUND_TEXT_FINISHED", event_type_source="payload", api_version="1.1",
                  format="json", resource_type="Text", resource_id=4242, message="m\udc80",
                  payload={"Text": {"Message": "m\udc80", "Pair": "\U0001f600"}})
    hand_built = Extraction(events=(event,), subject="s\udcff", message_id="<id\udc80@x>", notes=("n\ud800",))
    raw = email(V1)
    return [
        (Delivery(channel="smtp", raw=raw, received_at="x", kind="email", envelope_from="a\udc80@x",
                  envelope_to=("b\udcff@x",), remote_addr="r\udc80", content_type="c\udc80"), hand_built),
        (Delivery(channel="imap", raw=raw + b" ", received_at="x", kind="email", source="imap://h/F\udc80/1"),
         extract(raw, kind="email")),
        (Delivery(channel="http", raw=V2, received_at="x", kind="document"), extract(V2, kind="document")),
    ]


DELIVERIES = ("SELECT status, error, message_id, envelope_from, envelope_to, subject, content_type, remote_addr, raw,"
              " notes, source FROM deliveries ORDER BY id")
EVENTS = "SELECT message, final_result, payload FROM events ORDER BY id"


def test_every_text_column_with_a_lone_surrogate_is_stored_in_one_batch_without_failing_the_others(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "m.db")
    try:
        results = store.write(hostile_batch())
    finally:
        store.close()
    assert [r.status if isinstance(r, Receipt) else repr(r) for r in results] == ["stored", "stored", "stored"]
    stored = lite(tmp_path / "m.db", DELIVERIES)
    assert stored[0][:8] == ("stored", None, "<id\ufffd@x>", "a\ufffd@x", '["b\ufffd@x"]', "s\ufffd", "c\ufffd",
                             "r\ufffd")
    assert stored[0][9] == "n\ufffd"
    assert stored[1][10] == "imap://h/F\ufffd/1"
    assert [row[8] for row in stored] == [email(V1), email(V1) + b" ", V2]  # the raw bytes, exactly
    events = lite(tmp_path / "m.db", EVENTS)
    assert events[0][0] == "m\ufffd"
    assert json.loads(events[0][2])["Text"] == {"Message": "m\ufffd", "Pair": "\U0001f600"}
    assert json.loads(events[2][2])["events"][0]["resource"]["deliveryState"] == "DELIVERED\ufffd"


def test_sqlite_and_postgresql_store_the_same_values_for_lone_surrogates(postgres_url: str, tmp_path: Path) -> None:
    store, pg = Store(tmp_path / "m.db"), PgStore(PostgresTarget(postgres_url))
    try:
        on_lite, on_pg = store.write(hostile_batch()), pg.write(hostile_batch())
    finally:
        store.close()
        pg.close()
    assert [r.status for r in on_lite] == [r.status for r in on_pg] == ["stored"] * 3  # type: ignore[union-attr]
    with psycopg.connect(postgres_url) as conn:
        pg_deliveries = conn.execute(DELIVERIES).fetchall()
        pg_events = conn.execute(EVENTS).fetchall()
    assert [(*row[:8], bytes(row[8]), *row[9:]) for row in pg_deliveries] == lite(tmp_path / "m.db", DELIVERIES)
    lite_events = lite(tmp_path / "m.db", EVENTS)
    assert [(m, f, p) for m, f, p in pg_events] == [(m, f, json.loads(p)) for m, f, p in lite_events]


def test_mended_rows_replace_lone_surrogates_raw_and_escaped_but_keep_pairs_and_escaped_backslashes() -> None:
    assert mend_json(r'["\ud800", "\udc80x", "\ud83d\ude00", "\\ud800", "\u0000"]') == (
        r'["\ufffd", "\ufffdx", "\ud83d\ude00", "\\ud800", "\u0000"]')
    found = rows(extract(V1, kind="document"))
    assert mended(found) != found
    assert rows(extract(V1, kind="document"), len(V1)) == mended(found)  # bounded rows come back mended
