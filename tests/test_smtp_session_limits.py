"""The SMTP door's session limits, each at and past its limit, in both acknowledge modes.

Lifetime, idle time that junk commands no longer extend, the junk-command cap,
the soft and hard error limits, eviction of idle sessions when every place is
taken, one summary line for connections refused at the caps, and envelope
addresses or HELO names that are not text.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer
from process_support import wait_until
from smtp_support import (
    client,
    locked,
    notification,
    raw_session,
    read_reply,
    read_until_closed,
    rows,
    say,
    smtp_address,
)

from mailhook.server import Runtime

pytestmark = pytest.mark.slow

MODES = ["stored", "received"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Both ways of acknowledging a message: once its events are stored, or once its raw bytes are."""
    return str(request.param)


def _db(runtime: Runtime) -> Path:
    db = runtime.settings.storage.db
    assert db is not None
    return db


def _stored(runtime: Runtime, text_id: int) -> bool:
    """Wait for pending extraction, then say whether the notification about text `text_id` is an event."""
    wait_until(lambda: rows(_db(runtime), "SELECT count(*) FROM deliveries WHERE status = 'pending'") == [(0,)],
               30, "no delivery pending")
    return rows(_db(runtime), "SELECT count(*) FROM events WHERE resource_id = ?", text_id) == [(1,)]


def _deliver(runtime: Runtime, text_id: int, **kwargs: Any) -> None:
    """Send one notification as a legitimate client does and check that it is stored."""
    with client(runtime, **kwargs) as smtp:
        smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(text_id))
    assert _stored(runtime, text_id)


def test_noops_no_longer_keep_a_session_open_past_the_idle_timeout(start_server: StartServer, mode: str) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "idle_timeout": 0.6})
    sock, f = raw_session(runtime)
    with sock, f:
        assert say(f, b"EHLO client.test").startswith(b"250 ")
        started = time.monotonic()
        replies = []
        # A NOOP every 0.1 s for up to 10 s: before, each one restarted the idle timer for ever.
        while time.monotonic() - started < 10 and not (replies and replies[-1][:3] != b"250"):
            time.sleep(0.1)
            try:
                replies.append(say(f, b"NOOP"))
            except OSError:
                break
        closed_after = time.monotonic() - started
        replies.append(read_until_closed(f))
    assert closed_after < 5, f"still open after {closed_after:.1f} s of NOOPs"
    assert b"421 4.4.2" in b"".join(replies)
    _deliver(runtime, 1)


def test_the_idle_timeout_counts_from_the_last_command_though_the_timer_is_kept_between_commands(
    start_server: StartServer, mode: str
) -> None:
    # The timer armed at one command is kept when the next one comes and re-armed when it fires early:
    # the session must still live `idle_timeout` after its last command, and no longer.
    runtime = start_server(smtp={"acknowledge": mode, "idle_timeout": 1.0})
    sock, f = raw_session(runtime)
    with sock, f:
        assert say(f, b"EHLO client.test").startswith(b"250 ")  # the timer: at 1.0 s from here
        time.sleep(0.6)
        assert say(f, b"MAIL FROM:<notifications@callfire.com>").startswith(b"250 ")  # idle until 1.6 s
        time.sleep(0.7)  # past the first timer (1.0 s), before the deadline it was kept for
        assert say(f, b"RCPT TO:<ops@example.com>").startswith(b"250 ")  # idle until ~2.3 s
        last = time.monotonic()
        closing = read_until_closed(f)
        idle = time.monotonic() - last
    assert b"421 4.4.2 Timeout" in closing
    assert 0.9 < idle < 5, idle
    _deliver(runtime, 3)


def test_a_session_is_closed_at_its_time_limit_even_while_it_sends_mail(start_server: StartServer, mode: str) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "max_session_time": 1.5})
    with client(runtime) as smtp:
        smtp.ehlo()
        started, sent, ended = time.monotonic(), 0, None
        while ended is None and time.monotonic() - started < 15:
            try:
                smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(100 + sent))
            except smtplib.SMTPException as exc:
                ended = exc
            else:
                sent += 1
                time.sleep(0.05)
        lasted = time.monotonic() - started
    assert 1.3 < lasted < 8, lasted
    # The 421 comes at whichever command the limit falls on; at RCPT smtplib reports it per recipient.
    codes = ({code for code, _ in ended.recipients.values()} if isinstance(ended, smtplib.SMTPRecipientsRefused)
             else {getattr(ended, "smtp_code", 0)})
    assert isinstance(ended, smtplib.SMTPServerDisconnected) or codes == {421}, ended
    assert sent > 3
    assert all(_stored(runtime, 100 + i) for i in range(sent))  # everything acknowledged was kept
    _deliver(runtime, 2)


