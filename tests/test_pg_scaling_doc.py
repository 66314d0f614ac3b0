"""docs/scaling.md's read-only role for analysts, run as printed: it reads every table and view, and writes nothing."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest
from postgres_support import Cluster

from mailhook.store.pg.connection import open_database
from mailhook.store.target import PostgresTarget

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"


def test_the_analysts_read_only_role_reads_every_view_and_writes_nothing(postgres_cluster: Cluster,
                                                                          postgres_url: str) -> None:
    open_database(PostgresTarget(postgres_url, None)).close()
    (sql,) = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
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
