"""Settings from flags, environment and TOML: precedence, secrets from files, every error path."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from mailhook.cli import main
from mailhook.config import settings as config
from mailhook.config.load import explain, load
from mailhook.config.options import options
from mailhook.config.settings import MASK, SECTIONS
from mailhook.errors import ConfigError
from mailhook.exitcodes import EX_CONFIG

NO_FILE = {"MAILHOOK_CONFIG": ""}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_each_option_has_a_distinct_flag_variable_and_key() -> None:
    opts = options()
    assert len({o.flag for o in opts}) == len(opts)
    assert len({o.env for o in opts}) == len(opts)
    assert len({(o.section, o.name) for o in opts}) == len(opts)
    assert all(o.env == "MAILHOOK_" + o.flag.upper().replace("-", "_") for o in opts)


def test_every_secret_has_a_file_companion() -> None:
    for opt in options():
        if opt.secret:
            companions = {f.name for f in fields(SECTIONS[opt.section])}
            assert f"{opt.name}_file" in companions, opt


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    toml = write(tmp_path / "m.toml", '[smtp]\nlisten = "127.0.0.1:1001"\nhostname = "from-file"\n'
                 '[storage]\nmax_batch = 7\n')
    env = {"MAILHOOK_SMTP_LISTEN": "127.0.0.1:1002", "MAILHOOK_SMTP_HOSTNAME": "from-env"}
    flags = {"smtp-listen": "127.0.0.1:1003"}
    effective = explain(flags, env, toml)
    s = effective.settings
    assert s.smtp.listen == "127.0.0.1:1003"
    assert s.smtp.hostname == "from-env"
    assert s.storage.max_batch == 7
    assert s.storage.busy_timeout == config.StorageSettings().busy_timeout
    assert effective.sources["smtp.listen"] == "--smtp-listen"
    assert effective.sources["smtp.hostname"] == "MAILHOOK_SMTP_HOSTNAME"
    assert effective.sources["storage.max_batch"] == str(toml)
    assert "storage.busy_timeout" not in effective.sources


def test_config_file_comes_from_variable_then_configuration_directory(tmp_path: Path) -> None:
    write(tmp_path / "mailhook.toml", '[log]\nlevel = "DEBUG"\n')
    other = write(tmp_path / "other.toml", '[log]\nlevel = "ERROR"\n')
    assert load({}, {"CONFIGURATION_DIRECTORY": str(tmp_path)}).log.level == "DEBUG"
    assert load({}, {"CONFIGURATION_DIRECTORY": str(tmp_path), "MAILHOOK_CONFIG": str(other)}).log.level == "ERROR"
    assert load({}, {"CONFIGURATION_DIRECTORY": str(tmp_path), **NO_FILE}).log.level == "INFO"
    assert load({}, {"MAILHOOK_CONFIG": str(other)}, tmp_path / "mailhook.toml").log.level == "DEBUG"


def test_repeatable_options_read_lists_and_comma_separated_values(tmp_path: Path) -> None:
    toml = write(tmp_path / "m.toml", '[smtp]\naccept = ["a@example.com", "@example.org"]\n')
    assert load({}, NO_FILE, toml).smtp.accept == ("a@example.com", "@example.org")
    assert load({}, {**NO_FILE, "MAILHOOK_ACCEPT": "x@y.z, @w.v"}).smtp.accept == ("x@y.z", "@w.v")
    assert load({"accept": ["q@r.s"]}, NO_FILE).smtp.accept == ("q@r.s",)


def test_subscriptions_map_ids_to_trigger_events(tmp_path: Path) -> None:
    toml = write(tmp_path / "m.toml", '[subscriptions]\n1234 = "outbound_text_finished"\n'
                 '"5678" = "CAMPAIGN_STARTED"\n')
    assert load({}, NO_FILE, toml).subscriptions == {1234: "OUTBOUND_TEXT_FINISHED", 5678: "CAMPAIGN_STARTED"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[smpt]\nlisten = ":25"\n', "[smpt]"),
        ('[smtp]\nlisen = ":25"\n', "smtp.lisen (did you mean listen?)"),
        ('smtp = "x"\n', "[smtp]"),
        ('[smtp]\nmax_sessions = "many"\n', "smtp.max_sessions"),
        ("[smtp]\nmax_sessions = true\n", "smtp.max_sessions"),
        ('[smtp]\nrequire_starttls = "perhaps"\n', "smtp.require_starttls"),
        ("[smtp]\naccept = [1, 2]\n", "smtp.accept"),
        ("[smtp]\nhostname = 5\n", "smtp.hostname"),
        ("[storage]\nbusy_timeout = [1]\n", "storage.busy_timeout"),
        ('[subscriptions]\nabc = "CAMPAIGN_STARTED"\n', "subscriptions.abc"),
        ('[subscriptions]\n12 = "CALL_ANSWERED"\n', "subscriptions.12"),
        ("subscriptions = 3\n", "[subscriptions]"),
        ("[smtp\n", "not valid TOML"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    toml = write(tmp_path / "m.toml", text)
    with pytest.raises(ConfigError, match=r".*".join(map(_escape, [str(toml), named]))):
        load({}, NO_FILE, toml)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config file"):
        load({}, {}, tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAILHOOK_MAX_MESSAGE_SIZE": "10MB"}, "MAILHOOK_MAX_MESSAGE_SIZE"),
        ({"MAILHOOK_SMTP_REQUIRE_STARTTLS": "maybe"}, "MAILHOOK_SMTP_REQUIRE_STARTTLS"),
        ({"MAILHOOK_STORAGE_BUSY_TIMEOUT": "soon"}, "MAILHOOK_STORAGE_BUSY_TIMEOUT"),
        ({"MAILHOOK_SMTP_LISTNE": "127.0.0.1:25"}, "MAILHOOK_SMTP_LISTNE: unknown environment variable "
         "(did you mean MAILHOOK_SMTP_LISTEN?)"),
    ],
)
def test_environment_errors_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=_escape(named)):
        load({}, {**NO_FILE, **env})


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--smtp-max-sessions"):
        load({"smtp-max-sessions": "lots"}, NO_FILE)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAILHOOK_MAX_MESSAGE_SIZE": "0"}, "smtp.max_message_size"),
        ({"MAILHOOK_SMTP_MAX_SESSIONS": "0"}, "smtp.max_sessions"),
        ({"MAILHOOK_SMTP_MAX_PER_IP": "-1"}, "smtp.max_per_ip"),
        ({"MAILHOOK_STORAGE_MAX_BATCH": "0"}, "storage.max_batch"),
        ({"MAILHOOK_STORAGE_BUSY_TIMEOUT": "-1"}, "storage.busy_timeout"),
        ({"MAILHOOK_STORAGE_CHECKPOINT_INTERVAL": "-5"}, "storage.checkpoint_interval"),
        ({"MAILHOOK_IMAP_SECURITY": "tls"}, "imap.security"),
        ({"MAILHOOK_IMAP_ACTION": "delete"}, "imap.action"),
        ({"MAILHOOK_IMAP_PORT": "70000"}, "imap.port"),
        ({"MAILHOOK_IMAP_POLL_INTERVAL": "0"}, "imap.poll_interval"),
        ({"MAILHOOK_LOG_FORMAT": "xml"}, "log.format"),
        ({"MAILHOOK_PARSING_MAX_PARTS": "0"}, "parsing.max_parts"),
        ({"MAILHOOK_PARSING_EXTRACTION_BUDGET": "-1"}, "parsing.extraction_budget"),
        ({"MAILHOOK_LOG_LEVEL": "LOUD"}, "log.level"),
        ({"MAILHOOK_SMTP_TLS_CERT": "/c.pem"}, "smtp.tls_cert"),
        ({"MAILHOOK_SMTP_REQUIRE_STARTTLS": "yes"}, "smtp.require_starttls"),
        ({"MAILHOOK_SMTP_LISTEN": "localhost"}, "smtp.listen"),
        ({"MAILHOOK_HTTP_LISTEN": "127.0.0.1:99999"}, "http.listen"),
        ({"MAILHOOK_SMTP_LISTEN": "127.0.0.1:9", "MAILHOOK_HTTP_LISTEN": "127.0.0.1:9"}, "http.listen"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=_escape(named)):
        load({}, {**NO_FILE, **env})


def test_secret_is_read_from_its_file_without_the_trailing_newline(tmp_path: Path) -> None:
    write(tmp_path / "token", "s3cret-token\n")
    settings = load({}, {**NO_FILE, "MAILHOOK_HTTP_TOKEN_FILE": str(tmp_path / "token")})
    assert settings.http.token == "s3cret-token"


def test_relative_secret_file_is_found_in_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "webhook-secret", "hmac-key")
    write(creds / "imap-password", "pw with spaces \n")
    toml = write(tmp_path / "m.toml", '[http]\nwebhook_secret_file = "webhook-secret"\n'
                 '[imap]\npassword_file = "imap-password"\n')
    effective = explain({}, {"CREDENTIALS_DIRECTORY": str(creds)}, toml)
    assert effective.settings.http.webhook_secret == "hmac-key"
    assert effective.settings.imap.password == "pw with spaces "
    assert str(creds / "webhook-secret") in effective.sources["http.webhook_secret"]


def test_relative_secret_file_outside_systemd_is_found_next_to_the_config_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    write(etc / "http-token", "token-next-to-config\n")
    toml = write(etc / "mailhook.toml", '[http]\ntoken_file = "http-token"\n')
    assert load({}, {}, toml).http.token == "token-next-to-config"
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "http-token", "token-from-systemd")
    assert load({}, {"CREDENTIALS_DIRECTORY": str(creds)}, toml).http.token == "token-from-systemd"


def test_secret_file_from_a_stronger_layer_wins_over_the_secret(tmp_path: Path) -> None:
    write(tmp_path / "token", "from-file")
    toml = write(tmp_path / "m.toml", '[http]\ntoken = "in-config"\n')
    env = {"MAILHOOK_HTTP_TOKEN_FILE": str(tmp_path / "token")}
    assert load({}, env, toml).http.token == "from-file"
    assert load({"http-token": "from-flag"}, env, toml).http.token == "from-flag"


def test_secret_and_its_file_in_the_same_place_is_an_error(tmp_path: Path) -> None:
    toml = write(tmp_path / "m.toml", '[http]\ntoken = "a"\ntoken_file = "/x"\n')
    with pytest.raises(ConfigError, match=r"http\.token and http\.token_file are both set"):
        load({}, {}, toml)


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot read"), ("\n", "is empty"), (b"\xff\xfe", "UTF-8")])
def test_unusable_secret_file_is_an_error_naming_the_key(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    secret = tmp_path / "secret"
    if isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        write(secret, content)
    with pytest.raises(ConfigError, match=rf"imap\.password_file .*{problem}"):
        load({}, {**NO_FILE, "MAILHOOK_IMAP_PASSWORD_FILE": str(secret)})


def test_check_config_prints_loadable_toml_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "secret", "webhook-hmac-key")
    toml = write(tmp_path / "m.toml", f'[http]\nwebhook_secret_file = "{tmp_path / "secret"}"\n'
                 '[subscriptions]\n42 = "INBOUND_CALL_FINISHED"\n')
    env = {"MAILHOOK_HTTP_TOKEN": "plain-token", "MAILHOOK_DB": str(tmp_path / "m.db")}
    code = main(["check-config", "--config", str(toml), "--smtp-hostname", "mx.example.com"], env)
    out = capsys.readouterr().out
    assert code == 0
    assert "plain-token" not in out
    assert "webhook-hmac-key" not in out
    shown = tomllib.loads(out)
    assert shown["http"]["token"] == MASK
    assert shown["http"]["webhook_secret"] == MASK
    assert shown["smtp"]["hostname"] == "mx.example.com"
    assert shown["storage"]["db"] == str(tmp_path / "m.db")
    assert shown["subscriptions"] == {"42": "INBOUND_CALL_FINISHED"}
    assert "# MAILHOOK_HTTP_TOKEN" in out
    assert "# --smtp-hostname" in out


def test_check_config_exits_78_naming_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = write(tmp_path / "m.toml", "[smtp]\nmax_per_ip = 0\n")
    assert main(["check-config", "--config", str(toml)], {}) == EX_CONFIG
    assert "smtp.max_per_ip" in capsys.readouterr().err


def test_check_config_exits_78_when_a_named_file_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**NO_FILE, "MAILHOOK_SMTP_TLS_CERT": str(tmp_path / "no.pem"),
           "MAILHOOK_SMTP_TLS_KEY": str(tmp_path / "no.key"), "MAILHOOK_DB": str(tmp_path / "x" / "m.db")}
    assert main(["check-config"], env) == EX_CONFIG
    err = capsys.readouterr().err
    assert "smtp.tls_cert" in err
    assert "smtp.tls_key" in err
    assert "storage.db" in err


def test_every_command_exits_78_on_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["status"], ["prune", "--older-than", "1d"], ["check-config"]):
        assert main(command, {**NO_FILE, "MAILHOOK_LOG_FORMAT": "yaml"}) == EX_CONFIG
        assert "log.format" in capsys.readouterr().err


def test_secrets_never_appear_in_the_settings_repr() -> None:
    settings = load({"http-token": "tok-123", "webhook-secret": "sec-456"}, {"MAILHOOK_IMAP_PASSWORD": "pw-789"}, None)
    assert settings.http.token == "tok-123"
    shown = repr(settings)
    assert "tok-123" not in shown and "sec-456" not in shown and "pw-789" not in shown


def test_public_smtp_without_an_accept_list_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with pytest.raises(ConfigError, match=r"smtp\.accept is empty"):
        load({"smtp-listen": "0.0.0.0:2525", "db": str(db)}, {}, None)
    assert load({"smtp-listen": "0.0.0.0:2525", "accept": ["@example.com"]}, {}, None).smtp.accept == ("@example.com",)
    assert main(["serve", "--smtp-listen", "0.0.0.0:0", "--db", str(db)], env={}) == 78
    assert not db.exists()


def test_parsing_limits_are_read_from_flags_environment_and_file(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text("[parsing]\nmax_lines = 7\nheader_size_limit = 9\n")
    settings = load({"parsing-max-parts": 5}, {**NO_FILE, "MAILHOOK_PARSING_MAX_CONTAINERS": "3"}, toml)
    limits = settings.parsing.mail_limits()
    assert (limits.max_parts, limits.max_containers, limits.max_lines, limits.header_size_limit) == (5, 3, 7, 9)
    assert limits.max_header_fields == 10_000 and settings.parsing.extraction_budget == 10 * 1024 * 1024


def test_an_empty_config_flag_reads_no_file_like_an_empty_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = write(tmp_path / "other.toml", '[log]\nlevel = "ERROR"\n')
    monkeypatch.chdir(tmp_path)  # '' must not be read as '.', the current directory
    assert main(["check-config", "--config", ""], {"MAILHOOK_CONFIG": str(other)}) == 0
    captured = capsys.readouterr()
    assert "# config file: (none)" in captured.out and 'level = "INFO"' in captured.out, captured
    assert load({}, {"MAILHOOK_CONFIG": str(other)}, "").log.level == "INFO"
