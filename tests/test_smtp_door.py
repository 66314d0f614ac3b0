"""The SMTP door through real sockets: what it stores, when it answers 250, and every refusal."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import itertools
import json
import logging
import smtplib
import socket
import sqlite3
import struct
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from aiosmtpd.smtp import SMTP
from conftest import StartServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from process_support import wait_until
from smtp_support import (
    FIXTURES,
    client,
    locked,
    notification,
    on_the_wire,
    raw_session,
    read_reply,
    read_until_closed,
    rows,
    say,
    smtp_address,
)

from mailhook.budget import InflightBudget
from mailhook.errors import ConfigError, RetryLater
from mailhook.handover import Mailbox
from mailhook.models import Delivery, Receipt
from mailhook.pipeline import Pipeline
from mailhook.server import Runtime
from mailhook.smtp.connection import RCPT_OVERSHOOT
from mailhook.smtp.door import SmtpDoor
from mailhook.smtp.handler import StoreOutcome
from mailhook.smtp.session import Connection
from mailhook.store.writer import Writer
from mailhook.submitter import INLINE_LIMIT

EXPECTED = ".expected.json"
SEED = FIXTURES / "seed"


def _email_fixtures() -> list[tuple[Path, dict[str, Any]]]:
    cases = []
    for expected in sorted((FIXTURES / "email").glob(f"*{EXPECTED}")):
        sample = expected.with_name(expected.name[: -len(EXPECTED)] + ".eml")
        cases.append((sample, json.loads(expected.read_text(encoding="utf-8"))))
    return cases


def _db(runtime: Runtime) -> Path:
    db = runtime.settings.storage.db
    assert db is not None
    return db


def test_every_email_fixture_sent_over_smtp_is_stored_exactly_with_its_events(start_server: StartServer) -> None:
    cases = _email_fixtures()
    subscriptions = {int(k): v for _, exp in cases for k, v in exp.get("subscriptions", {}).items()}
    runtime = start_server(subscriptions=subscriptions)
    replies = []
    with client(runtime) as smtp:
        smtp.ehlo()
        for sample, _ in cases:
            assert smtp.mail("notifications@callfire.com")[0] == 250
            assert smtp.rcpt("ops@example.com")[0] == 250
            replies.append(smtp.data(sample.read_bytes()))

    assert all(code == 250 for code, _ in replies), replies
    stored = rows(_db(runtime), "SELECT id, raw, status, event_count + duplicate_count, envelope_from, "
                                "envelope_to, remote_addr, channel FROM deliveries ORDER BY id")
    assert len(stored) == len(cases)
    for (sample, expected), row, (_, reply) in zip(cases, stored, replies, strict=True):
        delivery_id, raw, status, events, sender, recipients, peer, channel = row
        assert raw is None or raw == on_the_wire(sample.read_bytes()), sample.name
        assert (status == "quarantined") == (expected["quarantined"] is not None), sample.name
        assert events == len(expected["events"]), sample.name
        assert (sender, json.loads(recipients), peer, channel) == (
            "notifications@callfire.com", ["ops@example.com"], "127.0.0.1", "smtp")
        assert f"delivery {delivery_id} {status}".encode() in reply
    keys = {key for (key,) in rows(_db(runtime), "SELECT dedupe_key FROM events")}
    assert keys == {e["dedupe_key"] for _, exp in cases for e in exp["events"]}


def test_banner_and_ehlo_use_the_configured_hostname_and_offer_size_8bitmime_smtputf8(
    start_server: StartServer,
) -> None:
    runtime = start_server(smtp={"hostname": "mx.hooks.test", "max_message_size": 123456})
    host, port = smtp_address(runtime)
    smtp = smtplib.SMTP(timeout=30)
    code, banner = smtp.connect(host, port)
    with smtp:
        assert (code, banner.split()[0]) == (220, b"mx.hooks.test")
        code, ehlo = smtp.ehlo("client.test")
        assert code == 250
        assert ehlo.splitlines()[0] == b"mx.hooks.test"
        assert {"size", "8bitmime", "smtputf8"} <= set(smtp.esmtp_features)
        assert smtp.esmtp_features["size"] == "123456"
        assert "auth" not in smtp.esmtp_features and "starttls" not in smtp.esmtp_features


def test_utf8_addresses_and_8bit_bodies_are_stored_byte_for_byte(server: Runtime) -> None:
    raw = "Subject: Grüße\r\nMessage-ID: <utf8@test>\r\n\r\nNachricht für Jürgen\r\n".encode()
    with client(server) as smtp:
        smtp.sendmail("absender@bücher.example", ["empfänger@例え.jp"], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    (row,) = rows(_db(server), "SELECT raw, envelope_from, envelope_to FROM deliveries")
    assert row == (raw, "absender@bücher.example", json.dumps(["empfänger@例え.jp"], ensure_ascii=False,
                                                               separators=(",", ":")))


def test_recipients_outside_the_accept_list_get_550_at_rcpt(start_server: StartServer) -> None:
    runtime = start_server(smtp={"accept": ("ops@example.com", "@hooks.example.org")})
    with client(runtime) as smtp:
        smtp.ehlo()
        smtp.mail("notifications@callfire.com")
        assert smtp.rcpt("stranger@example.com")[0] == 550
        assert smtp.rcpt("someone@sub.hooks.example.org")[0] == 550
        assert smtp.rcpt("OPS@Example.COM")[0] == 250
        assert smtp.rcpt("anyone@HOOKS.example.org")[0] == 250
        code, _ = smtp.data(notification(1))
        assert code == 250
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("notifications@callfire.com", ["stranger@example.com"], notification(2))
    assert refused.value.recipients["stranger@example.com"][1].startswith(b"5.1.1")
    (stored,) = rows(_db(runtime), "SELECT envelope_to FROM deliveries")
    assert json.loads(stored[0]) == ["OPS@Example.COM", "anyone@HOOKS.example.org"]


def test_senders_outside_the_sender_list_get_550_at_mail(start_server: StartServer) -> None:
    runtime = start_server(smtp={"senders": ("@callfire.com",)})
    with client(runtime) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("mallory@evil.test", ["ops@example.com"], notification(1))
        assert refused.value.smtp_code == 550
        smtp.rset()
        smtp.sendmail("bounce@CallFire.com", ["ops@example.com"], notification(2))
    assert rows(_db(runtime), "SELECT envelope_from FROM deliveries") == [("bounce@CallFire.com",)]


def test_a_refused_senders_and_recipients_address_is_one_logfmt_field_however_it_is_spelled(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailhook")  # a command run in-process set its level
    runtime = start_server(smtp={"senders": ("@callfire.com",), "accept": ("ops@example.com",)})
    forged = '"x status=stored delivery_id=1"@evil.test'
    with client(runtime) as smtp:
        smtp.ehlo()
        assert smtp.mail(forged)[0] == 550
        assert smtp.mail("notifications@callfire.com")[0] == 250
        assert smtp.rcpt('"y reason=ok"@evil.test')[0] == 550
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert lines == ['refused sender peer=127.0.0.1 from="\\"x status=stored delivery_id=1\\"@evil.test"',
                     'refused recipient peer=127.0.0.1 to="\\"y reason=ok\\"@evil.test"']


def test_without_an_accept_list_it_refuses_to_listen_beyond_loopback(start_server: StartServer) -> None:
    with pytest.raises(ConfigError, match=r"--accept"):
        start_server(smtp={"listen": "0.0.0.0:0"})
    runtime = start_server(smtp={"listen": "0.0.0.0:0", "accept": ("@example.com",)})
    assert smtp_address(runtime)[0] == "0.0.0.0"


def test_oversize_messages_get_552_and_nothing_is_stored(start_server: StartServer) -> None:
    runtime = start_server(smtp={"max_message_size": 2000})
    body = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
    with client(runtime) as smtp:
        smtp.ehlo()
        assert smtp.mail("a@callfire.com", ["SIZE=5000"])[0] == 552
        assert smtp.mail("a@callfire.com")[0] == 250
        assert smtp.rcpt("ops@example.com")[0] == 250
        assert smtp.data(body * 40)[0] == 552
        assert smtp.mail("a@callfire.com")[0] == 250
        assert smtp.rcpt("ops@example.com")[0] == 250
        assert smtp.data(body)[0] == 250
    assert rows(_db(runtime), "SELECT size FROM deliveries") == [(len(body),)]


def test_connections_over_the_session_cap_get_421(start_server: StartServer) -> None:
    runtime = start_server(smtp={"max_sessions": 2})
    first, second = client(runtime), client(runtime)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        client(runtime)
    assert refused.value.smtp_code == 421
    first.quit()
    _eventually_connects(runtime).quit()
    second.quit()


def test_connections_over_the_per_address_cap_get_421_while_other_addresses_connect(start_server: StartServer) -> None:
    runtime = start_server(smtp={"max_per_ip": 1})
    first = client(runtime)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        client(runtime)
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (421, b"4.7.0")
    other = client(runtime, source_address=("127.0.0.2", 0))
    assert other.noop()[0] == 250
    other.quit()
    first.quit()


def _eventually_connects(runtime: Runtime) -> smtplib.SMTP:
    """Connect once the server has counted a closed session out (it learns of the close asynchronously)."""
    def connected() -> smtplib.SMTP | None:
        try:
            return client(runtime)
        except smtplib.SMTPConnectError:
            return None

    return wait_until(connected, 2, "the server releasing a closed session")


def test_a_silent_session_is_closed_with_421_after_the_idle_timeout(start_server: StartServer) -> None:
    runtime = start_server(smtp={"idle_timeout": 0.2})
    with socket.create_connection(smtp_address(runtime), timeout=30) as sock, sock.makefile("rwb") as f:
        assert f.readline().startswith(b"220 ")
        f.write(b"EHLO client\r\n")
        f.flush()
        said = read_until_closed(f)
    assert said.splitlines()[-1].startswith(b"421 4.4.2")


def test_a_message_not_finished_within_the_data_timeout_is_dropped_with_421(start_server: StartServer) -> None:
    runtime = start_server(smtp={"data_timeout": 0.2, "idle_timeout": 60})
    with socket.create_connection(smtp_address(runtime), timeout=30) as sock, sock.makefile("rwb") as f:
        f.readline()
        f.write(b"EHLO c\r\nMAIL FROM:<a@callfire.com>\r\nRCPT TO:<ops@example.com>\r\nDATA\r\n")
        f.flush()
        f.write(b"Subject: half\r\n\r\nthe rest never comes\r\n")
        f.flush()
        said = read_until_closed(f)
    assert b"354 " in said
    assert said.splitlines()[-1].startswith(b"421 4.4.2")
    assert rows(_db(runtime), "SELECT count(*) FROM deliveries") == [(0,)]


def test_timeouts_do_not_cancel_a_message_already_being_stored(start_server: StartServer) -> None:
    runtime = start_server(smtp={"data_timeout": 0.8, "idle_timeout": 0.8}, storage={"busy_timeout": 30})
    result: list[tuple[int, bytes]] = []
    with client(runtime) as smtp:
        smtp.ehlo()
        with locked(_db(runtime)):
            assert smtp.mail("a@callfire.com")[0] == 250
            assert smtp.rcpt("ops@example.com")[0] == 250
            sender = threading.Thread(target=lambda: result.append(smtp.data(notification(7))))
            sender.start()
            # Keep the store waiting on the lock for several timeout periods.
            sender.join(timeout=2.5)
        sender.join(timeout=30)
    assert result and result[0][0] == 250, result
    assert rows(_db(runtime), "SELECT count(*) FROM events") == [(1,)]


def test_storage_unavailable_answers_451_then_the_retry_is_stored_once(start_server: StartServer) -> None:
    runtime = start_server(storage={"busy_timeout": 0.05})
    message = notification(42)
    with client(runtime) as smtp:
        with locked(_db(runtime)), pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail("a@callfire.com", ["ops@example.com"], message)
        smtp.rset()
        smtp.sendmail("a@callfire.com", ["ops@example.com"], message)
    assert failed.value.smtp_code == 451
    assert failed.value.smtp_error.startswith(b"4.3.0")
    assert b"lock" not in failed.value.smtp_error.lower() and b"sqlite" not in failed.value.smtp_error.lower()
    assert rows(_db(runtime), "SELECT count(*), sum(event_count) FROM deliveries") == [(1, 1)]


def test_concurrent_clients_are_all_stored(start_server: StartServer) -> None:
    runtime = start_server()
    clients, per_client = 12, 8
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            with client(runtime) as smtp:
                for i in range(per_client):
                    smtp.sendmail("a@callfire.com", ["ops@example.com"], notification(n * 1000 + i))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert rows(_db(runtime), "SELECT count(*), sum(event_count) FROM deliveries") == [
        (clients * per_client, clients * per_client)
    ]


def test_each_delivery_logs_one_line_with_peer_message_id_recipients_status_events_and_time(
    server: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailhook")
    with client(server) as smtp:
        smtp.sendmail("a@callfire.com", ["ops@example.com", "audit@example.com"], notification(5))
    lines = [r.getMessage() for r in caplog.records if r.name == "mailhook.ingest"]
    assert len(lines) == 1
    for part in ("peer=127.0.0.1", "message_id=<5.notify@callfire.test>", "to=ops@example.com,audit@example.com",
                 "status=stored", "events=1", "ms="):
        assert part in lines[0]


def test_lines_longer_than_rfc_5321_allows_are_stored_unchanged(server: Runtime) -> None:
    raw = b"Subject: long line\r\n\r\n" + b"<p>" + b"x" * 5000 + b"</p>\r\n"
    with client(server) as smtp:
        smtp.sendmail("a@callfire.com", ["ops@example.com"], raw)
    assert rows(_db(server), "SELECT raw FROM deliveries") == [(raw,)]


def test_refusals_are_counted_in_the_metrics_by_reason(start_server: StartServer) -> None:
    runtime = start_server(smtp={"accept": ("ops@example.com",), "senders": ("@callfire.com",),
                                 "max_message_size": 1000, "max_per_ip": 1})
    with client(runtime) as smtp:
        smtp.ehlo()
        assert smtp.mail("x@elsewhere.test")[0] == 550
        assert smtp.mail("a@callfire.com")[0] == 250
        assert smtp.rcpt("nobody@example.com")[0] == 550
        assert smtp.rcpt("ops@example.com")[0] == 250
        assert smtp.data((b"x" * 70 + b"\r\n") * 30)[0] == 552
        with pytest.raises(smtplib.SMTPConnectError):
            client(runtime)
    text = runtime.metrics.render().decode()
    for reason in ("sender", "recipient", "too_large", "too_many_from_address"):
        assert f'mailhook_rejected_total{{channel="smtp",reason="{reason}"}} 1.0' in text


def test_recipients_past_the_cap_get_452_and_the_rest_is_delivered(start_server: StartServer) -> None:
    runtime = start_server(smtp={"max_recipients": 2})
    with client(runtime) as smtp:
        smtp.ehlo()
        smtp.mail("notifications@callfire.com")
        assert [smtp.rcpt(f"r{i}@example.com")[0] for i in range(3)] == [250, 250, 452]
        assert smtp.data(notification(1))[0] == 250
    (stored,) = rows(_db(runtime), "SELECT envelope_to FROM deliveries")
    assert json.loads(stored[0]) == ["r0@example.com", "r1@example.com"]


def test_help_does_not_offer_auth_when_it_is_not_configured(start_server: StartServer) -> None:
    runtime = start_server()
    with client(runtime) as smtp:
        smtp.ehlo()
        code, text = smtp.docmd("HELP")
    assert code == 250
    assert b"AUTH" not in text and b"DATA" in text


TRICKY_ADDRESSES = [
    "<a@b>", "<ops@example.com> SIZE=123 BODY=8BITMIME", "<a@b>SIZE=1", "<a@b>  \t ", "<a@b> (comment) X=1",
    "<a@b>(c)", "<>", "<a.b@c.d>", "<a..b@c>", "<.a@b>", "<a.@b>", "<\"a b\"@c>", "<a@[127.0.0.1]>",
    "<=?utf-8?q?x?=@b>", "<a=?x?=@b>", "<é@b>", "<a@é.b>", "<a@b\x0b> X", "<a@b>\x0bX", "< a@b>", " <a@b>",
    "<a@b", "<a b@c>", "<a@b@c>", "<@r1,@r2:a@b>", "<a(c)@b>", "<bounce+x=y@b.c>", "<a@b> \u3000X",
]
ADDRESS_PARTS = st.sampled_from(["a", "B9", ".", "@", "<", ">", " ", "\t", "(", ")", "\"", "[", "]", "=?", "?=",
                                 "é", "\\", ",", ":", ";", "+", "=", "-", "SIZE=9", "x.y"])


def _split(split: Callable[[str], object], arg: str) -> object:
    """Return what `split(arg)` returns, or the type of what it raises (the stdlib parser raises on some)."""
    try:
        return split(arg)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc)


@pytest.fixture
def connection(server: Runtime) -> Iterator[Connection]:
    """A door's session object, not connected, for calling its parser directly."""
    door = next(d for d in server.doors if isinstance(d, SmtpDoor))
    loop = asyncio.new_event_loop()
    yield Connection(door, door.handler, loop=loop)
    loop.close()


