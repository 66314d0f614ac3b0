"""The HTTP door through real HTTP on 127.0.0.1 port 0, with httpx and curl as clients."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import smtplib
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import StartServer, make_settings
from outside import require
from process_support import read_all, wait_until

from mailhook.http import door as webhook_module
from mailhook.http import gate as http_gate
from mailhook.metrics import Metrics
from mailhook.pipeline import Pipeline
from mailhook.server import Runtime
from mailhook.store.writer import Writer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TEXT_XML = (FIXTURES / "seed" / "text-outbound.xml").read_bytes()
V2_JSON = (FIXTURES / "documents" / "v2-three-resource-types.json").read_bytes()
TOKEN = "s3cret-token"
SECRET = "webhook-secret"


@dataclass
class Webhook:
    """A running server's HTTP door, and a look into its database."""

    runtime: Runtime
    base: str
    client: httpx.Client

    @property
    def db(self) -> Path:
        return self.runtime.writer.store.path

    def post(self, body: bytes | Iterator[bytes], **kwargs: Any) -> httpx.Response:
        return self.client.post(f"{self.base}/notifications", content=body, **kwargs)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def deliveries(self) -> int:
        count: int = self.rows("SELECT count(*) FROM deliveries")[0][0]
        return count

    def curl(self, *args: str, path: str = "/notifications") -> tuple[int, dict[str, Any]]:
        """Run curl against the door; return the status code and the JSON body."""
        require("curl", "curl")
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}", *args, f"{self.base}{path}"],
            capture_output=True, check=True,
        )
        body, _, code = done.stdout.rpartition(b"\n")
        return int(code), json.loads(body) if body.strip() else {}


StartWebhook = Callable[..., Webhook]


@pytest.fixture
def start_webhook(start_server: StartServer) -> Iterator[StartWebhook]:
    """Return `start(with_smtp=False, **sections)`: a server with HTTP on port 0 (SMTP off unless asked)."""
    clients: list[httpx.Client] = []

    def start(with_smtp: bool = False, **sections: Any) -> Webhook:
        http = {"listen": "127.0.0.1:0", **sections.pop("http", {})}
        smtp_section = {**sections.pop("smtp", {}), **({} if with_smtp else {"listen": ""})}
        runtime = start_server(http=http, smtp=smtp_section, **sections)
        door = next(d for d in runtime.doors if d.name == "http")
        client = httpx.Client(timeout=30)
        clients.append(client)
        return Webhook(runtime, f"http://{door.addresses()[0]}", client)

    yield start
    for client in clients:
        client.close()


@pytest.fixture
def webhook(start_webhook: StartWebhook) -> Webhook:
    return start_webhook()


def sign_hex(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def sign_base64(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha1).digest()).decode()


def fixture_documents() -> list[Path]:
    """Every bare document sample with an expected-events file beside it."""
    found = []
    for folder in ("seed", "documents"):
        for path in sorted((FIXTURES / folder).iterdir()):
            expected = path.with_name(path.stem + ".expected.json")
            if path.suffix in (".xml", ".json") and ".expected" not in path.name and expected.exists():
                found.append(path)
    return found


# Formats are sniffed from the body: send each with a Content-Type that lies.
WRONG_TYPE = {".xml": "application/json", ".json": "text/xml; charset=UTF-8"}


