"""The IMAP watcher and its folder's lease: it polls only while it holds it, and stops at once when it loses it.

Real parts: Dovecot, a PostgreSQL advisory lease, and the SQLite writer for
the deliveries (two watchers on one file stand for two nodes on one database;
the PostgreSQL store itself is tested end to end in test_pg_imap_failover.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dovecot
import psycopg
import pytest
from process_support import wait_until
from test_imap_door import PROCESSED, WAIT, count, make_settings, notification

from mailhook.imap.door import Account, Watcher, start_watchers, stop_watchers
from mailhook.pipeline import Pipeline
from mailhook.store.pg.lease import AdvisoryLease
from mailhook.store.writer import Writer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("dovecot", "dovecot-imapd"),
    pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's throwaway instance must be started as root"),
]


class LeasedWriter(Writer):
    """The SQLite writer, with the folder's lease taken on PostgreSQL as the PostgreSQL store takes it."""

    def __init__(self, path: Path, url: str) -> None:
        super().__init__(path)
        self.url = url

    def lease(self, account: str, folder: str) -> AdvisoryLease:  # type: ignore[override]
        return AdvisoryLease(self.url, account, folder, ping=0.2, timeout=3.0)


@pytest.fixture
def server() -> Iterator[dovecot.Dovecot]:
    imap = dovecot.start()
    yield imap
    imap.stop()


@contextmanager
def node(server: dovecot.Dovecot, db: Path, url: str) -> Iterator[Watcher]:
    settings = make_settings(server, db)
    writer = LeasedWriter(db, url)
    watchers = start_watchers(Account.from_settings(settings), Pipeline(writer, settings.subscriptions), writer)
    try:
        yield watchers[0]
    finally:
        stop_watchers(watchers)
        writer.close()


def test_a_second_watcher_stands_by_and_takes_over_when_the_first_stops(
    server: dovecot.Dovecot, tmp_path: Path, postgres_url: str
) -> None:
    db = tmp_path / "m.db"
    server.append("INBOX", *(notification(n) for n in range(5)))
    with node(server, db, postgres_url) as first:
        assert first.wait_for(lambda: first.leading and first.stored == 5 and first.waiting, WAIT)
        with node(server, db, postgres_url) as second:
            assert second.wait_for(lambda: second.standby, WAIT)
            server.append("INBOX", notification(5))
            assert first.wait_for(lambda: first.stored == 6 and first.waiting, WAIT)
            assert second.sessions == 0 and second.stored == 0  # it never even logged in to IMAP
            first.stop()
            first.join()
            assert second.wait_for(lambda: second.leading and second.waiting, WAIT)
            server.append("INBOX", notification(6), notification(7))
            assert second.wait_for(lambda: second.stored == 2 and second.waiting, WAIT)
    # Each message stored once: the second resumed after the first's committed position.
    assert count(db, "SELECT count(*) FROM deliveries") == 8
    assert count(db, "SELECT count(DISTINCT message_id) FROM deliveries WHERE status = 'stored'") == 8
    assert len(server.messages(PROCESSED)) == 8


def test_a_watcher_that_loses_its_lease_stops_polling_and_the_other_takes_over(
    server: dovecot.Dovecot, tmp_path: Path, postgres_url: str
) -> None:
    db = tmp_path / "m.db"
    with node(server, db, postgres_url) as first:
        assert first.wait_for(lambda: first.leading and first.idling, WAIT)
        with node(server, db, postgres_url) as second:
            assert second.wait_for(lambda: second.standby, WAIT)
            # The lease's session ends under it (the database restarted it, an admin ended it, a network cut).
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'mailhook imap lease'"
                ).fetchall()
            assert ended == [(True,)]
            # It leaves IDLE and its IMAP session within seconds; then one of the two takes the folder again.
            assert first.wait_for(lambda: any("lost this folder's lease" in e for e in first.errors), WAIT)
            wait_until(lambda: first.leading or second.leading, WAIT, "a watcher leading again")
            leader = first if first.leading else second
            server.append("INBOX", notification(1))
            assert leader.wait_for(lambda: leader.stored == 1 and leader.waiting, WAIT)
            assert not (first.leading and second.leading)
    assert count(db, "SELECT count(*) FROM deliveries") == 1