@pytest.mark.parametrize("arg", TRICKY_ADDRESSES)
def test_mail_and_rcpt_addresses_are_split_as_aiosmtpd_splits_them(connection: Connection, arg: str) -> None:
    assert _split(connection._getaddr, arg) == _split(functools.partial(SMTP._getaddr, connection), arg)


# The connection is only read from, so sharing it between examples is safe.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(ADDRESS_PARTS, max_size=12))
def test_any_angle_address_is_split_as_aiosmtpd_splits_it(connection: Connection, parts: list[str]) -> None:
    arg = "<" + "".join(parts)
    assert _split(connection._getaddr, arg) == _split(functools.partial(SMTP._getaddr, connection), arg)


class _Capture:
    """An aiosmtpd handler that keeps the content of every message it is given."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.contents.append(envelope.original_content)
        return "250 OK"


def _small_limits(base: type[SMTP]) -> type[SMTP]:
    return type("Small", (base,), {"line_length_limit": 40})


# The door's DATA counts the body in its door's in-flight budget (one that never runs out here) and reads the
# DATA timeout and whether the door is closing from it.
_DOOR = types.SimpleNamespace(runtime=types.SimpleNamespace(inflight=InflightBudget(1 << 40)), closing=False,
                              settings=types.SimpleNamespace(data_timeout=600.0))


def _reading_as_the_door(self: SMTP, *args: Any, **kwargs: Any) -> None:
    SMTP.__init__(self, *args, **kwargs)
    Connection.own_reader(self)  # type: ignore[arg-type]


# aiosmtpd's session with the door's DATA, read through the door's reader (`SessionReader`).
BLOCK_READING = _small_limits(type("BlockReading", (SMTP,), {"smtp_DATA": Connection.smtp_DATA,
                                                             "sent": Connection.sent, "ended": False,
                                                             "storing": False, "expired": False, "door": _DOOR,
                                                             "__init__": _reading_as_the_door,
                                                             "own_reader": Connection.own_reader}))
LINE_READING = _small_limits(SMTP)


def _transactions(server: type[SMTP], stream: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Send HELO, MAIL, RCPT, DATA and `stream` (in those pieces) to `server` over a socket pair.

    Return the replies after the DATA's 354 (one per message sent) and the contents stored.
    """
    handler = _Capture()

    async def talk() -> list[bytes]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        await loop.connect_accepted_socket(
            lambda: server(handler, data_size_limit=120, hostname="h", decode_data=False, loop=loop), theirs)
        reader, writer = await asyncio.open_connection(sock=ours)
        await reader.readline()
        writer.write(b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        for _ in range(4):
            await reader.readline()
        received = b""
        # A dot line inside the stream ends the message early; the rest are bogus
        # commands, and the server may hang up on them.
        with contextlib.suppress(ConnectionError):
            for piece in [*stream, b"QUIT\r\n"]:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
            while chunk := await reader.read(4096):
                received += chunk
        writer.close()
        return received.split(b"\r\n")

    replies = asyncio.run(talk())
    return replies, handler.contents


BODY_PIECES = st.sampled_from([b"a", b"xy" * 15, b"z" * 45, b".", b"..", b"\r\n", b"\r", b"\n", b"\r\n.\r\n",
                               b".\r\n", b"\r\n..\r\n", b" ", b"\xff"])


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(BODY_PIECES, max_size=16), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_data_bodies_get_the_replies_and_content_aiosmtpd_gives_them(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces) + b"\r\n.\r\n"
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *sorted(c for c in cuts if c < len(stream)), None])]
    assert _transactions(BLOCK_READING, chunks) == _transactions(LINE_READING, chunks)