@pytest.mark.parametrize("sample", fixture_documents(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_fixture_document_posted_stores_exactly_its_expected_events(
    start_webhook: StartWebhook, sample: Path
) -> None:
    expected = json.loads(sample.with_name(sample.stem + ".expected.json").read_text())
    subscriptions = {int(k): v for k, v in expected.get("subscriptions", {}).items()}
    webhook = start_webhook(subscriptions=subscriptions)
    body = sample.read_bytes()

    response = webhook.post(body, headers={"Content-Type": WRONG_TYPE[sample.suffix]})

    answer = response.json()
    stored = webhook.rows(
        "SELECT channel, status, raw, content_type, error FROM deliveries WHERE id = ?", answer["delivery_id"]
    )
    assert stored[0][:4] == ("http", answer["status"], body, WRONG_TYPE[sample.suffix])
    events = webhook.rows(
        "SELECT dedupe_key, event_type, format, resource_id FROM events WHERE delivery_id = ? ORDER BY id",
        answer["delivery_id"],
    )
    want = [(e["dedupe_key"], e["event_type"], e["format"], e.get("resource_id")) for e in expected["events"]]
    if expected["events"]:
        assert response.status_code == 200, answer
        assert answer == {"delivery_id": answer["delivery_id"], "status": "stored",
                          "events": len(want), "duplicates": 0}
        assert events == want
    else:
        assert response.status_code == 422, answer
        assert answer["status"] == "quarantined"
        assert expected["quarantined"] in answer["error"]
        assert stored[0][4] == answer["error"]
        assert events == []


def test_the_same_post_twice_is_one_event_and_a_duplicate(webhook: Webhook) -> None:
    first = webhook.post(V2_JSON).json()
    again = webhook.post(V2_JSON)

    assert again.status_code == 200
    assert again.json() == {"delivery_id": first["delivery_id"] + 1, "status": "duplicate",
                            "events": 0, "duplicates": first["events"]}
    assert webhook.rows("SELECT count(*) FROM events") == [(first["events"],)]


def _as_email(document: bytes, message_id: str) -> bytes:
    message = EmailMessage()
    message["From"] = "CallFire <notifications@callfire.com>"
    message["To"] = "ops@example.com"
    message["Subject"] = "CallFire notification"
    message["Message-ID"] = message_id
    message.set_content("A CallFire notification follows.\n\n" + document.decode() + "\n")
    return message.as_bytes()


@pytest.mark.parametrize("subscription", ["41001", "99999"], ids=["same-subscription", "other-subscription"])
def test_a_notification_by_email_and_by_http_is_one_event(start_webhook: StartWebhook, subscription: str) -> None:
    webhook = start_webhook(with_smtp=True)
    smtp_door = next(d for d in webhook.runtime.doors if d.name == "smtp")
    host, _, port = smtp_door.addresses()[0].rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.sendmail("bounce@callfire.com", ["ops@example.com"], _as_email(TEXT_XML, "<1@callfire.com>"))
    # The same call reported by a second subscription differs only in SubscriptionId.
    body = TEXT_XML.replace(b">41001<", f">{subscription}<".encode())

    response = webhook.post(body, params={})

    assert response.status_code == 200
    assert response.json()["events"] == 0
    assert response.json()["duplicates"] == 1
    assert webhook.rows("SELECT channel, status, event_count, duplicate_count FROM deliveries ORDER BY id") == [
        ("smtp", "stored", 1, 0),
        ("http", "duplicate", 0, 1),
    ]
    assert webhook.rows("SELECT event_type, resource_id, subscription_id FROM events") == [
        ("OUTBOUND_TEXT_FINISHED", 11111111111, 41001)
    ]


@pytest.mark.parametrize(
    "credentials",
    [{"params": {"token": TOKEN}}, {"auth": ("callfire", TOKEN)}, {"auth": ("", TOKEN)}],
    ids=["query", "basic-auth", "basic-auth-no-user"],
)
def test_a_configured_token_is_accepted_in_the_query_or_as_basic_auth_password(
    start_webhook: StartWebhook, credentials: dict[str, Any]
) -> None:
    webhook = start_webhook(http={"token": TOKEN})

    response = webhook.post(TEXT_XML, **credentials)

    assert response.status_code == 200
    assert response.json()["events"] == 1


def test_curl_with_the_token_in_basic_auth_userinfo_is_accepted(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(http={"token": TOKEN})

    code, answer = webhook.curl("-u", f"callfire:{TOKEN}", "--data-binary", f"@{FIXTURES}/seed/text-inbound.json")

    assert code == 200
    assert answer["events"] == 1


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"params": {"token": "wrong"}},
        {"params": {"token": TOKEN[:-1]}},
        {"params": {"token": ""}},
        {"auth": ("callfire", "wrong")},
        {"auth": (TOKEN, "")},
        {"headers": {"Authorization": "Bearer " + TOKEN}},
        {"headers": {"Authorization": "Basic !!!not-base64"}},
    ],
    ids=["none", "wrong", "prefix", "empty", "wrong-password", "token-as-user", "bearer", "garbled"],
)
def test_a_missing_or_wrong_token_is_401_and_stores_nothing(
    start_webhook: StartWebhook, credentials: dict[str, Any]
) -> None:
    webhook = start_webhook(http={"token": TOKEN})

    response = webhook.post(TEXT_XML, **credentials)

    assert response.status_code == 401
    assert "token" in response.json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert webhook.deliveries() == 0