def test_the_time_limit_lets_a_message_being_stored_get_its_reply_first(start_server: StartServer, mode: str) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "max_session_time": 0.5}, storage={"busy_timeout": 30})
    sock, f = raw_session(runtime)
    with sock, f:
        for line in (b"EHLO c", b"MAIL FROM:<a@callfire.com>", b"RCPT TO:<ops@example.com>", b"DATA"):
            assert say(f, line)[:1] in (b"2", b"3")
        with locked(_db(runtime)):
            f.write(notification(3).replace(b"\n", b"\r\n") + b".\r\n")
            f.flush()
            time.sleep(1.2)  # past the time limit while the store waits for the lock
        said = read_until_closed(f)
    lines = said.splitlines()
    assert lines[0].startswith(b"250 2.0.0"), said
    assert lines[-1].startswith(b"421 4.4.2 Session time limit"), said
    assert _stored(runtime, 3)


JUNK = [b"NOOP", b"RSET", b"HELP", b"VRFY <ops@example.com>", b"EXPN staff"]


def test_junk_commands_are_answered_up_to_the_cap_and_the_next_one_closes_the_session(
    start_server: StartServer, mode: str
) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "max_junk_commands": 5})
    sock, f = raw_session(runtime)
    with sock, f:
        assert say(f, b"EHLO c").startswith(b"250 ")
        assert [say(f, c)[:3] for c in JUNK] == [b"250", b"250", b"250", b"252", b"502"]
        assert say(f, b"NOOP").startswith(b"421 4.7.0 Too many commands without mail")
        assert read_until_closed(f) == b""
    _deliver(runtime, 4)


def test_an_accepted_message_resets_the_junk_count_and_a_third_ehlo_is_junk(
    start_server: StartServer, mode: str
) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "max_junk_commands": 3})
    with client(runtime) as smtp:
        smtp.ehlo()
        assert [smtp.noop()[0] for _ in range(3)] == [250] * 3
        smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(5))
        assert [smtp.rset()[0] for _ in range(2)] == [250] * 2
        assert smtp.ehlo()[0] == 250  # the second greeting is the protocol (as after STARTTLS)
        assert smtp.ehlo()[0] == 250  # the third is junk number 3
        code, text = smtp.docmd("EHLO", "again")
        assert (code, text[:5]) == (421, b"4.7.0")
    assert _stored(runtime, 5)


def test_errors_past_the_soft_limit_are_delayed_and_the_hard_limit_closes_the_session(
    start_server: StartServer, mode: str
) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "soft_error_limit": 2, "hard_error_limit": 4,
                                 "error_sleep_time": 1.0})
    sock, f = raw_session(runtime)
    with sock, f:
        assert say(f, b"EHLO c").startswith(b"250 ")
        times, replies = [], []
        for _ in range(4):
            started = time.monotonic()
            replies.append(say(f, b"RCPT TO:<ops@example.com>"))  # no MAIL yet: 503
            times.append(time.monotonic() - started)
        said = read_until_closed(f)
    assert all(r.startswith(b"503") for r in replies), replies
    assert max(times[:2]) < 0.9 and min(times[2:]) >= 0.99, times
    assert said.startswith(b"421 4.7.0 Too many errors"), said
    _deliver(runtime, 6)


def test_an_accepted_message_forgives_earlier_errors(start_server: StartServer, mode: str) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "hard_error_limit": 3})
    with client(runtime) as smtp:
        smtp.ehlo()
        assert [smtp.rcpt("ops@example.com")[0] for _ in range(2)] == [503, 503]
        smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(7))
        assert [smtp.rcpt("ops@example.com")[0] for _ in range(2)] == [503, 503]
        assert smtp.noop()[0] == 250
        assert smtp.rcpt("ops@example.com")[0] == 503  # the third since the message: the session ends
        code, text = smtp.noop()  # the 421 sent right after that 503 is the answer read now
        assert (code, text) == (421, b"4.7.0 Too many errors, closing connection")
    assert _stored(runtime, 7)


