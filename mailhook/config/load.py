"""Settings from flags, MAILHOOK_* environment variables and a TOML file, read once.

Precedence is flag > environment > file > default. Every secret option X has a
companion X_file naming a file that holds the secret (one line; a trailing
newline is dropped). A relative X_file is looked up in $CREDENTIALS_DIRECTORY
when set, so systemd's `LoadCredential=` works without the secret ever
appearing in the environment or the config file; outside systemd a relative
name from the config file is read next to it.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from mailhook.config.addresses import parse_address, refuse_open_relay
from mailhook.config.settings import (
    CONFIG_NAME,
    DEFAULT_CONFIG,
    SECTIONS,
    TRIGGER_EVENTS,
    ParsingSettings,
    Settings,
)
from mailhook.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the command line and environment see it."""

    section: str
    name: str
    flag: str
    env: str
    help: str
    kind: type
    repeatable: bool
    secret: bool
    default: Any = None


def options() -> list[Option]:
    """List every option with its flag and environment variable name."""
    result = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            flag = f.metadata.get("flag") or f"{section}-{f.name.replace('_', '-')}"
            kind, repeatable = _base_type(hints[f.name])
            result.append(
                Option(
                    section=section,
                    name=f.name,
                    flag=flag,
                    env="MAILHOOK_" + flag.upper().replace("-", "_"),
                    help=f.metadata.get("help", ""),
                    kind=kind,
                    repeatable=repeatable,
                    secret=f.metadata.get("secret", False),
                    default=f.default_factory() if callable(f.default_factory) else f.default,
                )
            )
    return result


