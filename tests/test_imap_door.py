"""The IMAP door against a real Dovecot: every message stored once, moved only after its commit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import dovecot
import pytest
from outside import Certificate
from process_support import ALLOW_ROOT, wait_until

from mailhook.config.settings import ImapSettings, Settings, SmtpSettings, StorageSettings
from mailhook.config.validate import validate
from mailhook.errors import ConfigError
from mailhook.extract import extract
from mailhook.imap.door import Account, Watcher, start_watchers, stop_watchers
from mailhook.pipeline import Pipeline
from mailhook.store.connection import connect, open_readonly
from mailhook.store.writer import Writer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("dovecot", "dovecot-imapd"),
    pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's throwaway instance must be started as root"),
]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "email"
WAIT = 15.0  # seconds to wait for something that should happen at once; only reached on failure
PROCESSED = "CallFire.Processed"  # the default CallFire/Processed in Dovecot's maildir hierarchy
QUARANTINE = "CallFire.Quarantine"


def notification(n: int) -> bytes:
    """Return a CallFire text notification email whose event and Message-ID are unique to `n`."""
    return (
        "From: CallFire <notifications@callfire.com>\r\n"
        "To: ops@example.com\r\n"
        f"Subject: Outbound Text Finished {n}\r\n"
        f"Message-ID: <{n}.imap-test@callfire.com>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/xml; charset=UTF-8\r\n"
        "\r\n"
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        '<n:TextNotification xmlns="http://api.callfire.com/data"'
        ' xmlns:n="http://api.callfire.com/notification/xsd">\r\n'
        "<n:SubscriptionId>41001</n:SubscriptionId>\r\n"
        f'<Text id="{700000 + n}"><FromNumber>67076</FromNumber><ToNumber>15551230{n:03d}</ToNumber>'
        "<State>FINISHED</State><Inbound>false</Inbound><Created>2026-11-27T10:00:00Z</Created>"
        "<Modified>2026-11-27T10:00:05Z</Modified><FinalResult>SENT</FinalResult>"
        f'<TextRecord id="{800000 + n}"><Result>SENT</Result><Message>hello {n}</Message></TextRecord>'
        "</Text></n:TextNotification>\r\n"
    ).encode()


UNREADABLE = (
    b"From: someone@example.com\r\nTo: ops@example.com\r\nSubject: lunch?\r\n"
    b"Message-ID: <lunch@example.com>\r\n\r\nNo notification in here.\r\n"
)


@pytest.fixture
def server() -> Iterator[dovecot.Dovecot]:
    imap = dovecot.start()
    yield imap
    imap.stop()


def make_settings(imap: dovecot.Dovecot, db: Path, **changes: Any) -> Settings:
    """Return settings for polling `imap` in plain text with short reconnect delays."""
    smtp_changes = {k: changes.pop(k) for k in ("max_message_size",) if k in changes}
    section = ImapSettings(host="127.0.0.1", port=imap.port, security="none", user=imap.user,
                           password=imap.password, reconnect_delay=0.05, reconnect_max=0.5)
    return validate(Settings(storage=StorageSettings(db=db), imap=replace(section, **changes),
                             smtp=replace(SmtpSettings(), **smtp_changes)))


@contextmanager
def watching(settings: Settings) -> Iterator[Watcher]:
    """Run a watcher on the first configured folder with its own writer, as `mailhook imap` does."""
    assert settings.storage.db is not None
    writer = Writer(settings.storage.db, busy_timeout=settings.storage.busy_timeout)
    pipeline = Pipeline(writer, settings.subscriptions)
    watchers = start_watchers(Account.from_settings(settings), pipeline, writer)
    try:
        yield watchers[0]
    finally:
        stop_watchers(watchers)
        writer.close()


def settled(watcher: Watcher, stored: int) -> bool:
    """Wait until the watcher stored `stored` messages in all and waits for more, everything acted on."""
    return watcher.wait_for(lambda: watcher.stored >= stored and watcher.waiting, WAIT)


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    database = open_readonly(db)
    try:
        return [tuple(row) for row in database.execute(sql, params).fetchall()]
    finally:
        database.conn.close()


def count(db: Path, sql: str, *params: Any) -> int:
    value: int = rows(db, sql, *params)[0][0]
    return value


def test_messages_already_there_are_stored_then_moved(server: dovecot.Dovecot, tmp_path: Path) -> None:
    server.append("INBOX", notification(1), UNREADABLE, notification(2))
    db = tmp_path / "m.db"
    with watching(make_settings(server, db)) as watcher:
        assert settled(watcher, 3)
    assert server.messages("INBOX") == {}
    assert sorted(raw for raw, _ in server.messages(PROCESSED).values()) == [notification(1), notification(2)]
    assert [raw for raw, _ in server.messages(QUARANTINE).values()] == [UNREADABLE]
    assert rows(db, "SELECT status, channel FROM deliveries ORDER BY id") == [
        ("stored", "imap"), ("quarantined", "imap"), ("stored", "imap")
    ]
    assert count(db, "SELECT count(*) FROM events") == 2
    assert rows(db, "SELECT folder, last_uid FROM imap_checkpoints") == [("INBOX", 3)]
    sources = [s for (s,) in rows(db, "SELECT source FROM deliveries ORDER BY id")]
    assert sources[0].startswith("imap://alice@127.0.0.1/INBOX;UIDVALIDITY=")
    assert sources[0].endswith("/;UID=1")


def test_message_appended_while_idling_is_pushed(
    server: dovecot.Dovecot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The IDLE re-issue and poll interval are far beyond the wait: only a push can deliver in time.
    settings = make_settings(server, tmp_path / "m.db", idle_timeout=600.0, poll_interval=600.0)
    with caplog.at_level(logging.INFO, logger="mailhook"), watching(settings) as watcher:
        assert watcher.wait_for(lambda: watcher.idling, WAIT)
        server.append("INBOX", notification(1))
        assert settled(watcher, 1)
        server.append("INBOX", notification(2), notification(3))
        assert settled(watcher, 3)
        assert watcher.idling
    # Stopping woke the thread out of IDLE: it logged out by itself, without its socket being cut.
    assert "still busy" not in caplog.text
    assert caplog.records[-1].getMessage().endswith(": stopped")
    assert len(server.messages(PROCESSED)) == 3
    assert count(tmp_path / "m.db", "SELECT count(*) FROM events") == 3


def test_restart_resumes_after_the_checkpoint(server: dovecot.Dovecot, tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    settings = make_settings(server, db, action="seen")
    server.append("INBOX", *(notification(n) for n in range(1, 4)))
    with watching(settings) as watcher:
        assert settled(watcher, 3)
    server.append("INBOX", notification(4), notification(5))
    with watching(settings) as watcher:
        assert settled(watcher, 2)
        assert watcher.stored == 2
    assert count(db, "SELECT count(*) FROM deliveries") == 5
    assert count(db, "SELECT count(*) FROM events") == 5
    messages = server.messages("INBOX")
    assert len(messages) == 5
    assert all(b"\\Seen" in flags for _, flags in messages.values())


def test_messages_stored_before_a_crash_are_moved_not_stored_again(server: dovecot.Dovecot, tmp_path: Path) -> None:
    # `leave` stores and checkpoints without touching the mailbox: the state a crash right after
    # the commit leaves behind. The next run must only move them, each to its folder.
    db = tmp_path / "m.db"
    server.append("INBOX", notification(1), UNREADABLE)
    with watching(make_settings(server, db, action="leave")) as watcher:
        assert settled(watcher, 2)
    assert len(server.messages("INBOX")) == 2
    with watching(make_settings(server, db)) as watcher:
        assert watcher.wait_for(lambda: watcher.waiting, WAIT)
        assert watcher.stored == 0
    assert server.messages("INBOX") == {}
    assert [raw for raw, _ in server.messages(PROCESSED).values()] == [notification(1)]
    assert [raw for raw, _ in server.messages(QUARANTINE).values()] == [UNREADABLE]
    assert count(db, "SELECT count(*) FROM deliveries") == 2


def test_uidvalidity_change_rescans_the_folder(server: dovecot.Dovecot, tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    settings = make_settings(server, db, folders=("Alerts",))
    server.append("Alerts", *(notification(n) for n in range(1, 4)))
    with watching(settings) as watcher:
        assert settled(watcher, 3)
    (old_validity, old_uid), = rows(db, "SELECT uidvalidity, last_uid FROM imap_checkpoints")
    with server.client() as client:
        client.delete_folder("Alerts")
        client.create_folder("Alerts")
    # New UIDs start at 1 again, below the old checkpoint; one message is a redelivery.
    server.append("Alerts", notification(4), notification(1), notification(5))
    with watching(settings) as watcher:
        assert settled(watcher, 3)
    (new_validity, new_uid), = rows(db, "SELECT uidvalidity, last_uid FROM imap_checkpoints")
    assert new_validity != old_validity
    assert (old_uid, new_uid) == (3, 3)
    assert count(db, "SELECT count(*) FROM events") == 5
    assert rows(db, "SELECT status FROM deliveries WHERE id > 3 ORDER BY id") == [
        ("stored",), ("duplicate",), ("stored",)
    ]
    assert server.messages("Alerts") == {}


def test_storage_trouble_leaves_the_message_for_a_later_try(server: dovecot.Dovecot, tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    base = make_settings(server, db)
    settings = replace(base, storage=replace(base.storage, busy_timeout=0.05))
    with watching(settings) as watcher:
        assert watcher.wait_for(lambda: watcher.idling, WAIT)
        lock = connect(db)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # another writer holding the database past the busy timeout
            server.append("INBOX", notification(1))
            assert watcher.wait_for(lambda: any("storage unavailable" in e for e in watcher.errors), WAIT)
            assert [raw for raw, _ in server.messages("INBOX").values()] == [notification(1)]
            assert watcher.stored == 0
            lock.execute("ROLLBACK")
        finally:
            lock.close()
        assert settled(watcher, 1)
    assert server.messages("INBOX") == {}
    assert count(db, "SELECT count(*) FROM deliveries") == 1


def test_dropped_connection_is_reopened(server: dovecot.Dovecot, tmp_path: Path) -> None:
    with watching(make_settings(server, tmp_path / "m.db")) as watcher:
        assert watcher.wait_for(lambda: watcher.idling, WAIT)
        server.kick()
        assert watcher.wait_for(lambda: watcher.sessions == 2 and watcher.idling, WAIT)
        server.append("INBOX", notification(1))
        assert settled(watcher, 1)
    assert watcher.errors and watcher.errors[0].startswith("connection lost")


def test_bad_password_is_reported_and_retried_with_growing_delays(
    server: dovecot.Dovecot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(server, tmp_path / "m.db", password="wrong-password", reconnect_delay=0.01,
                             reconnect_max=0.08)
    with caplog.at_level(logging.INFO, logger="mailhook"), watching(settings) as watcher:
        assert watcher.wait_for(lambda: len(watcher.errors) >= 4, WAIT)
        assert watcher.sessions == 0
    assert "login failed" in watcher.errors[0]
    assert "AUTHENTICATIONFAILED" in watcher.errors[0]
    delays = list(watcher.delays)[:4]
    assert delays == sorted(delays)  # doubling delays with at most half taken off by jitter
    assert delays[-1] <= 0.08
    assert "wrong-password" not in caplog.text
    assert any(r.levelno == logging.ERROR and "login failed" in r.getMessage() for r in caplog.records)


def test_without_move_messages_are_copied_then_expunged(tmp_path: Path) -> None:
    imap = dovecot.start(capabilities="IMAP4rev1 IDLE UIDPLUS")
    try:
        imap.append("INBOX", notification(1), UNREADABLE, notification(2))
        with watching(make_settings(imap, tmp_path / "m.db")) as watcher:
            assert settled(watcher, 3)
        assert imap.messages("INBOX") == {}
        assert len(imap.messages(PROCESSED)) == 2
        assert len(imap.messages(QUARANTINE)) == 1
        assert all(b"\\Deleted" not in flags for _, flags in imap.messages(PROCESSED).values())
    finally:
        imap.stop()


def test_server_without_idle_is_polled(tmp_path: Path) -> None:
    imap = dovecot.start(capabilities="IMAP4rev1 MOVE UIDPLUS")
    try:
        with watching(make_settings(imap, tmp_path / "m.db", poll_interval=0.05)) as watcher:
            assert watcher.wait_for(lambda: watcher.waiting, WAIT)
            imap.append("INBOX", notification(1))
            assert settled(watcher, 1)
            assert not watcher.idling
        assert len(imap.messages(PROCESSED)) == 1
    finally:
        imap.stop()


@pytest.mark.parametrize(("security", "port"), [("ssl", "tls_port"), ("starttls", "port")])
def test_tls_verifies_the_server_against_the_ca_file(
    tmp_path: Path, certificate: Certificate, security: str, port: str
) -> None:
    imap = dovecot.start(tls=certificate)
    try:
        imap.append("INBOX", notification(1))
        trusted = make_settings(imap, tmp_path / "m.db", security=security, port=getattr(imap, port),
                                ca_file=imap.ca_file)
        untrusted = replace(trusted, imap=replace(trusted.imap, ca_file=None))
        with watching(untrusted) as watcher:
            assert watcher.wait_for(lambda: bool(watcher.errors), WAIT)
            assert watcher.stored == 0
        assert watcher.errors[0].startswith("certificate not trusted")
        with watching(trusted) as watcher:
            assert settled(watcher, 1)
        assert "TLS" in imap.log()
    finally:
        imap.stop()


def test_too_large_message_is_skipped_and_left(server: dovecot.Dovecot, tmp_path: Path) -> None:
    big = notification(1).replace(b"hello 1", b"x" * 5000)
    server.append("INBOX", big, notification(2))
    with watching(make_settings(server, tmp_path / "m.db", max_message_size=4000)) as watcher:
        assert settled(watcher, 1)
    assert [raw for raw, _ in server.messages("INBOX").values()] == [big]
    assert count(tmp_path / "m.db", "SELECT count(*) FROM deliveries") == 1


def test_every_fixture_email_arrives_intact(server: dovecot.Dovecot, tmp_path: Path) -> None:
    shapes = fixture_emails()
    emails = [raw for raw, _ in shapes]
    assert emails
    server.append("INBOX", *emails)
    db = tmp_path / "m.db"
    with watching(make_settings(server, db)) as watcher:
        assert settled(watcher, len(emails))
    stored = rows(db, "SELECT sha256, status FROM deliveries")
    assert sorted(sha for sha, _ in stored) == sorted(hashlib.sha256(raw).hexdigest() for raw in emails)
    quarantined = {sha for sha, status in stored if status == "quarantined"}
    assert {hashlib.sha256(raw).hexdigest() for raw, _ in server.messages(QUARANTINE).values()} == quarantined
    expected_quarantined = {hashlib.sha256(raw).hexdigest() for raw, bad in shapes if bad}
    assert quarantined == expected_quarantined
    keys = {event.dedupe_key for raw in emails for event in extract(raw, "email", {}).events}
    assert {key for (key,) in rows(db, "SELECT dedupe_key FROM events")} == keys
    assert len(server.messages(PROCESSED)) == len(emails) - len(quarantined)


def test_account_settings_are_checked() -> None:
    base = ImapSettings(host="imap.example.com", user="ops@example.com", password="pw")
    assert Account.from_settings(Settings(imap=base)).port == 993
    assert Account.from_settings(Settings(imap=replace(base, security="starttls"))).port == 143
    assert "pw" not in repr(Account.from_settings(Settings(imap=base)))
    for changes, message in [
        ({"password": None}, "imap.password"),
        ({"user": None}, "imap.user"),
        ({"folders": ("INBOX", "CallFire/Processed")}, "imap.folders"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Account.from_settings(Settings(imap=replace(base, **changes)))


def _mailhook(db: Path, imap: dovecot.Dovecot, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MAILHOOK_DB": str(db),
        "MAILHOOK_IMAP_HOST": "127.0.0.1",
        "MAILHOOK_IMAP_PORT": str(imap.port),
        "MAILHOOK_IMAP_SECURITY": "none",
        "MAILHOOK_IMAP_USER": imap.user,
        "MAILHOOK_IMAP_PASSWORD": imap.password,
        "MAILHOOK_IMAP_RECONNECT_DELAY": "0.05",
        "MAILHOOK_CONFIG": os.devnull,
    }
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, "-m", "mailhook", "imap"], env=env, stderr=err,
                                stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)


def fixture_emails() -> list[tuple[bytes, bool]]:
    """Return every fixture email as IMAP carries it (CRLF lines), each with whether it is quarantined."""
    return [
        (re.sub(rb"\r?\n", b"\r\n", path.read_bytes()),
         bool(json.loads(path.with_suffix(".expected.json").read_text())["quarantined"]))
        for path in sorted(FIXTURES.glob("*.eml"))
    ]


def test_mailhook_imap_killed_at_random_stores_every_message_once(server: dovecot.Dovecot, tmp_path: Path) -> None:
    # Emails of every shape, some there before the first start, the rest arriving between kills.
    shapes = fixture_emails()
    emails = [raw for raw, _ in shapes] + [notification(n) for n in range(40)]
    random.Random(3).shuffle(emails)
    first, rest = emails[: len(emails) // 2], emails[len(emails) // 2 :]
    batches = [first, *(rest[i::4] for i in range(4))]
    db, killed, log = tmp_path / "m.db", tmp_path / "killed.log", tmp_path / "mailhook.log"
    rng = random.Random(5)

    def stored() -> int:
        if not db.exists():
            return 0
        database = open_readonly(db)
        try:
            created = "deliveries" in database.table_names()
        finally:
            database.conn.close()
        return count(db, "SELECT count(*) FROM deliveries") if created else 0

    server.append("INBOX", *batches[0])
    appended = len(batches[0])
    for batch in batches[1:]:
        target = min(appended, stored() + rng.randint(1, 12))
        process = _mailhook(db, server, killed)
        try:
            server.append("INBOX", *batch)
            appended += len(batch)
            wait_until(lambda: stored() >= target, WAIT, f"{target} deliveries stored")  # noqa: B023 - used at once
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.02)  # land the kill anywhere between commit and move
        finally:
            process.kill()
            process.wait()
    process = _mailhook(db, server, log)
    try:
        wait_until(lambda: ": watching" in log.read_text(), WAIT, "the watcher")  # SIGTERM is handled from here
        wait_until(lambda: stored() >= len(emails), WAIT, "every email stored")
        wait_until(lambda: server.messages("INBOX") == {}, WAIT, "INBOX emptied")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
    assert count(db, "SELECT count(*) FROM deliveries") == len(emails)
    assert count(db, "SELECT count(DISTINCT message_id) FROM deliveries") == len(emails)
    keys = {event.dedupe_key for raw in emails for event in extract(raw, "email", {}).events}
    assert {key for (key,) in rows(db, "SELECT dedupe_key FROM events")} == keys
    assert count(db, "SELECT count(*) FROM events") == len(keys)
    quarantined = sorted(raw for raw, bad in shapes if bad)
    assert sorted(raw for raw, _ in server.messages(QUARANTINE).values()) == quarantined
    assert sorted(raw for raw, _ in server.messages(PROCESSED).values()) == sorted(
        raw for raw in emails if raw not in quarantined
    )
    assert server.password not in killed.read_text() + log.read_text()


def test_serve_runs_the_imap_door_beside_the_others(server: dovecot.Dovecot, tmp_path: Path) -> None:
    from mailhook.imap.door import ImapDoor
    from mailhook.server import Runtime, serve

    base = make_settings(server, tmp_path / "m.db")
    settings = replace(base, smtp=replace(base.smtp, listen=""), http=replace(base.http, listen=""))
    server.append("INBOX", notification(1))

    async def main() -> Watcher:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[Runtime] = loop.create_future()
        task = asyncio.create_task(serve(settings, {}, started=started))
        runtime = await started
        [door] = runtime.doors
        assert isinstance(door, ImapDoor)
        [watcher] = door.watchers
        assert await loop.run_in_executor(None, settled, watcher, 1)
        runtime.stopping.set()
        await task
        return watcher

    watcher = asyncio.run(main())
    assert not watcher.waiting
    assert count(tmp_path / "m.db", "SELECT count(*) FROM events") == 1
    assert len(server.messages(PROCESSED)) == 1


def test_mailhook_imap_without_a_host_is_a_configuration_error(tmp_path: Path) -> None:
    from mailhook.cli import main
    from mailhook.exitcodes import EX_CONFIG

    assert main(["imap"], env={"MAILHOOK_DB": str(tmp_path / "m.db"), "MAILHOOK_CONFIG": os.devnull,
                               **ALLOW_ROOT}) == EX_CONFIG