BAD_ADDRESSES = [b"a\xff@example.com", b"\xc3\x28@example.com", b"a\x00b@example.com", b"a\rb@example.com",
                 b"a\x01@example.com", b"a\x7f@example.com", b"ops@exa\x00mple.com", b"a@b\xed\xa0\x80.com"]
# Line and paragraph separators and bidi controls: a log or a display reading them would show something else.
INVISIBLE = ["\u2028", "\u2029", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
             "\u2069"]
BAD_ADDRESSES += [f"a{c}b@example.com".encode() for c in INVISIBLE]


@pytest.mark.parametrize("address", BAD_ADDRESSES, ids=[repr(a)[2:-1] for a in BAD_ADDRESSES])
def test_addresses_that_are_not_utf8_or_hold_control_characters_get_501_never_451(
    start_server: StartServer, mode: str, address: bytes
) -> None:
    runtime = start_server(smtp={"acknowledge": mode})
    sock, f = raw_session(runtime)
    with sock, f:
        assert say(f, b"EHLO c").startswith(b"250 ")
        assert say(f, b"MAIL FROM:<" + address + b"> SMTPUTF8").startswith(b"501 5.1.7 ")
        assert say(f, b"MAIL FROM:<a@callfire.com>").startswith(b"250 ")
        assert say(f, b"RCPT TO:<" + address + b">").startswith(b"501 5.1.3 ")
        assert say(f, b"RCPT TO:<ops@example.com>").startswith(b"250 ")
        assert say(f, b"DATA").startswith(b"354 ")
        f.write(notification(8).replace(b"\n", b"\r\n") + b".\r\n")
        f.flush()
        assert read_reply(f).startswith(b"250 ")
    assert _stored(runtime, 8)
    assert rows(_db(runtime), "SELECT envelope_from, envelope_to FROM deliveries") == [
        ("a@callfire.com", '["ops@example.com"]')]


def test_a_helo_name_that_is_not_utf8_or_holds_control_characters_gets_501(start_server: StartServer) -> None:
    runtime = start_server()
    sock, f = raw_session(runtime)
    with sock, f:
        for name in (b"h\x00st", b"h\xffst", b"h\x1bst"):
            assert say(f, b"EHLO " + name).startswith(b"501 5.5.2 ")
            assert say(f, b"HELO " + name).startswith(b"501 5.5.2 ")
        assert say(f, b"EHLO good.example").startswith(b"250 ")


def test_a_helo_name_holding_a_line_separator_or_bidi_control_gets_501(start_server: StartServer) -> None:
    runtime = start_server(smtp={"hard_error_limit": 100, "error_sleep_time": 0})
    sock, f = raw_session(runtime)
    with sock, f:
        for c in INVISIBLE:
            name = f"mx{c}.example".encode()
            assert say(f, b"EHLO " + name).startswith(b"501 5.5.2 "), c
            assert say(f, b"HELO " + name).startswith(b"501 5.5.2 "), c
        assert say(f, "EHLO mx.\u00e9xample".encode()).startswith(b"250 ")  # other non-ASCII text is fine


def test_rcpts_past_max_recipients_count_as_errors_past_the_overshoot_limit(
    start_server: StartServer, mode: str
) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "max_recipients": 3, "max_recipient_overshoot": 2,
                                 "hard_error_limit": 3, "error_sleep_time": 0})
    sock, f = raw_session(runtime)
    with sock, f:
        assert say(f, b"EHLO c").startswith(b"250 ")
        assert say(f, b"MAIL FROM:<a@callfire.com>").startswith(b"250 ")
        rcpts = [say(f, b"RCPT TO:<ops@example.com>")[:3] for _ in range(5)]
        assert rcpts == [b"250"] * 3 + [b"452"] * 2  # at the overshoot limit: no error yet
        assert say(f, b"DATA").startswith(b"354 ")
        f.write(notification(60).replace(b"\n", b"\r\n") + b".\r\n")
        f.flush()
        assert read_reply(f).startswith(b"250 ")  # the accepted message forgives the overshoot
        assert say(f, b"MAIL FROM:<a@callfire.com>").startswith(b"250 ")
        # Pipelined, as a RCPT flood comes: past the overshoot limit each 452 is an error; the third closes.
        f.write(b"RCPT TO:<ops@example.com>\r\n" * 100)
        f.flush()
        said = read_until_closed(f)
    replies = said.splitlines()
    assert [r[:3] for r in replies] == [b"250"] * 3 + [b"452"] * 5 + [b"421"], said
    assert replies[-1].startswith(b"421 4.7.0 Too many errors"), said
    assert _stored(runtime, 60)
    _deliver(runtime, 61)


