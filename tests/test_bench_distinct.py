"""The benchmarks' traffic (bench/distinct.py, bench/load.py): distinct, deterministic, every shape, all read."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    """Import the bench scripts the way they import each other (by bare module name from bench/)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import distinct
    import load
    import notifications

    return {"distinct": distinct, "load": load, "notifications": notifications}


def message_ids(raws: list[bytes]) -> list[bytes]:
    """The Message-ID of each email (its own header, not that of a forwarded message inside)."""
    return [next(line for line in raw.split(b"\n") if line.startswith(b"Message-ID:")) for raw in raws]


def test_same_seed_gives_the_same_emails(bench: dict[str, ModuleType]) -> None:
    emails = bench["distinct"].Emails
    first, second = emails(5), emails(5)
    assert [first.message() for _ in range(50)] == [second.message() for _ in range(50)]


def test_every_email_and_notification_is_distinct_across_seeds(bench: dict[str, ModuleType]) -> None:
    raws, ids = [], []
    for seed in (1, 2):
        emails = bench["distinct"].Emails(seed)
        raws += [emails.message() for _ in range(400)]
        ids += emails.ids
    assert len(message_ids(raws)) == len(set(message_ids(raws))) == 800
    assert len(ids) == len(set(ids)) >= 800


def test_emails_are_about_2_kb(bench: dict[str, ModuleType]) -> None:
    emails = bench["distinct"].Emails(3)
    assert 1900 <= statistics.median(len(emails.message()) for _ in range(500)) <= 2500


def test_the_mix_has_every_shape_and_document(bench: dict[str, ModuleType]) -> None:
    emails = bench["distinct"].Emails(4)
    raw = b"\n".join(emails.message() for _ in range(500))
    for marker in (b"Content-Disposition: attachment; filename=\"notification.xml\"",
                   b"Content-Disposition: attachment; filename=\"notification.json\"", b"message/rfc822",
                   b"---------- Forwarded message", b"\n> Call ID:", b"<table", b"&lt;Call", b"quoted-printable",
                   b"\nText ID:", b"\nCampaign Id:", b"\"webhookId\""):
        assert marker in raw, marker
    docs = bench["notifications"].Documents(4)
    bodies = "\n".join(docs.next().body for _ in range(500))
    for text in ("<TextRecord id=", "<CallRecord id=", "XFER_LEG", "<RecordingMeta", "\"TextRecord\"",
                   "\"CallRecord\": [", "<n:BroadcastNotification", "\"BroadcastNotification\"",
                   "\"OutboundTextDeliveryReport\"", "\"InboundText\"", "<Inbound>true</Inbound>"):
        assert text in bodies, text


def test_mailhook_ingest_stores_every_email_and_every_notification(
        bench: dict[str, ModuleType], tmp_path: Path) -> None:
    emails = bench["distinct"].Emails(6)
    mbox = tmp_path / "distinct.mbox"
    mbox.write_bytes(b"".join(bench["distinct"].mbox_chunk(emails.message()) for _ in range(300)))
    db = tmp_path / "m.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")}
    env.update(MAILHOOK_CONFIG="", MAILHOOK_ALLOW_ROOT="1")
    subprocess.run([sys.executable, "-m", "mailhook", "ingest", "--db", str(db), "--quiet", str(mbox)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    with sqlite3.connect(db) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
        bare = conn.execute("SELECT count(*) FROM deliveries WHERE id NOT IN (SELECT delivery_id FROM events)")
        ids = [row[0] for row in conn.execute("SELECT resource_id FROM events ORDER BY id")]
        kinds = set(conn.execute("SELECT format, api_version FROM events").fetchall())
    assert statuses == [("stored", 300)]
    assert bare.fetchone() == (0,)
    assert sorted(ids) == sorted(emails.ids)
    assert {("xml", "1.1"), ("json", "1.1"), ("html", "1.1"), ("text", "1.1"), ("json", "2")} <= kinds


class Keep:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(bytes(envelope.original_content))
        return "250 OK"


def _send(bench: dict[str, ModuleType], handler: Keep, payloads: Any, sessions: int, *params: str) -> Any:
    """Send `payloads` with bench/load.py's SMTP client to an aiosmtpd server that keeps them in `handler`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        return asyncio.run(bench["load"].run("smtp", port, payloads, sessions, *params))
    finally:
        controller.stop()


def test_the_smtp_client_delivers_every_email_byte_for_byte(bench: dict[str, ModuleType], tmp_path: Path) -> None:
    emails = bench["distinct"].Emails(8)
    raws = [emails.message() for _ in range(60)]
    raws.append(raws[0].replace(b"\nHello,", b"\n.Hello,\n..\n.", 1))  # lines that need dot-stuffing
    payloads = tmp_path / "smtp.bin"
    bench["distinct"].write_records(payloads, [bench["distinct"].smtp_payload(r) for r in raws])
    handler = Keep()
    result = _send(bench, handler, bench["distinct"].read_records(payloads), 4)
    assert (result["messages"], result["refused"], result["errors"]) == (61, 0, [])
    assert sorted(r.replace(b"\r\n", b"\n").rstrip(b"\n") for r in handler.received) == sorted(
        r.rstrip(b"\n") for r in raws)


class KeepOptions(Keep):
    """An aiosmtpd handler that also keeps each message's MAIL parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.options.append(list(envelope.mail_options))
        return await super().handle_DATA(server, session, envelope)


def test_the_smtp_client_sends_the_mail_parameters_it_is_given_with_each_payloads_size(
    bench: dict[str, ModuleType], tmp_path: Path,
) -> None:
    emails = bench["distinct"].Emails(9)
    payloads = [bench["distinct"].smtp_payload(emails.message()) for _ in range(20)]
    handler = KeepOptions()
    result = _send(bench, handler, payloads, 3, "SIZE={size} BODY=8BITMIME")
    assert (result["messages"], result["refused"], result["errors"]) == (20, 0, [])
    sizes = sorted(int(options[0].removeprefix("SIZE=")) for options in handler.options)
    assert sizes == sorted(len(p) for p in payloads)
    assert all(options[1:] == ["BODY=8BITMIME"] for options in handler.options)