EDGE_STREAMS = [
    # A line of each length around the line limit (40), as the line that also crosses the size limit (120).
    *[[b"x" * 38 + b"\r\n"] * 2 + [b"y" * 36 + b"\r\n", b"a" * n + b"\r\n.\r\n"] for n in range(36, 44)],
    *[[b"a" * n + b"\r\n.\r\n"] for n in range(37, 44)],
    *[[b"x" * 38 + b"\r\n"] * 2 + [b"a" * n + b"\r\n.\r\n"] for n in range(35, 41)],  # 117 to 122 bytes
    [b"x" * 38 + b"\r\n", b"a" * 300 + b"\r\n.\r\n"],  # too long, and too much before its end
    [b"x" * 38 + b"\r\n", b"a" * 300, b"\r\n.\r\n"],  # the same, arriving unfinished
    [b"x" * 38 + b"\r\n"] * 5 + [b"a" * 300, b"\r\n.\r\n"],  # too much, then too long
    [b"a" * 100, b"b" * 100, b"\r\nok\r\n", b".\r\n"],  # too long, then within the limits again
    [b".\r\n"], [b"..\r\n.\r\n"], [b"\r\n.\r\n"], [b"a\r\n", b".", b"\r\n"], [b"a.\r\n.\r\n"], [b"a\n.\r\n.\r\n"],
]


