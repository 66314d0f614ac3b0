"""docs/scaling.md's SQL run as printed: the analysts' read-only role reads every table and view and writes nothing,
and the operator's query finds a node's session frozen mid-exchange (and no live one) for pg_terminate_backend."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest
from postgres_support import Cluster, frozen_holders
from process_support import wait_until

from mailhook.store.pg.connection import open_database
from mailhook.store.target import PostgresTarget

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"


def _sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)


def test_the_analysts_read_only_role_reads_every_view_and_writes_nothing(postgres_cluster: Cluster,
                                                                          postgres_url: str) -> None:
    open_database(PostgresTarget(postgres_url, None)).close()
    (sql,) = [block for block in _sql_blocks() if "CREATE ROLE" in block]
    database = postgres_url.rsplit("/", 1)[1]
    suffix = uuid.uuid4().hex[:8]  # roles belong to the whole cluster: names of this test's own
    sql = (sql.replace("DATABASE mailhook", f'DATABASE "{database}"').replace("analysts", f"analysts_{suffix}")
           .replace("metabase", f"metabase_{suffix}").replace("PASSWORD '...'", "PASSWORD 'read-only-pw'"))
    with psycopg.connect(postgres_url, autocommit=True) as owner:
        owner.execute(sql)
        relations = [row[0] for row in owner.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()]
        owner.execute("INSERT INTO deliveries (channel, received_at, status, size, sha256, event_count,"
                      " duplicate_count) VALUES ('http', '2026-12-04T10:00:00.000Z', 'stored', 1, 'x', 0, 0)")
    reader = postgres_url.replace("mailhook:mailhook-test-password", f"metabase_{suffix}:read-only-pw")
    try:
        with psycopg.connect(reader, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (1,)
            assert {"deliveries", "events", "attempts", "texts", "calls"} <= set(relations)
            for relation in relations:  # every table and view
                conn.execute(f'SELECT * FROM "{relation}" LIMIT 1').fetchall()
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("DELETE FROM deliveries")
            conn.execute("SET default_transaction_read_only = off")  # a role may lift its own default...
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM deliveries")  # ...but holds no right to write
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as owner:
            owner.execute(f"DROP OWNED BY analysts_{suffix}, metabase_{suffix}")
            owner.execute(f"DROP ROLE metabase_{suffix}")
            owner.execute(f"DROP ROLE analysts_{suffix}")


def test_the_operators_query_finds_a_session_frozen_mid_exchange_and_ending_it_frees_its_locks(
    postgres_url: str
) -> None:
    (block,) = [block for block in _sql_blocks() if "ClientRead" in block]
    find, end = [statement.strip() for statement in block.split(";") if "SELECT" in statement]
    # The frozen holder is seconds old, not a minute: the query's other conditions are what is checked.
    find = find.replace("interval '1 minute'", "interval '1 second'")
    open_database(PostgresTarget(postgres_url, None)).close()
    with frozen_holders(postgres_url) as freeze, psycopg.connect(postgres_url, autocommit=True,
                                                                 application_name="mailhook") as live:
        holder = freeze()
        found = wait_until(lambda: [row[0] for row in live.execute(find).fetchall()], 30, "the frozen session")
        assert len(found) == 1 and live.info.backend_pid not in found  # a live, idle node's session is not listed
        assert holder.poll() is None
        assert live.execute(re.sub(r"\(\d+\)", f"({found[0]})", end.split("--")[0])).fetchone() == (True,)
        live.execute("SET lock_timeout = '30s'")
        live.execute("BEGIN")
        live.execute("LOCK TABLE events IN EXCLUSIVE MODE")  # the frozen holder's lock is gone
        live.execute("ROLLBACK")