def test_connections_refused_at_the_caps_are_logged_as_one_summary_line(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailhook")
    runtime = start_server(smtp={"max_per_ip": 2, "max_sessions": 3, "evict_after": 0, "refusal_log_interval": 4.0})
    first, second = client(runtime), client(runtime)
    other = client(runtime, source_address=("127.0.0.2", 0))
    refusals = 0
    for source in ["127.0.0.1"] * 25 + ["127.0.0.3"] * 5:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client(runtime, source_address=(source, 0))
        assert refused.value.smtp_code == 421
        refusals += 1
    wait_until(lambda: any("refused" in r.getMessage() for r in caplog.records), 20, "the refusal summary line")
    lines = [r.getMessage() for r in caplog.records if r.name == "mailhook.smtp" and r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"refused {refusals} connections in the last 4 s: 5 at smtp.max_sessions, "
                               "25 at smtp.max_per_ip, 0 at smtp.max_connection_rate; "
                               "from 2 addresses, most from 127.0.0.1 (25)"), lines[0]
    for smtp in (first, second, other):
        smtp.quit()


async def _slow_noops(port: int, source: str, stop: threading.Event, closed: list[bytes]) -> None:
    """One attacker: connect, EHLO, then a NOOP every 0.2 s; when the server closes the session, come back."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            banner = await reader.readline()
            if banner.startswith(b"220"):
                writer.write(b"EHLO attacker.test\r\n")
                while not stop.is_set():
                    await asyncio.sleep(0.2)
                    writer.write(b"NOOP\r\n")
                    await writer.drain()
                    while (line := await reader.readline())[3:4] == b"-":
                        pass
                    if not line.startswith(b"250"):
                        closed.append(line)
                        break
            else:
                await asyncio.sleep(0.05)
        except OSError:
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"], ids=["another-address", "an-attacking-address"])
def test_slow_noop_sessions_filling_every_place_do_not_lock_out_a_client_that_sends_mail(
    start_server: StartServer, mode: str, source: str
) -> None:
    # The idle timeout stays long: sessions are made room for because they sent no mail command lately.
    runtime = start_server(smtp={"acknowledge": mode, "max_sessions": 200, "max_per_ip": 20, "idle_timeout": 300,
                                 "evict_after": 1.0})
    stop, closed = threading.Event(), []
    ready = threading.Event()

    def attack() -> None:
        async def main() -> None:
            port = smtp_address(runtime)[1]
            tasks = [asyncio.create_task(_slow_noops(port, f"127.0.0.{2 + i % 10}", stop, closed)) for i in range(200)]
            await asyncio.sleep(1.0)
            ready.set()
            await asyncio.gather(*tasks)

        asyncio.run(main())

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        assert ready.wait(30)
        door = next(d for d in runtime.doors if d.name == "smtp")
        wait_until(lambda: len(door.sessions) >= 200, 30, "the attack taking every place")  # type: ignore[attr-defined]
        time.sleep(1.5)  # every attacking session has been without a mail command for longer than evict_after
        for n in range(3):  # during the attack, each within a bound the old code never met
            started = time.monotonic()
            _deliver(runtime, 10 + n, source_address=(source, 0))
            assert time.monotonic() - started < 10
            assert len(door.sessions) >= 190  # type: ignore[attr-defined]  # the attack goes on
            assert max(door.per_ip.values()) <= 20  # type: ignore[attr-defined]
    finally:
        stop.set()
        attacker.join(timeout=60)
    # A legitimate session took the place of an attacking one (the others found one freed by the one before).
    metrics = runtime.metrics.render().decode()
    assert 'mailhook_rejected_total{channel="smtp",reason="evicted"}' in metrics, metrics
    _deliver(runtime, 20, source_address=(source, 0))


async def _slow_rcpts(port: int, source: str, stop: threading.Event) -> None:
    """One attacker: connect, EHLO, MAIL, then a RCPT every 0.2 s, never DATA; when closed, come back."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            if (await reader.readline()).startswith(b"220"):
                writer.write(b"EHLO attacker.test\r\nMAIL FROM:<a@callfire.com>\r\n")
                while not stop.is_set():
                    await asyncio.sleep(0.2)
                    writer.write(b"RCPT TO:<ops@example.com>\r\n")
                    await writer.drain()
                    line = await reader.readline()
                    while line[3:4] == b"-" or line.startswith(b"250 2.1.0"):  # EHLO's lines, MAIL's 250
                        line = await reader.readline()
                    if not line.startswith((b"250", b"452")):
                        break
            else:
                await asyncio.sleep(0.05)
        except OSError:
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"], ids=["another-address", "an-attacking-address"])
def test_sessions_that_keep_sending_rcpt_do_not_lock_out_a_client_that_sends_mail(
    start_server: StartServer, mode: str, source: str
) -> None:
    # Each RCPT is a mail command: eviction looks at the time since a session's last accepted message.
    runtime = start_server(smtp={"acknowledge": mode, "max_sessions": 40, "max_per_ip": 8, "idle_timeout": 300,
                                 "evict_after": 1.0})
    stop = threading.Event()
    ready = threading.Event()

    def attack() -> None:
        async def main() -> None:
            port = smtp_address(runtime)[1]
            tasks = [asyncio.create_task(_slow_rcpts(port, f"127.0.0.{2 + i % 5}", stop)) for i in range(40)]
            await asyncio.sleep(1.0)
            ready.set()
            await asyncio.gather(*tasks)

        asyncio.run(main())

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        assert ready.wait(30)
        door = next(d for d in runtime.doors if d.name == "smtp")
        wait_until(lambda: len(door.sessions) >= 40, 30, "the attack taking every place")  # type: ignore[attr-defined]
        time.sleep(1.5)  # every attacking session started longer than evict_after ago, and sent RCPTs since
        for n in range(3):
            started = time.monotonic()
            _deliver(runtime, 70 + n, source_address=(source, 0))
            assert time.monotonic() - started < 10
            assert len(door.sessions) >= 35  # type: ignore[attr-defined]  # the attack goes on
            assert max(door.per_ip.values()) <= 8  # type: ignore[attr-defined]
    finally:
        stop.set()
        attacker.join(timeout=60)
    metrics = runtime.metrics.render().decode()
    assert 'mailhook_rejected_total{channel="smtp",reason="evicted"}' in metrics, metrics
    _deliver(runtime, 80, source_address=(source, 0))


def test_no_control_character_or_undecodable_byte_from_a_peer_reaches_a_deliveries_column(
    start_server: StartServer, mode: str
) -> None:
    runtime = start_server(smtp={"acknowledge": mode})
    raw = (notification(30).replace(b"\n", b"\r\n")
           .replace(b"Message-ID: <30.notify@callfire.test>", b"Message-ID: <30\x00\x1b.\xff@callfire.test>")
           .replace(b"Subject: CallFire notification 30", b"Subject: a\x00b\x7f =?utf-8?q?c=00d=0De=1B?= \xed\xa0\x80"))
    sock, f = raw_session(runtime)
    with sock, f:
        for line in (b"EHLO c", b"MAIL FROM:<a@callfire.com>", b"RCPT TO:<ops@example.com>", b"DATA"):
            assert say(f, line)[:1] in (b"2", b"3")
        f.write(raw + b".\r\n")
        f.flush()
        assert read_reply(f).startswith(b"250 ")
    assert _stored(runtime, 30)
    columns = [name for (name,) in rows(_db(runtime), "SELECT name FROM pragma_table_info('deliveries')")]
    (row,) = rows(_db(runtime), "SELECT * FROM deliveries")
    values = dict(zip(columns, row, strict=True))
    assert values["raw"] == raw
    texts = {k: v for k, v in values.items() if isinstance(v, str)}
    assert not [name for name, text in texts.items() if "\0" in text]
    for name in ("subject", "message_id", "envelope_from", "envelope_to", "remote_addr"):  # what the peer sent
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in texts[name]), (name, texts[name])
    assert texts["message_id"] == "<30\ufffd\ufffd.@callfire.test>"