@pytest.mark.parametrize("stream", EDGE_STREAMS)
def test_data_bodies_at_the_limits_get_the_replies_aiosmtpd_gives_them(stream: list[bytes]) -> None:
    assert _transactions(BLOCK_READING, stream) == _transactions(LINE_READING, stream)


# A second transaction pipelined (RFC 2920) right behind a body's end marker: the body must be read up to the
# marker and not a byte further, so that the next MAIL is read as a command.
NEXT = b"MAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\nnext\r\n..two\r\n.\r\n"
SPLIT_STREAMS = [
    b".\r\n", b"..\r\n.\r\n", b"\r\n.\r\n", b"a\r\n.\r\n", b".a\r\n..\r\n...\r\n.\r\n", b"a.\r\n.\r\n",
    b"a\n.\r\n.\r\n", b"a\r.\r\n.\r\n", b"a\r\n.\r\r\n.\r\n", b"a\r\n.\n.\r\n", b"\r\r\n\r\n.\r\n",
    b"x" * 38 + b"\r\n.\r\n", b"x" * 39 + b"\r\n.\r\n",  # a line at the limit (40), one past it
    b"x" * 38 + b"\r\n" + b"y" * 38 + b"\r\n" + b"z" * 38 + b"\r\n.\r\n",  # 120 bytes: at the size limit
    b"x" * 38 + b"\r\n" + b"y" * 38 + b"\r\n" + b"z" * 39 + b"\r\n.\r\n",  # 121 bytes: one past it
]


@pytest.mark.parametrize("stream", SPLIT_STREAMS)
def test_a_body_cut_at_every_place_before_a_pipelined_transaction_gets_what_aiosmtpd_gives_it(stream: bytes) -> None:
    whole = stream + NEXT
    for cut in range(1, len(stream) + 3):
        chunks = [whole[:cut], whole[cut:]]
        assert _transactions(BLOCK_READING, chunks) == _transactions(LINE_READING, chunks), cut


