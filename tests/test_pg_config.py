"""Choosing PostgreSQL: `--db`/`MAILHOOK_DB`/`storage.db` take a URL, the password comes from a file or libpq's own,
and it never shows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from postgres_support import PASSWORD, USER

from mailhook.cli import main
from mailhook.config.load import load
from mailhook.config.settings import MASK, Settings
from mailhook.errors import ConfigError, RetryLater
from mailhook.store.pg.connection import connect
from mailhook.store.target import PostgresTarget, mask_url, target

NO_FILE = {"MAILHOOK_CONFIG": ""}
URL = "postgresql://mailhook:pa55-w0rd@db.example.net:5433/mail?sslmode=require"


@pytest.mark.parametrize("url", [URL, "postgres://db.example.net/mail", "POSTGRESQL://h/d"])
def test_a_url_in_the_flag_or_the_environment_chooses_postgresql_as_written(url: str) -> None:
    for settings in (load({"db": url}, NO_FILE), load({}, {**NO_FILE, "MAILHOOK_DB": url})):
        found = settings.database({})
        assert isinstance(found, PostgresTarget)
        assert found.url == url


def test_a_url_in_the_config_file_chooses_postgresql(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text(f'[storage]\ndb = "{URL}"\n')
    assert load({}, {}, toml).database({}) == PostgresTarget(URL)


def test_a_file_name_still_chooses_sqlite_and_the_default_is_unchanged(tmp_path: Path) -> None:
    assert load({"db": str(tmp_path / "m.db")}, NO_FILE).database({}) == tmp_path / "m.db"
    assert load({}, NO_FILE).database({}) == Path("mailhook.db")
    assert load({}, NO_FILE).database({"STATE_DIRECTORY": "/var/lib/mailhook"}) == Path("/var/lib/mailhook/mailhook.db")


def test_the_password_file_gives_the_password_apart_from_the_url(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db-password").write_text("from-credentials\n")
    env = {**NO_FILE, "MAILHOOK_DB": "postgresql://mailhook@db/mail", "MAILHOOK_STORAGE_PASSWORD_FILE": "db-password",
           "CREDENTIALS_DIRECTORY": str(creds)}
    found = load({}, env).database(env)
    assert isinstance(found, PostgresTarget)
    assert found.password == "from-credentials"


def test_the_password_never_shows_in_str_repr_or_the_settings() -> None:
    found = target(URL, "other-secret")
    settings = load({"db": URL}, {**NO_FILE, "MAILHOOK_STORAGE_PASSWORD": "other-secret"})
    for text in (str(found), repr(found), repr(settings), str(settings.database({}))):
        assert "pa55-w0rd" not in text and "other-secret" not in text, text
    assert str(found) == f"postgresql://mailhook:{MASK}@db.example.net:5433/mail?sslmode=require"
    assert "pa55" not in mask_url("postgresql://db/mail?user=u&password=pa55")
    assert found.scrub("failed for pa55-w0rd and other-secret") == f"failed for {MASK} and {MASK}"


def test_check_config_masks_the_password_in_the_url_and_the_password_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_text("file-secret\n")
    env = {**NO_FILE, "MAILHOOK_DB": URL, "MAILHOOK_STORAGE_PASSWORD_FILE": str(tmp_path / "pw")}
    assert main(["check-config"], env) == 0
    captured = capsys.readouterr()
    for secret in ("pa55-w0rd", "file-secret"):
        assert secret not in captured.out + captured.err
    shown = tomllib.loads(captured.out)
    assert shown["storage"]["db"] == mask_url(URL)
    assert shown["storage"]["password"] == MASK
    assert f"# database: {mask_url(URL)}" in captured.out


def test_a_command_that_works_on_sqlite_only_refuses_a_url_without_showing_its_password() -> None:
    settings = load({"db": URL}, NO_FILE)
    with pytest.raises(ConfigError) as refused:
        settings.sqlite_database({}, "mailhook something")
    assert "pa55-w0rd" not in str(refused.value)
    assert Settings().sqlite_database({}, "x") == Path("mailhook.db")


def _without_password(url: str) -> str:
    return url.replace(f"{USER}:{PASSWORD}@", f"{USER}@")


def test_connects_with_the_password_given_apart_from_the_url(postgres_url: str) -> None:
    conn = connect(PostgresTarget(_without_password(postgres_url), PASSWORD))
    assert conn.execute("SELECT current_setting('application_name')").fetchone() == ("mailhook",)
    conn.close()


def test_connects_with_the_password_from_libpqs_pgpassfile(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:{USER}:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    connect(PostgresTarget(_without_password(postgres_url))).close()
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(RetryLater, match="database unreachable"):
        connect(PostgresTarget(_without_password(postgres_url)))


def test_a_refused_login_says_so_without_the_password(postgres_url: str) -> None:
    wrong = postgres_url.replace(PASSWORD, "wrong-secret-123")
    with pytest.raises(RetryLater) as refused:
        connect(PostgresTarget(wrong))
    assert "password authentication failed" in str(refused.value)
    assert "wrong-secret-123" not in str(refused.value)
    with pytest.raises(RetryLater) as refused:
        connect(PostgresTarget(_without_password(wrong), "wrong-secret-123"))
    assert "wrong-secret-123" not in str(refused.value)


def test_acknowledging_on_receipt_is_accepted_on_postgresql_too() -> None:
    # Each node's backlog claims the pending deliveries it extracts (tests/test_pg_claims.py, test_pg_nodes.py).
    assert load({"db": URL}, {**NO_FILE, "MAILHOOK_SMTP_ACKNOWLEDGE": "received"}).smtp.acknowledge == "received"
    assert load({"db": "m.db"}, {**NO_FILE, "MAILHOOK_SMTP_ACKNOWLEDGE": "received"}).smtp.acknowledge == "received"


def test_connections_notice_a_vanished_server_within_half_a_minute_unless_the_url_says_otherwise() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from mailhook.store.pg.connection import connection_string

    mine = conninfo_to_dict(connection_string(PostgresTarget("postgresql://u@db/mail")))
    assert (mine["keepalives_idle"], mine["tcp_user_timeout"], mine["connect_timeout"]) == ("10", "30000", "10")
    assert mine["application_name"] == "mailhook"
    theirs = conninfo_to_dict(connection_string(
        PostgresTarget("postgresql://u@db/mail?tcp_user_timeout=5000&application_name=x&connect_timeout=3")))
    assert (theirs["tcp_user_timeout"], theirs["application_name"], theirs["connect_timeout"]) == ("5000", "x", "3")