def _base_type(hint: Any) -> tuple[type, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return str, True
    if origin in (typing.Union, types.UnionType):
        return _base_type(args[0])
    return hint, False


def convert(opt: Option, value: Any, where: str) -> Any:
    """Convert a raw value from a flag, variable or file to the option's type, naming it on error."""
    try:
        if opt.repeatable:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)
        if opt.kind is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if opt.kind is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if opt.kind is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if opt.kind is Path:
            return Path(str(value))
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad value {value!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings together with where they were read from, for `mailhook check-config`."""

    settings: Settings
    path: Path | None
    sources: Mapping[str, str]  # "section.name" -> the flag, variable or file that set it


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | Path | None = None,
) -> Settings:
    """Build the settings from explicit flags, the environment and the TOML file.

    `flags` holds only the flags given on the command line, keyed by `Option.flag`.
    """
    return explain(flags, env, config_file).settings


def config_path(env: Mapping[str, str], config_file: str | Path | None = None) -> Path | None:
    """Return the config file to read: --config or $MAILHOOK_CONFIG ('' for none), or the first default present."""
    if config_file is not None:
        # `--config ''` reads no file, like MAILHOOK_CONFIG=; Path('') would be '.', the current directory.
        return Path(config_file) if str(config_file) else None
    if "MAILHOOK_CONFIG" in env:
        return Path(env["MAILHOOK_CONFIG"]) if env["MAILHOOK_CONFIG"] else None
    candidates = [DEFAULT_CONFIG]
    if env.get("CONFIGURATION_DIRECTORY"):
        # systemd's ConfigurationDirectory= says where the admin keeps it.
        candidates.insert(0, Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / CONFIG_NAME)
    return next((c for c in candidates if c.exists()), None)


def explain(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | Path | None = None,
) -> Effective:
    """Like `load`, but also say which flag, variable or file set each option."""
    path = config_path(env, config_file)
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    all_options = options()
    _check_keys(data, path)
    known_env = {opt.env for opt in all_options} | {"MAILHOOK_CONFIG"}
    for name in sorted(env):
        if name.startswith("MAILHOOK_") and name not in known_env:
            raise ConfigError(f"{name}: unknown environment variable{_did_you_mean(name, known_env)}")
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    sources: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for opt in all_options:
        key = f"{opt.section}.{opt.name}"
        file_value = data.get(opt.section, {}).get(opt.name, MISSING)
        if opt.flag in flags:
            where, rank = f"--{opt.flag}", 3
            value = convert(opt, flags[opt.flag], where)
        elif opt.env in env:
            where, rank = opt.env, 2
            value = convert(opt, env[opt.env], where)
        elif file_value is not MISSING:
            where, rank = f"{path}", 1
            value = convert(opt, file_value, f"{path}: {key}")
        else:
            continue
        values[opt.section][opt.name] = value
        sources[key] = where
        ranks[key] = rank
    for opt in all_options:
        if opt.secret:
            _read_secret_file(opt, values[opt.section], sources, ranks, env, path)
    sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
    settings = Settings(**sections, subscriptions=_subscriptions(data.get("subscriptions", {}), path))
    return Effective(validate(settings), path, sources)


def _check_keys(data: Mapping[str, Any], path: Path | None) -> None:
    known = {section: {f.name for f in fields(cls)} for section, cls in SECTIONS.items()}
    for section, table in data.items():
        if section == "subscriptions":
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join([*SECTIONS, 'subscriptions'])})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key in table:
            if key not in known[section]:
                raise ConfigError(f"{path}: unknown key {section}.{key}{_did_you_mean(key, known[section])}")


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_secret_file(
    opt: Option, values: dict[str, Any], sources: dict[str, str], ranks: dict[str, int], env: Mapping[str, str],
    config: Path | None,
) -> None:
    """Replace a secret by the contents of its X_file companion when that was given with higher precedence.

    A relative name is found in $CREDENTIALS_DIRECTORY under systemd; outside
    it, a name from the config file is found next to that file, so that
    `LoadCredential=http-token:/etc/mailhook/http-token` and an admin's shell
    both find /etc/mailhook/http-token for `token_file = "http-token"`.
    """
    companion = f"{opt.name}_file"
    key, file_key = f"{opt.section}.{opt.name}", f"{opt.section}.{companion}"
    if companion not in values:
        return
    if opt.name in values:
        if ranks[key] == ranks[file_key]:
            raise ConfigError(f"{key} and {file_key} are both set ({sources[key]}); set only one")
        if ranks[key] > ranks[file_key]:
            return
    path = Path(values[companion])
    if not path.is_absolute() and env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / path
    elif not path.is_absolute() and config is not None and ranks[file_key] == 1:
        path = config.parent / path
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{file_key} ({sources[file_key]}): cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file_key} ({sources[file_key]}): {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{file_key} ({sources[file_key]}): {path} is empty")
    values[opt.name] = secret
    sources[key] = f"{sources[file_key]} via {path}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _subscriptions(table: Any, path: Path | None) -> dict[int, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [subscriptions] must be a table of SubscriptionId = \"TRIGGER_EVENT\"")
    result = {}
    for key, value in table.items():
        try:
            sub_id = int(key)
        except ValueError:
            raise ConfigError(f"{path}: subscriptions.{key}: the key must be a numeric SubscriptionId") from None
        if not isinstance(value, str) or value.upper() not in TRIGGER_EVENTS:
            raise ConfigError(
                f"{path}: subscriptions.{key}: {value!r} is not a trigger event "
                f"({', '.join(sorted(TRIGGER_EVENTS))})"
            )
        result[sub_id] = value.upper()
    return result


def validate(settings: Settings) -> Settings:
    """Check values that are wrong whatever their type; return the settings unchanged."""
    checks = [
        (settings.smtp.max_message_size > 0, "smtp.max_message_size must be positive"),
        (settings.smtp.max_sessions > 0, "smtp.max_sessions must be positive"),
        (settings.smtp.max_per_ip > 0, "smtp.max_per_ip must be positive"),
        (settings.smtp.max_recipients > 0, "smtp.max_recipients must be positive"),
        (
            min(settings.smtp.idle_timeout, settings.smtp.data_timeout) > 0,
            "smtp.idle_timeout and smtp.data_timeout must be positive",
        ),
        (settings.http.max_connections > 0, "http.max_connections must be positive"),
        (settings.http.max_per_ip > 0, "http.max_per_ip must be positive"),
        (settings.http.max_header_size >= 1024, "http.max_header_size must be at least 1024"),
        (
            min(settings.http.header_timeout, settings.http.keepalive_timeout, settings.http.body_timeout,
                settings.http.send_timeout) > 0,
            "http.header_timeout, keepalive_timeout, body_timeout and send_timeout must be positive",
        ),
        (settings.smtp.max_session_time > 0, "smtp.max_session_time must be positive"),
        (settings.smtp.max_connection_rate >= 0, "smtp.max_connection_rate must not be negative"),
        (
            min(settings.smtp.max_junk_commands, settings.smtp.soft_error_limit, settings.smtp.hard_error_limit,
                settings.smtp.max_auth_failures) > 0,
            "smtp.max_junk_commands, smtp.soft_error_limit, smtp.hard_error_limit and smtp.max_auth_failures "
            "must be positive",
        ),
        (
            min(settings.smtp.error_sleep_time, settings.smtp.evict_after, settings.smtp.auth_failure_delay) >= 0
            and settings.smtp.auth_failure_delay_max >= settings.smtp.auth_failure_delay,
            "smtp.error_sleep_time, smtp.evict_after and smtp.auth_failure_delay must not be negative, and "
            "smtp.auth_failure_delay_max must be at least smtp.auth_failure_delay",
        ),
        (settings.http.evict_after >= 0, "http.evict_after must not be negative"),
        (settings.smtp.refusal_log_interval > 0, "smtp.refusal_log_interval must be positive"),
        (settings.smtp.max_recipient_overshoot >= 0, "smtp.max_recipient_overshoot must not be negative"),
        (settings.smtp.max_auth_checks > 0, "smtp.max_auth_checks must be positive"),
        (settings.storage.max_batch > 0, "storage.max_batch must be positive"),
        (settings.server.workers >= 0, "server.workers must not be negative"),
        *((getattr(settings.parsing, f.name) > 0, f"parsing.{f.name} must be positive")
          for f in fields(ParsingSettings)),
        (settings.storage.busy_timeout >= 0, "storage.busy_timeout must not be negative"),
        (settings.storage.checkpoint_interval >= 0, "storage.checkpoint_interval must not be negative"),
        (_known_region(settings.storage.phone_region), "storage.phone_region must be a region code such as US or GB"),
        (settings.imap.poll_interval > 0, "imap.poll_interval must be positive"),
        (0 < settings.imap.idle_timeout <= 29 * 60, "imap.idle_timeout must be between 0 and 1740 seconds"),
        (
            0 < settings.imap.reconnect_delay <= settings.imap.reconnect_max,
            "imap.reconnect_delay must be positive and at most imap.reconnect_max",
        ),
        (settings.imap.port is None or 0 < settings.imap.port < 65536, "imap.port must be between 1 and 65535"),
        (settings.imap.security in ("ssl", "starttls", "none"), "imap.security must be ssl, starttls or none"),
        (settings.imap.action in ("move", "seen", "leave"), "imap.action must be move, seen or leave"),
        (settings.log.format in ("text", "json"), "log.format must be text or json"),
        (settings.smtp.acknowledge in ("stored", "received"), "smtp.acknowledge must be stored or received"),
        (
            settings.log.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log.level must be DEBUG, INFO, WARNING or ERROR",
        ),
        (
            (settings.smtp.tls_cert is None) == (settings.smtp.tls_key is None),
            "smtp.tls_cert and smtp.tls_key go together",
        ),
        (
            not settings.smtp.require_starttls or settings.smtp.tls_cert is not None,
            "smtp.require_starttls needs smtp.tls_cert and smtp.tls_key",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for name in ("smtp", "http"):
        listen = getattr(settings, name).listen
        if listen:
            parse_address(listen, f"{name}.listen")
    if settings.smtp.listen:
        # Checked here too (the door checks what it really binds) so nothing is opened or
        # created before refusing, and `check-config` reports it.
        refuse_open_relay(settings.smtp, [settings.smtp.listen])
    # Port 0 means "any free port": two doors asking for it never collide.
    if settings.smtp.listen and settings.smtp.listen == settings.http.listen and parse_address(
        settings.smtp.listen, "smtp.listen"
    )[1] != 0:
        raise ConfigError(f"smtp.listen and http.listen are both {settings.smtp.listen!r}")
    return settings


def check_files(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Return problems with the files the settings name (missing, unreadable), each naming its key."""
    problems = []
    for key, path in (
        ("smtp.tls_cert", settings.smtp.tls_cert),
        ("smtp.tls_key", settings.smtp.tls_key),
        ("smtp.auth_file", settings.smtp.auth_file),
        ("imap.ca_file", settings.imap.ca_file),
    ):
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"{key}: cannot read {path}")
    return problems


def _known_region(region: str) -> bool:
    from mailhook.derived import valid_region

    return valid_region(region)