def test_an_end_marker_cut_into_three_reads_at_every_place_gets_what_aiosmtpd_gives_it() -> None:
    whole = b"a\r\n..b\r\n.\r\n" + NEXT
    for first, second in itertools.combinations(range(1, 15), 2):
        chunks = [whole[:first], whole[first:second], whole[second:]]
        assert _transactions(BLOCK_READING, chunks) == _transactions(LINE_READING, chunks), (first, second)


@settings(max_examples=100, deadline=None)
@given(pieces=st.lists(BODY_PIECES, max_size=12), cuts=st.lists(st.integers(0, 500), max_size=5))
def test_bodies_followed_by_a_pipelined_transaction_get_the_replies_and_contents_aiosmtpd_gives_them(
    pieces: list[bytes], cuts: list[int],
) -> None:
    stream = b"".join(pieces) + b"\r\n.\r\n" + NEXT
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *sorted(c for c in cuts if c < len(stream)), None])]
    assert _transactions(BLOCK_READING, chunks) == _transactions(LINE_READING, chunks)


# A session class with only what `Connection.sent` reads: an overshoot limit of 2.
SENDING = type("Sending", (SMTP,), {
    "sent": Connection.sent, "ended": False, "overshoot": 0,
    "door": types.SimpleNamespace(settings=types.SimpleNamespace(max_recipient_overshoot=2)),
})


def _sent_cases() -> list[tuple[str, bool, bytes]]:
    """Run `Connection.sent` on a live session in each state it tells apart; return (case, result, bytes written)."""
    results: list[tuple[str, bool, bytes]] = []

    async def talk() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        session = await _sending_session(loop, theirs)
        reader, writer = await asyncio.open_connection(sock=ours)
        await reader.readline()  # the greeting

        for case, status in [("250", "250 OK"), ("5xx", "550 no"), ("452 at the limit", RCPT_OVERSHOOT)]:
            session.overshoot = 2
            results.append((case, session.sent(status), await _drained(reader)))
        session.overshoot = 3
        results.append(("452 past the limit", session.sent(RCPT_OVERSHOOT), await _drained(reader)))
        session.ended = True
        results.append(("ended", session.sent("250 OK"), await _drained(reader)))
        session.ended = False
        transport = session._writer.transport
        transport.pause_reading()
        transport.write(b"x" * (1 << 22))  # the peer is not reading: most of it stays in the write buffer
        assert transport.get_write_buffer_size() > 0
        results.append(("unsent bytes", session.sent("250 OK"), b""))
        transport.abort()
        writer.close()
        await asyncio.sleep(0.05)  # both ends closed before the loop is

    asyncio.run(talk())
    return results