def test_connections_past_the_rate_per_address_get_421_while_other_addresses_connect(
    start_server: StartServer, mode: str
) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "max_connection_rate": 3})
    for _ in range(3):
        client(runtime).quit()
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        client(runtime)
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (421, b"4.7.0")
    _deliver(runtime, 40, source_address=("127.0.0.2", 0))
    metrics = runtime.metrics.render().decode()
    assert 'mailhook_rejected_total{channel="smtp",reason="too_fast"} 1.0' in metrics


def test_an_idle_session_makes_room_but_one_whose_message_is_being_stored_never_does(
    start_server: StartServer, mode: str
) -> None:
    runtime = start_server(smtp={"acknowledge": mode, "max_per_ip": 2, "evict_after": 0.3},
                           storage={"busy_timeout": 30})
    busy_sock, busy = raw_session(runtime)  # the older session: the first to go, were it not storing
    idle_sock, idle = raw_session(runtime)
    with idle_sock, idle, busy_sock, busy:
        for line in (b"EHLO busy", b"MAIL FROM:<a@callfire.com>", b"RCPT TO:<ops@example.com>", b"DATA"):
            assert say(busy, line)[:1] in (b"2", b"3")
        with locked(_db(runtime)):
            busy.write(notification(50).replace(b"\n", b"\r\n") + b".\r\n")
            busy.flush()
            time.sleep(0.3)
            # Neither had a message accepted and the busy one started first, so it is the longest
            # without one; it is storing a message, so the idle one goes instead.
            assert say(idle, b"EHLO idle").startswith(b"250 ")
            time.sleep(0.6)
            with client(runtime) as newcomer:  # a third session from the same address, at max_per_ip 2
                assert newcomer.noop()[0] == 250
                assert read_until_closed(idle).startswith(b"421 4.3.2")
        assert read_reply(busy).startswith(b"250 2.0.0")
    assert _stored(runtime, 50)