def test_a_wrong_token_is_refused_before_curl_sends_the_body(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(http={"token": TOKEN})

    code, answer = webhook.curl(
        "-H", "Expect: 100-continue", "--data-binary", f"@{FIXTURES}/seed/text-outbound.xml",
        "--url-query", "token=wrong",
    )

    assert (code, answer) == (401, {"error": "wrong token"})
    assert webhook.deliveries() == 0


@pytest.mark.parametrize(
    "sign",
    [sign_hex, lambda b: sign_hex(b).upper(), sign_base64, lambda b: "sha1=" + sign_hex(b)],
    ids=["hex", "upper-hex", "base64", "sha1-prefix"],
)
def test_a_v2_body_signed_in_hex_or_base64_is_stored(start_webhook: StartWebhook, sign: Callable[[bytes], str]) -> None:
    webhook = start_webhook(http={"webhook_secret": SECRET})

    code, answer = webhook.curl(
        "-H", "Content-Type: application/json", "-H", f"X-CallFire-Signature: {sign(V2_JSON)}",
        "--data-binary", f"@{FIXTURES}/documents/v2-three-resource-types.json",
    )

    assert code == 200
    assert answer["events"] == 3


@pytest.mark.parametrize(
    "signature",
    [None, "", sign_hex(V2_JSON, "other-secret"), sign_base64(V2_JSON, "other-secret"), sign_hex(V2_JSON)[:-2],
     sign_hex(V2_JSON + b" "), "not a signature"],
    ids=["missing", "empty", "hex-other-secret", "base64-other-secret", "truncated", "other-body", "garbage"],
)
def test_a_v2_body_with_a_missing_or_wrong_signature_is_401_and_stores_nothing(
    start_webhook: StartWebhook, signature: str | None
) -> None:
    webhook = start_webhook(http={"webhook_secret": SECRET})
    headers = {} if signature is None else {"X-CallFire-Signature": signature}

    response = webhook.post(V2_JSON, headers=headers)

    assert response.status_code == 401
    assert "X-CallFire-Signature" in response.json()["error"]
    assert webhook.deliveries() == 0


def test_unsigned_v1_bodies_are_stored_when_a_webhook_secret_is_set(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(http={"webhook_secret": SECRET})

    statuses = [
        webhook.post((FIXTURES / "seed" / name).read_bytes()).status_code
        for name in ("text-outbound.xml", "text-inbound.json", "campaign.json")
    ] + [webhook.post((FIXTURES / "documents" / "soap-text-outbound.xml").read_bytes()).status_code]

    assert statuses == [200, 200, 200, 200]


def test_a_v1_body_with_a_wrong_signature_is_401(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(http={"webhook_secret": SECRET})

    response = webhook.post(TEXT_XML, headers={"X-CallFire-Signature": sign_hex(V2_JSON)})

    assert response.status_code == 401
    assert webhook.deliveries() == 0


def test_an_unsigned_body_that_is_not_v1_is_401_when_a_secret_is_set(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(http={"webhook_secret": SECRET})

    statuses = [webhook.post(body).status_code for body in (b'{"hello": 1}', b"[]", b"{not json", b"")]

    assert statuses == [401, 401, 401, 401]
    assert webhook.deliveries() == 0


def test_token_and_signature_are_both_required_when_both_are_set(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(http={"token": TOKEN, "webhook_secret": SECRET})
    signed = {"X-CallFire-Signature": sign_base64(V2_JSON)}

    assert webhook.post(V2_JSON, headers=signed).status_code == 401
    assert webhook.post(V2_JSON, params={"token": TOKEN}).status_code == 401
    assert webhook.post(V2_JSON, params={"token": TOKEN}, headers=signed).status_code == 200


LIMIT = 4096


def test_a_body_over_the_limit_is_413_and_stores_nothing(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(smtp={"max_message_size": LIMIT}, http={})
    # SMTP is off, but its max_message_size is the shared limit for every door.
    body = TEXT_XML + b" " * (LIMIT - len(TEXT_XML) + 1)

    with_length = webhook.post(body)
    chunked = webhook.post(iter([body[:1000], body[1000:]]))

    assert (with_length.status_code, chunked.status_code) == (413, 413)
    assert with_length.json() == {"error": f"body larger than {LIMIT} bytes"}
    assert webhook.deliveries() == 0
    assert webhook.post(body[:LIMIT]).status_code == 200


def _chunked(body: bytes, size: int = 1000) -> list[bytes]:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces] + [b"0\r\n\r\n"]


@pytest.mark.parametrize("at_once", [True, False], ids=["whole-body-at-once", "body-in-pieces"])
def test_a_chunked_body_over_the_limit_is_413_however_it_arrives(start_webhook: StartWebhook, at_once: bool) -> None:
    webhook = start_webhook(smtp={"max_message_size": LIMIT}, http={})
    head = b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunks = _chunked(TEXT_XML + b" " * LIMIT)

    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        if at_once:
            sock.sendall(head + b"".join(chunks))
        else:
            sock.sendall(head + chunks[0])
            time.sleep(0.2)  # the handler is now waiting for the rest
            for chunk in chunks[1:]:
                sock.sendall(chunk)
        reply = sock.recv(4096)

    assert reply.startswith(b"HTTP/1.1 413 ")
    assert webhook.deliveries() == 0
    assert webhook.post(TEXT_XML).status_code == 200


@pytest.mark.parametrize("over", [0, 1])
def test_a_chunked_body_that_comes_whole_with_its_head_is_stored_at_the_limit_and_413_one_byte_past(
    start_webhook: StartWebhook, over: int
) -> None:
    # No Content-Length to refuse it by: the size of the body taken whole (Intake.whole_body) is the check.
    webhook = start_webhook(smtp={"max_message_size": LIMIT}, http={})
    head = b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    body = TEXT_XML + b" " * (LIMIT - len(TEXT_XML) + over)

    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        sock.sendall(head + b"".join(_chunked(body)))
        reply = read_all(sock)

    assert reply.startswith(b"HTTP/1.1 413 " if over else b"HTTP/1.1 200 "), reply
    assert webhook.deliveries() == 1 - over


def test_a_stored_notification_is_answered_with_its_outcome_as_json(webhook: Webhook) -> None:
    response = webhook.post(TEXT_XML)

    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    (delivery_id,) = webhook.rows("SELECT id FROM deliveries")[0]
    assert response.json() == {"delivery_id": delivery_id, "status": "stored", "events": 1, "duplicates": 0}


def test_curl_expecting_100_continue_gets_413_before_sending_a_large_body(
    start_webhook: StartWebhook, tmp_path: Path
) -> None:
    webhook = start_webhook(smtp={"max_message_size": LIMIT}, http={})
    big = tmp_path / "big.xml"
    big.write_bytes(TEXT_XML + b" " * (10 * LIMIT))

    code, answer = webhook.curl("-H", "Expect: 100-continue", "--data-binary", f"@{big}")

    assert code == 413
    assert "larger than" in answer["error"]
    assert webhook.deliveries() == 0


def test_storage_unavailable_is_503_and_healthz_says_so_until_it_recovers(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(storage={"busy_timeout": 0.2})
    assert webhook.client.get(f"{webhook.base}/healthz").status_code == 200
    blocker = sqlite3.connect(webhook.db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        during = webhook.post(TEXT_XML)
        health = webhook.client.get(f"{webhook.base}/healthz")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert during.status_code == 503
    assert during.json() == {"error": "storage unavailable; retry later"}
    assert "Retry-After" in during.headers
    assert (health.status_code, health.json()) == (503, {"status": "unavailable", "reason": "database locked"})
    assert webhook.client.get(f"{webhook.base}/healthz").status_code == 200
    assert webhook.post(TEXT_XML).json()["events"] == 1


def test_healthz_answers_200_with_curl(webhook: Webhook) -> None:
    assert webhook.curl(path="/healthz") == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 404), ("POST", "/notification", 404), ("POST", "/notifications/x", 404),
     ("GET", "/notifications", 405), ("PUT", "/notifications", 405), ("DELETE", "/notifications", 405),
     ("POST", "/healthz", 405), ("POST", "/metrics", 405)],
)
def test_other_paths_are_404_and_other_methods_405(webhook: Webhook, method: str, path: str, status: int) -> None:
    response = webhook.client.request(method, f"{webhook.base}{path}", content=TEXT_XML)

    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert webhook.deliveries() == 0


@pytest.mark.parametrize(
    ("method", "path", "answer"),
    [("GET", "/nowhere", (404, "Not Found", None)), ("POST", "/notifications/", (404, "Not Found", None)),
     ("GET", "/notifications", (405, "Method Not Allowed", "POST")),
     ("POST", "/healthz", (405, "Method Not Allowed", "GET,HEAD")),
     ("POST", "/metrics", (405, "Method Not Allowed", "GET,HEAD"))],
)
def test_404_and_405_answers_are_json_naming_the_allowed_methods_and_keep_the_connection(
    webhook: Webhook, method: str, path: str, answer: tuple[int, str, str | None],
) -> None:
    status, error, allow = answer
    response = webhook.client.request(method, f"{webhook.base}{path}", content=TEXT_XML)

    assert (response.status_code, response.json(), response.headers.get("Allow")) == (status, {"error": error}, allow)
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Server"] == "mailhook"
    assert response.headers.get("Connection") != "close"
    assert webhook.post(TEXT_XML).status_code == 200  # on the same kept-alive connection


@pytest.mark.parametrize(("method", "path", "broken"), [("POST", "/notifications", "ingest_soon"),
                                                       ("GET", "/healthz", "check")])
def test_a_handler_crash_is_a_bare_json_500_with_the_traceback_in_the_log(
    webhook: Webhook, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, method: str, path: str,
    broken: str,
) -> None:
    def crash(*args: Any) -> Any:
        raise RuntimeError("internal-detail")

    monkeypatch.setattr(webhook.runtime.pipeline, broken, crash)

    response = webhook.client.request(method, f"{webhook.base}{path}", content=TEXT_XML)

    assert (response.status_code, response.json()) == (500, {"error": "internal error"})
    assert response.headers["Server"] == "mailhook" and response.headers.get("Connection") != "close"
    [line] = [r for r in caplog.records if r.name == "mailhook.webhook" and r.exc_info]
    assert line.getMessage() == f"unexpected error handling {method} {path}"
    assert line.exc_info is not None and "internal-detail" in str(line.exc_info[1])
    monkeypatch.undo()
    assert webhook.post(TEXT_XML).status_code == 200


def test_a_notification_with_expect_100_continue_is_stored_through_aiohttps_expect_handling(
    webhook: Webhook,
) -> None:
    code, answer = webhook.curl("-H", "Expect: 100-continue", "--data-binary",
                                f"@{FIXTURES}/seed/text-outbound.xml")

    assert (code, answer["status"]) == (200, "stored")
    assert webhook.deliveries() == 1


def _nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_xml(depth: int) -> bytes:
    return b"<TextNotification>" + b"<a>" * depth + b"</a>" * depth + b"</TextNotification>"


HOSTILE = {
    "billion-laughs": ((FIXTURES / "documents" / "xml-billion-laughs.xml").read_bytes(), "DOCTYPE"),
    "external-entity": ((FIXTURES / "documents" / "xml-external-entity.xml").read_bytes(), "DOCTYPE"),
    "parameter-entity": (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "http://x/">%p;]><x/>', "DOCTYPE"),
    "deep-json": (_nested_json(100_000), "nested deeper"),
    "deep-v2-json": (b'{"events": ' + _nested_json(100_000) + b"}", "nested deeper"),
    "deep-xml": (_nested_xml(100_000), "nest"),
    "invalid-utf8-json": (b'{"TextNotification": {"Text": {"@id": "1", "Message": "\xff\xfe"}}}', "UTF-8"),
    "invalid-utf8-xml": (b'<?xml version="1.0" encoding="UTF-8"?><TextNotification>\xc3\x28</TextNotification>',
                         "UTF-8"),
    "huge-integer": (b'{"TextNotification": {"Text": {"@id": ' + b"9" * 50_000 + b"}}}",
                     "an integer of more than 4300 digits"),
    "binary": (bytes(range(256)) * 64, "not XML or JSON"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bodies_are_quarantined_raw_and_the_server_keeps_serving(webhook: Webhook, name: str) -> None:
    body, reason = HOSTILE[name]

    response = webhook.post(body, headers={"Content-Type": "application/xml"})

    assert response.status_code == 422
    answer = response.json()
    assert answer["status"] == "quarantined"
    assert reason in answer["error"]
    assert "Traceback" not in answer["error"]
    assert webhook.rows("SELECT raw, status FROM deliveries") == [(body, "quarantined")]
    assert webhook.rows("SELECT count(*) FROM events") == [(0,)]
    assert webhook.post(TEXT_XML).status_code == 200


def test_a_reader_crash_is_quarantined_without_showing_the_exception(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailhook.extract

    def crash(data: bytes | str, subscriptions: Any) -> Any:
        raise KeyError("internal-detail")

    monkeypatch.setattr(mailhook.extract, "read_document", crash)

    response = webhook.post(TEXT_XML)

    assert response.status_code == 422
    assert "KeyError" not in response.text
    assert "internal-detail" not in response.text
    assert "internal error" in response.json()["error"]
    # Operators still see the detail in the database.
    assert "KeyError" in webhook.rows("SELECT error FROM deliveries")[0][0]


def test_an_empty_body_is_quarantined(webhook: Webhook) -> None:
    response = webhook.post(b"")

    assert response.status_code == 422
    assert response.json()["error"] == "empty document"


def test_the_door_reports_its_real_port_and_can_be_turned_off(start_server: StartServer) -> None:
    on = start_server(http={"listen": "127.0.0.1:0"}, smtp={"listen": ""})
    off = start_server(http={"listen": ""}, smtp={"listen": ""}, storage={"db": on.writer.store.path.with_name("b.db")})

    [address] = next(d for d in on.doors if d.name == "http").addresses()
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    assert [d.name for d in off.doors] == []


def test_a_socket_passed_by_systemd_is_served_instead_of_the_configured_address(tmp_path: Path) -> None:
    passed = socket.socket()
    passed.bind(("127.0.0.1", 0))
    passed.listen()
    port = passed.getsockname()[1]
    # 192.0.2.1 (TEST-NET) is not a local address: binding it would fail.
    settings = make_settings(tmp_path / "mailhook.db", http={"listen": "192.0.2.1:8080"}, smtp={"listen": ""})

    async def main() -> tuple[list[str], httpx.Response]:
        writer = Writer(tmp_path / "mailhook.db")
        metrics = Metrics()
        runtime = Runtime(settings=settings, env={}, pipeline=Pipeline(writer, listeners=[metrics.on_delivery]),
                          writer=writer, metrics=metrics, sockets={"http": passed})
        door = await webhook_module.start(runtime)
        try:
            addresses = door.addresses()
            response = await asyncio.to_thread(
                httpx.post, f"http://127.0.0.1:{port}/notifications", content=TEXT_XML, timeout=30
            )
        finally:
            await door.close()
            writer.close()
        return addresses, response

    addresses, response = asyncio.run(main())

    assert addresses == [f"127.0.0.1:{port}"]
    assert response.status_code == 200
    assert response.json()["events"] == 1


def _host_port(webhook: Webhook) -> tuple[str, int]:
    host, _, port = webhook.base.removeprefix("http://").rpartition(":")
    return host, int(port)


def _answers(sock: socket.socket, count: int) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Read `count` answers with a Content-Length body from `sock`: each status line, headers (lower-cased) and body."""
    data, answers = b"", []
    while len(answers) < count:
        head, found, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
        length = int(headers.get(b"content-length", b"-1"))
        if found and len(rest) >= length >= 0:
            answers.append((lines[0], headers, rest[:length]))
            data = rest[length:]
            continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(answers)} answers"
        data += chunk
    return answers


def test_posts_to_the_notifications_path_however_spelled_are_each_stored_on_one_kept_connection(
    start_webhook: StartWebhook,
) -> None:
    # Whole requests, pipelined in one write: /notifications with or without a query is taken by the door
    # itself (Receiver.quick), other spellings aiohttp's router resolves there by Receiver.handle, in order.
    webhook = start_webhook(http={"token": TOKEN})
    targets = [b"/notifications?token=" + TOKEN.encode(), b"/notific%61tions?token=" + TOKEN.encode(),
               b"/notifications?x=1&token=" + TOKEN.encode(), b"/notifications"]
    auth = b"Authorization: Basic " + base64.b64encode(b"u:" + TOKEN.encode()) + b"\r\n"
    requests = [b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n%sContent-Length: %d\r\n\r\n%s" % (
        target, b"" if n < 3 else auth, len(TEXT_XML), TEXT_XML) for n, target in enumerate(targets)]

    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        answers = _answers(sock, len(requests))
        sock.sendall(requests[0].replace(b"token=", b"token=wrong"))  # refused by the door itself, kept
        [refused] = _answers(sock, 1)
        sock.sendall(requests[0].replace(b"HTTP/1.1", b"HTTP/1.0"))
        [closing] = _answers(sock, 1)
        assert sock.recv(100) == b"", "HTTP/1.0 without keep-alive: the door closes after its answer"

    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK"] * len(requests)
    assert [json.loads(body)["delivery_id"] for _, _, body in answers] == [1, 2, 3, 4]
    assert [json.loads(body)["status"] for _, _, body in answers] == ["stored"] + ["duplicate"] * 3
    assert all(headers[b"server"] == b"mailhook" and b"connection" not in headers for _, headers, _ in answers)
    assert refused[0] == b"HTTP/1.1 401 Unauthorized" and b"www-authenticate" in refused[1]
    assert closing[0] == b"HTTP/1.0 200 OK" and json.loads(closing[2])["status"] == "duplicate"
    assert webhook.deliveries() == 5


def test_a_post_asking_for_an_upgrade_is_stored_and_the_connection_serves_on(webhook: Webhook) -> None:
    # aiohttp declines the upgrade after the answer and goes on parsing the connection (its finish_response).
    post = b"POST /notifications HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s"
    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        sock.sendall(post % (b"Connection: Upgrade\r\nUpgrade: h2c\r\n", len(TEXT_XML), TEXT_XML))
        answers = _answers(sock, 1)
        sock.sendall(post % (b"", len(TEXT_XML), TEXT_XML))
        answers += _answers(sock, 1)
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK"] * 2
    assert [json.loads(body)["status"] for _, _, body in answers] == ["stored", "duplicate"]


@pytest.mark.parametrize("over", [0, 1])
def test_a_body_that_comes_whole_with_its_head_is_stored_at_the_limit_and_413_one_byte_past(
    start_webhook: StartWebhook, over: int
) -> None:
    # Head and body in one write, with a Content-Length: the door takes it itself (Receiver.quick).
    webhook = start_webhook(smtp={"max_message_size": LIMIT}, http={})
    body = TEXT_XML + b" " * (LIMIT - len(TEXT_XML) + over)
    request = b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        sock.sendall(request + request[:0 if over else None])
        answers = _answers(sock, 1 if over else 2)

    assert [status for status, _, _ in answers] == (
        [b"HTTP/1.1 413 Request Entity Too Large"] if over else [b"HTTP/1.1 200 OK"] * 2)
    if over:
        assert json.loads(answers[0][2]) == {"error": f"body larger than {LIMIT} bytes"}
    assert webhook.deliveries() == 2 - 2 * over


def test_a_body_that_stalls_is_408_and_stores_nothing(start_webhook: StartWebhook) -> None:
    webhook = start_webhook(http={"body_timeout": 0.2})

    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        sock.sendall(b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<TextNotification>")
        reply = sock.recv(4096)

    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"body not received" in reply
    assert webhook.deliveries() == 0


def test_a_client_that_hangs_up_mid_body_stores_nothing_and_the_server_keeps_serving(webhook: Webhook) -> None:
    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        sock.sendall(b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + TEXT_XML)

    response = webhook.post(TEXT_XML)

    assert response.status_code == 200
    assert webhook.rows("SELECT id, size FROM deliveries") == [(response.json()["delivery_id"], len(TEXT_XML))]


def test_concurrent_posts_are_each_acknowledged_with_their_own_stored_event(webhook: Webhook) -> None:
    bodies = [TEXT_XML.replace(b'<Text id="11111111111">', f'<Text id="{900 + n}">'.encode()) for n in range(24)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda body: webhook.post(body).json(), bodies))

    assert [a["events"] for a in answers] == [1] * 24
    stored = dict(webhook.rows("SELECT d.id, e.resource_id FROM deliveries d JOIN events e ON e.delivery_id = d.id"))
    assert [stored[a["delivery_id"]] for a in answers] == [900 + n for n in range(24)]


def test_a_gzip_body_that_is_not_gzip_is_400_with_the_reason_and_stores_nothing(webhook: Webhook) -> None:
    response = webhook.post(b"not gzip at all", headers={"Content-Encoding": "gzip"})

    assert response.status_code == 400
    assert response.json() == {"error": "request body cannot be decoded: Can not decode content-encoding: gzip"}
    assert webhook.deliveries() == 0
    assert webhook.post(TEXT_XML).status_code == 200


def test_a_gzip_bomb_is_413_after_reading_no_more_than_the_limit(webhook: Webhook) -> None:
    bomb = gzip.compress(TEXT_XML + b" " * (64 * 1024 * 1024), 9)  # ~64 KiB on the wire

    response = webhook.post(bomb, headers={"Content-Encoding": "gzip"})

    assert response.status_code == 413
    assert webhook.deliveries() == 0


@pytest.mark.parametrize(
    "head",
    [b"Content-Length: abc", b"Content-Encoding: br\r\nContent-Length: 2", b"X: " + b"a" * 100_000],
    ids=["bad-length", "unsupported-encoding", "huge-header"],
)
def test_malformed_http_is_refused_with_400_and_one_log_line_not_a_traceback(
    webhook: Webhook, head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(_host_port(webhook), timeout=30) as sock:
        sock.sendall(b"POST /notifications HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\nxx")
        reply = sock.recv(4096)

    assert reply.startswith(b"HTTP/1.0 400 ")
    refusals = [r for r in caplog.records if "request refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None and refusals[0].name == "mailhook.webhook"
    assert not [r for r in caplog.records if r.exc_info]
    assert webhook.post(TEXT_XML).status_code == 200


def test_token_and_signature_guesses_are_logged_once_then_summed_up_per_interval(
    start_webhook: StartWebhook, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_gate, "LOG_INTERVAL", 1.0)
    webhook = start_webhook(http={"token": TOKEN, "webhook_secret": SECRET})
    signed = {"X-CallFire-Signature": sign_base64(b"something else")}

    for guess in range(30):
        assert webhook.post(V2_JSON, params={"token": f"guess{guess}"}).status_code == 401
    for _ in range(10):
        assert webhook.post(V2_JSON, params={"token": TOKEN}, headers=signed).status_code == 401

    def refusals() -> list[str]:
        messages = [r.getMessage() for r in caplog.records if r.name == "mailhook.webhook"]
        return [m for m in messages if "status=401" in m]

    assert refusals() == ['request refused channel=http peer=127.0.0.1 status=401 reason="wrong token"']
    wait_until(lambda: len(refusals()) >= 2, 30, "the summary line", interval=0.1)
    summary = refusals()[1]
    assert summary.startswith("HTTP requests refused for a missing or wrong token or signature: 39 more in the "
                              "last 1 s")
    assert "X-CallFire-Signature does not match the body" in summary  # the last one