async def _sending_session(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
    """Serve `sock` with a `SENDING` session on `loop`; return the session."""
    sessions: list[Any] = []

    def made() -> SMTP:
        sessions.append(SENDING(_Capture(), hostname="h", loop=loop))
        return sessions[-1]

    await loop.connect_accepted_socket(made, sock)
    return sessions[0]


async def _drained(reader: asyncio.StreamReader) -> bytes:
    """Return what the session wrote since the last call (nothing if it wrote nothing)."""
    try:
        return await asyncio.wait_for(reader.read(4096), 0.2)
    except TimeoutError:
        return b""


def test_the_sessions_own_replies_are_written_at_once_only_where_push_would_just_write_them() -> None:
    assert _sent_cases() == [
        ("250", True, b"250 OK\r\n"),
        ("5xx", False, b""),  # push counts it as an error
        ("452 at the limit", True, RCPT_OVERSHOOT.encode() + b"\r\n"),
        ("452 past the limit", False, b""),  # push counts it as an error
        ("ended", True, b""),  # push writes nothing either
        ("unsent bytes", False, b""),  # push writes it and awaits drain()
    ]


def test_a_closing_session_leaves_its_reply_to_push() -> None:
    async def talk() -> bool:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        session = await _sending_session(loop, theirs)
        _, writer = await asyncio.open_connection(sock=ours)
        await asyncio.sleep(0)
        session._writer.transport.close()
        result = bool(session.sent("250 OK"))
        writer.close()
        await asyncio.sleep(0.05)  # both ends closed before the loop is
        return result

    assert asyncio.run(talk()) is False


def _conversation(runtime: Runtime, commands: list[str]) -> list[str]:
    """Send `commands` one by one in a fresh session; return each reply as `code text`."""
    with client(runtime) as smtp:
        replies = []
        for command in commands:
            code, text = smtp.docmd(command)
            replies.append(f"{code} {text.decode()}")
    return replies


@pytest.mark.parametrize(("commands", "expected"), [
    (["MAIL FROM:<a@example.com>"], ["503 Error: send HELO first"]),
    (["RCPT TO:<b@example.com>"], ["503 Error: send HELO first"]),
    (["DATA"], ["503 Error: send HELO first"]),
    (["EHLO c.test", "RCPT TO:<b@example.com>"], ["", "503 Error: need MAIL command"]),
    (["EHLO c.test", "mail from:<a@example.com>", "rcpt to:<b@example.com>"],
     ["", "250 2.1.0 OK", "250 2.1.5 OK"]),
    (["EHLO c.test", "MAIL FROM: <a@example.com>", "RCPT TO:   <b@example.com>  "],
     ["", "250 2.1.0 OK", "250 2.1.5 OK"]),
    (["EHLO c.test", "MAIL FROM:<a@example.com>", "MAIL FROM:<a@example.com>"],
     ["", "250 2.1.0 OK", "503 Error: nested MAIL command"]),
    (["EHLO c.test", "MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME", "RCPT TO:<b@example.com> X=1"],
     ["", "250 2.1.0 OK", "555 RCPT TO parameters not recognized or not implemented"]),
    (["EHLO c.test", "MAIL FROM:<a@example.com> SIZE=999999999999"],
     ["", "552 Error: message size exceeds fixed maximum message size"]),
    (["EHLO c.test", "MAIL FROM:<>"], ["", "250 2.1.0 OK"]),  # the null sender, as aiosmtpd reads it
    (["HELO c.test", "MAIL FROM:<a@example.com> SIZE=10"], ["", "501 Syntax: MAIL FROM: <address>"]),
    (["EHLO c.test", "MAIL TO:<a@example.com>"], ["", "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"]),
    (["EHLO c.test", "MAIL FROM:<a@example.com>", "RCPT FROM:<b@example.com>"],
     ["", "250 2.1.0 OK", "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]"]),
    (["EHLO c.test", "MAIL FROM:<a\x01@example.com>"], ["", "501 5.1.7 Bad sender address syntax"]),
    (["EHLO c.test", "MAIL FROM:<a@example.com>", "RCPT TO:<b\x7f@example.com>"],
     ["", "250 2.1.0 OK", "501 5.1.3 Bad recipient address syntax"]),
])
def test_mail_and_rcpt_answer_as_aiosmtpd_in_the_plain_case_and_every_other(
    server: Runtime, commands: list[str], expected: list[str],
) -> None:
    replies = _conversation(server, commands)
    assert [r if e else "" for r, e in zip(replies, expected, strict=True)] == expected


def test_plain_mail_and_rcpt_fill_the_envelope_that_is_stored(server: Runtime) -> None:
    with client(server) as smtp:
        smtp.ehlo("c.test")
        assert smtp.docmd("MAIL FROM:<a@example.com>")[0] == 250
        assert smtp.docmd("RCPT TO:<b@example.com>")[0] == 250
        assert smtp.docmd("RCPT TO:<c@example.com>")[0] == 250
        assert smtp.data(notification(4242))[0] == 250
    stored = rows(server.settings.storage.db, "SELECT envelope_from, envelope_to FROM deliveries")
    assert len(stored) == 1
    assert stored[0][0] == "a@example.com"
    assert "b@example.com" in stored[0][1] and "c@example.com" in stored[0][1]


def _answer(f: BinaryIO, line: bytes) -> bytes:
    """Send one raw line and return the last line of its reply without its CRLF; b"" once the server closed."""
    return say(f, line).rstrip(b"\r\n")


def test_command_lines_at_their_size_limit_are_taken_and_one_byte_longer_refused(server: Runtime) -> None:
    # aiosmtpd's limits: 512 octets a command line (CRLF excluded), MAIL 26 more with SIZE and 10 with SMTPUTF8.
    def mail(length: int) -> bytes:
        head, tail = b"MAIL FROM:<", b"@example.com>"
        return head + b"a" * (length - len(head) - len(tail)) + tail

    def rcpt(length: int) -> bytes:
        head, tail = b"RCPT TO:<", b"@example.com>"
        return head + b"b" * (length - len(head) - len(tail)) + tail

    sock, f = raw_session(server)
    with sock, f:
        assert _answer(f, b"EHLO client.test").startswith(b"250 ")
        assert _answer(f, mail(549)) == b"500 Command line too long"
        assert _answer(f, mail(548)) == b"250 2.1.0 OK"
        assert _answer(f, rcpt(513)) == b"500 Command line too long"
        assert _answer(f, rcpt(512)) == b"250 2.1.5 OK"


def test_a_command_line_past_the_stream_limit_is_read_to_its_end_and_refused(start_server: StartServer) -> None:
    runtime = start_server(smtp={"max_message_size": 20_000})  # the session's line limit: 20,000 bytes
    sock, f = raw_session(runtime)
    with sock, f:
        assert _answer(f, b"EHLO client.test").startswith(b"250 ")
        for length in (19_999, 20_000, 20_001, 20_002, 65_000):
            assert _answer(f, b"NOOP " + b"x" * (length - 5)) == b"500 Command line too long", length
        assert _answer(f, b"MAIL FROM:<a@example.com>") == b"250 2.1.0 OK"


def test_empty_and_non_ascii_command_lines_and_unknown_commands_are_answered_as_aiosmtpd_does(
    server: Runtime,
) -> None:
    sock, f = raw_session(server)
    with sock, f:
        assert _answer(f, b"") == b"500 Error: bad syntax"
        assert _answer(f, b"\xc3\xa9HLO client.test") == b"500 Error: bad syntax"
        assert _answer(f, b"EHLO client.test").startswith(b"250 ")
        replies = [_answer(f, b"XYZZY") for _ in range(5)]
        assert replies[:4] == [b'500 Error: command "XYZZY" not recognized'] * 4
        assert replies[4] == b"502 5.5.1 Too many unrecognized commands, goodbye."
        assert f.readline() == b""


def _campaign(channel: str = "smtp") -> Delivery:
    return Delivery(channel=channel, raw=(SEED / "campaign.json").read_bytes(), received_at="x",  # type: ignore[arg-type]
                    kind="document", remote_addr="127.0.0.1")


def _large_campaign() -> Delivery:
    """A campaign document over INLINE_LIMIT: extracted beside the loop, by `ingest_async` in a task."""
    small = _campaign()
    return Delivery(channel="smtp", raw=small.raw + b" " * INLINE_LIMIT, received_at="x", kind="document",
                    remote_addr="127.0.0.1")


def test_a_store_in_a_task_hands_its_receipt_or_error_to_the_store_outcome_it_was_given(tmp_path: Path) -> None:
    async def outcomes(pipeline: Pipeline) -> list[object]:
        loop = asyncio.get_running_loop()
        results: list[object] = []
        for locked_out in (False, True):
            outcome = StoreOutcome(loop=loop)
            blocker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
            if locked_out:
                blocker.execute("BEGIN EXCLUSIVE")
            try:
                assert pipeline.ingest_soon(_large_campaign(), outcome) is outcome
                assert len(pipeline._tasks) == 1  # the task kept until it is done
                (result,) = await asyncio.gather(outcome, return_exceptions=True)
                results.append(result.status if isinstance(result, Receipt) else type(result))
            finally:
                if locked_out:
                    blocker.execute("ROLLBACK")
                blocker.close()
            assert not pipeline._tasks
        return results

    writer = Writer(tmp_path / "m.db", busy_timeout=0.2)
    try:
        assert asyncio.run(outcomes(Pipeline(writer))) == ["stored", RetryLater]
    finally:
        writer.close()


def test_a_delivery_acknowledged_on_receipt_is_stored_pending_without_a_task_and_told_to_the_backlog_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    async def outcomes(pipeline: Pipeline) -> list[object]:
        loop = asyncio.get_running_loop()
        pipeline.deferred = frozenset({"smtp"})  # acknowledged on receipt: stored pending, then told the backlog
        told: list[tuple[int, bool, int]] = []
        pipeline.pending_listeners.append(
            lambda delivery_id, _: told.append((delivery_id, outcome.done(), threading.get_ident())))
        results: list[object] = []
        for delivery, locked_out in ((_campaign(), False), (_large_campaign(), False), (_campaign(), True)):
            outcome = StoreOutcome(loop=loop)
            blocker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
            if locked_out:
                blocker.execute("BEGIN EXCLUSIVE")
            try:
                assert pipeline.ingest_soon(delivery, outcome) is outcome
                assert not pipeline._tasks  # any size: only the raw bytes are stored now
                (result,) = await asyncio.gather(outcome, return_exceptions=True)
                results.append(result.status if isinstance(result, Receipt) else type(result))
            finally:
                if locked_out:
                    blocker.execute("ROLLBACK")
                blocker.close()
        # Each delivery stored pending told to the backlog on the loop's thread, before its outcome resolved.
        assert [(done, thread) for _, done, thread in told] == [(False, threading.get_ident())] * 2
        return results

    writer = Writer(tmp_path / "m.db", busy_timeout=0.2)
    try:
        with caplog.at_level(logging.INFO, logger="mailhook.ingest"):
            assert asyncio.run(outcomes(Pipeline(writer))) == ["pending", "pending", RetryLater]
    finally:
        writer.close()
    # Only the delivery not stored has its line now; the backlog writes the others' once their events are stored.
    assert [record.getMessage().count("status=retry-later") for record in caplog.records
            if record.name == "mailhook.ingest"] == [1]


def test_a_session_that_ends_while_a_store_in_a_task_is_going_on_is_cancelled_once_it_is_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    async def leave(pipeline: Pipeline) -> list[str]:
        loop = asyncio.get_running_loop()
        steps: list[str] = []
        outcome = StoreOutcome(loop=loop)

        async def session() -> None:
            try:
                await pipeline.ingest_soon(_large_campaign(), outcome)
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise
            steps.append("resumed")  # never: the outcome is dropped

        blocker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            task = asyncio.ensure_future(session())
            await asyncio.sleep(0)
            assert task.cancel()  # as aiosmtpd's connection_lost cancels the session
            for _ in range(3):
                await asyncio.sleep(0)
            assert not outcome.done() and not task.done() and steps == []  # the store goes on, the session waits
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the store gives up on the lock (RetryLater), retrieved by the pipeline's copy
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert task.cancelled() and outcome.done() and not pipeline._tasks
        return steps

    writer = Writer(tmp_path / "m.db", busy_timeout=0.2)
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            assert asyncio.run(leave(Pipeline(writer))) == ["cancelled"]
            gc.collect()
    finally:
        writer.close()
    assert "never retrieved" not in caplog.text


def test_a_session_cancelled_while_awaiting_its_store_outcome_is_cancelled_once_the_store_is_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps: list[str] = []

    async def session(outcome: StoreOutcome) -> None:
        try:
            await outcome
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise
        steps.append("resumed")  # never: the outcome is dropped

    async def leave() -> None:
        loop = asyncio.get_running_loop()
        outcome = StoreOutcome(loop=loop)
        task = asyncio.ensure_future(session(outcome))
        await asyncio.sleep(0)
        assert task.cancel()  # as aiosmtpd's connection_lost cancels the session
        for _ in range(3):
            await asyncio.sleep(0)
        assert not outcome.done() and not task.done() and steps == []  # the store goes on, the session waits
        outcome.set_exception(RuntimeError("disk"))  # retrieved by the task: nothing logged
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled() and steps == ["cancelled"]
        outcome = StoreOutcome(loop=loop)
        outcome.set_result("receipt")
        assert not outcome.cancel() and outcome.result() == "receipt"

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(leave())
    assert not caplog.records


def test_the_pipeline_s_mailbox_cancels_a_store_outcome_whose_store_was_cancelled() -> None:
    async def handed() -> list[object]:
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(loop)
        outcomes = [StoreOutcome(loop=loop) for _ in range(3)]
        sources: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in range(3)]
        sources[0].set_result("receipt")
        sources[1].set_exception(RuntimeError("disk"))
        sources[2].cancel()
        for outcome, source in zip(outcomes, sources, strict=True):
            mailbox.put(outcome, source)
        results = await asyncio.gather(*outcomes, return_exceptions=True)
        assert outcomes[2].cancelled()
        return [r if isinstance(r, str) else type(r) for r in results]

    assert asyncio.run(handed()) == ["receipt", RuntimeError, asyncio.CancelledError]


