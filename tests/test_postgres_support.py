"""The throwaway PostgreSQL cluster the PostgreSQL tests stand on: it starts, takes a password, and restarts."""

from __future__ import annotations

import psycopg
import pytest
from postgres_support import Cluster


def test_a_new_database_answers_over_tcp_with_the_password(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT current_user, inet_server_addr()::text").fetchone() == ("mailhook", "127.0.0.1/32")


def test_a_wrong_password_is_refused(postgres_cluster: Cluster, postgres_url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_url.replace("mailhook-test-password", "wrong"))


def test_the_cluster_can_be_stopped_and_started_again(postgres_cluster: Cluster, postgres_url: str) -> None:
    postgres_cluster.stop()
    assert not postgres_cluster.running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_url, connect_timeout=2)
    postgres_cluster.start()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