def _session_after_one_message(runtime: Runtime, smtp: smtplib.SMTP, n: int) -> tuple[Any, Any]:
    """Send notification `n` on a new session; return the door's one session and its idle timer."""
    door = next(d for d in runtime.doors if d.name == "smtp")
    smtp.ehlo()
    smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(n))
    (session,) = door.sessions  # type: ignore[attr-defined]
    return session, session._timeout_handle


def test_a_session_s_idle_timer_outlives_the_messages_it_stores(start_server: StartServer) -> None:
    # Storing a message used to cancel the timer, and the reply made a new one: a TimerHandle and a
    # heap entry per message. The timer is kept (it holds off while a message is stored) instead.
    runtime = start_server(smtp={"idle_timeout": 60})
    with client(runtime) as smtp:
        session, timer = _session_after_one_message(runtime, smtp, 501)
        for n in range(502, 505):
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(n))
        assert session._timeout_handle is timer and not timer.cancelled()
    assert rows(_db(runtime), "SELECT count(*) FROM deliveries") == [(4,)]


def test_a_session_s_idle_timer_is_armed_anew_after_its_connection_is_lost(start_server: StartServer) -> None:
    # aiosmtpd's connection_lost cancels the timer; the session no longer asks the handle whether it was
    # cancelled on every command, so a restart after that must still arm a live timer, not keep the dead one.
    runtime = start_server(smtp={"idle_timeout": 60})
    with client(runtime) as smtp:
        session, timer = _session_after_one_message(runtime, smtp, 511)
    wait_until(timer.cancelled, 10, "the session's connection_lost")
    restarted = threading.Event()

    def restart() -> None:
        session._reset_timeout()
        restarted.set()

    session.loop.call_soon_threadsafe(restart)
    assert restarted.wait(10)
    assert session._timeout_handle is not timer and not session._timeout_handle.cancelled()
    session.loop.call_soon_threadsafe(session._timeout_handle.cancel)


def test_a_mail_sent_while_the_server_stops_is_answered_421_and_the_session_closed(start_server: StartServer) -> None:
    # A session in a transaction is let finish it when the door closes; a new MAIL after that (here after
    # RSET) gets the shutdown reply from the door's own MAIL.
    runtime = start_server()
    door = next(d for d in runtime.doors if d.name == "smtp")
    sock, f = raw_session(runtime)
    with sock, f:
        assert say(f, b"EHLO client.test").startswith(b"250 ")
        assert say(f, b"MAIL FROM:<notifications@callfire.com>").startswith(b"250 ")
        (session,) = door.sessions  # type: ignore[attr-defined]
        closing: list[asyncio.Future[None]] = []
        session.loop.call_soon_threadsafe(lambda: closing.append(asyncio.ensure_future(door.close())))
        wait_until(lambda: closing and door.closing, 10, "the door closing")  # type: ignore[attr-defined]
        assert say(f, b"RSET").startswith(b"250 ")
        f.write(b"MAIL FROM:<notifications@callfire.com>\r\n")
        f.flush()
        assert read_until_closed(f) == b"421 4.3.2 Service shutting down, please try again later\r\n"