# A small message is stored on the loop; a large one, and any acknowledged on receipt, in a task.
_PADDING = b"".join(b"X-Padding-%d: %s\n" % (n, b"x" * 990) for n in range(70))


@pytest.mark.parametrize("leaving", ["eof", "reset"])
@pytest.mark.parametrize("kind", ["small", "large", "received"])
def test_a_message_whose_client_vanishes_while_it_is_stored_is_stored_and_waited_for(
    start_server: StartServer, leaving: str, kind: str,
) -> None:
    runtime = start_server(storage={"busy_timeout": 30}, smtp={"acknowledge": "received"} if kind == "received" else {})
    door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
    message = (_PADDING if kind == "large" else b"") + notification(61)
    assert (len(message) > INLINE_LIMIT) is (kind == "large")
    sock, f = raw_session(runtime)
    with locked(_db(runtime)):
        with sock, f:
            for line in (b"EHLO c", b"MAIL FROM:<a@callfire.com>", b"RCPT TO:<ops@example.com>", b"DATA"):
                assert say(f, line)[:1] in (b"2", b"3")
            f.write(message.replace(b"\n", b"\r\n") + b".\r\n")
            f.flush()
            wait_until(lambda: len(door.storing) == 1, 10, "the message being stored")
            if leaving == "reset":  # closed with an RST: the server sees the connection lost, not an EOF
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: not door.sessions, 10, "the session gone with its client")
        stores = list(door.storing)
        assert len(stores) == 1 and not stores[0].done()  # its store goes on, and the door waits for it
        assert runtime.inflight.used >= len(message)  # its bytes still held: given back when the store is done
    wait_until(lambda: not door.storing, 30, "the store done")
    wait_until(lambda: runtime.inflight.used == 0, 10, "the message's in-flight bytes given back")
    assert rows(_db(runtime), "SELECT count(*) FROM deliveries") == [(1,)]
    if kind != "received":  # acknowledged on receipt: its events are stored later by the backlog
        assert rows(_db(runtime), "SELECT count(*) FROM events WHERE resource_id = ?", 61) == [(1,)]


def _waiting_for(door: SmtpDoor) -> tuple[Connection, object]:
    """Return the door's one session once its command loop waits for a command, and the future it waits on."""
    wait_until(lambda: len(door.sessions) == 1, 10, "the session")
    (session,) = list(door.sessions)
    assert isinstance(session, Connection)
    wait_until(lambda: session.data_received == session.command_received, 10, "the loop waiting for a command")
    reader = session.fed
    assert reader is not None and reader._waiter is not None
    return session, reader._waiter


def test_a_transaction_sent_line_by_line_is_answered_without_waking_the_session_and_the_message_is_stored(
    server: Runtime,
) -> None:
    door = next(d for d in server.doors if isinstance(d, SmtpDoor))
    sock, f = raw_session(server)
    with sock, f:
        assert _answer(f, b"EHLO client.test").startswith(b"250 ")
        session, waiter = _waiting_for(door)
        assert _answer(f, b"MAIL FROM:<notifications@callfire.com> SIZE=2000") == b"250 2.1.0 OK"
        assert _answer(f, b"RCPT TO:<ops@example.com>") == b"250 2.1.5 OK"
        # The loop still waits on the same future: both were answered as they arrived, by `answer_at_once`.
        assert _waiting_for(door) == (session, waiter) and not waiter.done()  # type: ignore[attr-defined]
        assert session.envelope is not None and session.envelope.mail_from == "notifications@callfire.com"
        assert session.envelope.mail_options == ["SIZE=2000"] and session.envelope.rcpt_tos == ["ops@example.com"]
        assert _answer(f, b"DATA").startswith(b"354 ")
        assert _waiting_for(door) == (session, waiter) and not waiter.done()  # type: ignore[attr-defined]
        assert _answer(f, on_the_wire(notification(950_000_001)) + b".") == b"250 2.0.0 OK delivery 1 stored"
        # DATA and its whole body too were answered as they arrived (smtp/body_at_once.py): the loop never woke.
        assert _waiting_for(door) == (session, waiter) and not waiter.done()  # type: ignore[attr-defined]
        assert session.envelope is not None and session.envelope.mail_from is None  # the post-DATA state
    assert rows(_db(server), "SELECT count(*) FROM events WHERE resource_id = ?", 950_000_001) == [(1,)]


@pytest.mark.parametrize("lines", [
    [b"MAIL FROM:<notifications@callfire.com>\r\nRCPT TO:<ops@example.com>\r\n"],  # pipelined: two lines at once
    [b"MAIL FROM:<notifications@callfire.com> XFOO=1\r\n"],  # not the common case: aiosmtpd's method answers
    [b"MAIL FROM:<x@elsewhere.test>\r\n"],  # refused by the hook: counted as an error by `push`
    [b"RCPT TO:<ops@example.com>\r\n"],  # no MAIL yet
    [b"MAIL FROM:<notifications@callfire.com>\r\n", b"MAIL FROM:<notifications@callfire.com>\r\n"],  # nested
    [b"MAIL FROM:<notifications@callfire.com>\r\n", b"RCPT TO:<ops@example.com>\r\n",
     b"RCPT TO:<two@example.com>\r\n", b"RCPT TO:<three@example.com>\r\n"],  # the third past max_recipients: 452
    [b"MAIL FROM:<notifications@callfire.com>\r\n", b"RCPT TO:<nobody@example.com>\r\n"],  # refused recipient
    [b"MAIL FROM:<" + b"a" * 600 + b"@callfire.com>\r\n"],  # past the command's size limit
    [b"MAIL FROM:<\r\n"],  # aiosmtpd's address parser raises (IndexError): answered by handle_exception
    [b"MAIL FROM:<notifications@callfire.com>\r\n", b"RCPT TO:<@a:\r\n"],  # likewise for RCPT
])
def test_what_the_session_does_not_answer_at_once_is_answered_by_the_loop_as_before(
    start_server: StartServer, lines: list[bytes],
) -> None:
    replies = {}
    for at_once in (True, False):
        runtime = start_server(smtp={"senders": ("@callfire.com",), "accept": ("ops@example.com", "two@example.com"),
                                     "max_recipients": 2})
        door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
        sock, f = raw_session(runtime)
        with sock, f:
            assert _answer(f, b"EHLO client.test").startswith(b"250 ")
            session, _ = _waiting_for(door)
            if not at_once:  # every command through the loop, as before `answer_at_once`
                session.answer_at_once = lambda data: False  # type: ignore[method-assign]
            got = []
            for line in lines:
                f.write(line)
                f.flush()
                got += [read_reply(f).rstrip(b"\r\n") for _ in range(line.count(b"\n"))]
            got.append(_answer(f, b"NOOP"))
            replies[at_once] = (got, session.errors, session.envelope.mail_from if session.envelope else None)
    assert replies[True] == replies[False]
